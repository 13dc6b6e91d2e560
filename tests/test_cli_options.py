"""The commands' options are made from the settings dataclasses and the registries, so they cannot drift.

A LESS option's default is LessSettings' (the warmup LoRA's rank and alpha: its LoraSettings'),
its choices are the registry the field names, and its help is the field's; `influence train`'s
options are TrainSettings' likewise, and `influence compare`'s own CompareSettings'. The commands
keep the options they had.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import click
import pytest
from click.testing import CliRunner

from influence.cli import main
from influence.cli.compare import RECIPES
from influence.cli.less_options import NAMES, pop_settings
from influence.cli.settings_options import field_metadata, settings_option
from influence.compare.settings import CompareSettings
from influence.constants import ADAM_FORMS, GRAD_TYPES, PROJECTOR_KINDS
from influence.features.projection import PROJECTORS
from influence.index import INDEX_KINDS
from influence.less.settings import SCORING_METHODS, LessSettings
from influence.models import DEVICES
from influence.selectors.dsir import SAMPLING as DSIR_SAMPLING, DsirSelector
from influence.training.settings import LOSS_REDUCTIONS, METHODS, PRECISIONS, REPORT_TO, TrainSettings
from tests.test_safe_outputs import cli, one_error_line

# The options each command listed before its options were made from the settings.
BEFORE = {
    "select": ["--adam-form", "--algorithm", "--algorithm-over", "--batch-size", "--device", "--dims", "--diversity", "--dry-run", "--dsir-min-length",
               "--dsir-sampling", "--embed-model", "--format", "--index", "--index-root", "--k", "--keep-contaminated", "--length-unit",
               "--lora-alpha", "--lora-r", "--max-length", "--model", "--name", "--out", "--overwrite", "--pool",
               "--pooling", "--prefilter", "--projector", "--scoring", "--seed", "--selector", "--shard-rows",
               "--store-features", "--target", "--uot-eps", "--uot-pool-marginal", "--uot-target-marginal",
               "--warmup-epochs", "--warmup-fraction", "--warmup-loss-reduction", "--warmup-lr"],
    "featurize": ["--adam-form", "--batch-size", "--device", "--dims", "--dry-run", "--index", "--index-root",
                  "--keep-contaminated", "--lora-alpha", "--lora-r", "--max-length", "--model", "--name", "--pool",
                  "--projector", "--scoring", "--seed", "--shard-rows", "--store-features", "--target",
                  "--warmup-epochs", "--warmup-fraction", "--warmup-loss-reduction", "--warmup-lr"],
    "score": ["--adam-form", "--batch-size", "--device", "--dims", "--format", "--index", "--index-root", "--k",
              "--keep-contaminated", "--lora-alpha", "--lora-r", "--max-length", "--model", "--name", "--out",
              "--overwrite", "--pool", "--projector", "--scoring", "--seed", "--shard-rows", "--store-features",
              "--target", "--warmup-epochs", "--warmup-fraction", "--warmup-loss-reduction", "--warmup-lr"],
    "warmup": ["--adam-form", "--batch-size", "--device", "--dims", "--index", "--index-root", "--lora-alpha",
               "--lora-r", "--max-length", "--model", "--name", "--pool", "--projector", "--scoring", "--seed",
               "--shard-rows", "--store-features", "--warmup-epochs", "--warmup-fraction", "--warmup-loss-reduction",
               "--warmup-lr"],
    "compare": ["--adam-form", "--base", "--batch-size", "--bootstrap-resamples", "--bootstrap-seed", "--device",
                "--dims", "--dry-run", "--dsir-min-length", "--dsir-sampling",
                "--epochs", "--index", "--index-root", "--k", "--keep-contaminated", "--limit", "--lora-alpha",
                "--lora-r", "--lr", "--max-length", "--metrics", "--model", "--name", "--no-base", "--only-seeds", "--out",
                "--pool",
                "--projector", "--recipe", "--redraw", "--reports-only", "--scoring", "--seeds", "--selection-seeds",
                "--selectors", "--shard-rows", "--store-features", "--target", "--train-batch-size",
                "--train-max-length", "--train-model", "--versus",
                "--warmup-epochs", "--warmup-fraction", "--warmup-loss-reduction", "--warmup-lr"],
    "train": ["--batch-size", "--data", "--epochs", "--full", "--gradient-checkpointing", "--lora", "--loss-reduction",
              "--lr", "--max-length", "--micro-batch-size", "--model", "--no-checkpoints", "--out", "--overwrite",
              "--precision", "--report-to", "--save-steps", "--seed"],
}
# The registry each choice of the settings reads, by field.
LESS_REGISTRIES = {"projector": PROJECTOR_KINDS, "warmup_loss_reduction": LOSS_REDUCTIONS, "adam_form": ADAM_FORMS,
                   "scoring": SCORING_METHODS, "index": INDEX_KINDS, "device": DEVICES, "pool_grad": GRAD_TYPES,
                   "target_grad": GRAD_TYPES}
TRAIN_REGISTRIES = {"loss_reduction": LOSS_REDUCTIONS, "method": METHODS, "precision": PRECISIONS,
                    "report_to": REPORT_TO}
LORA_FIELDS = {"lora_r": "r", "lora_alpha": "alpha"}  # CLI keyword -> LoraSettings field
# `influence compare`'s own options, each a CompareSettings field of the same name
COMPARE_FIELDS = ("k", "selectors", "seeds", "selection_seeds", "redraw", "metrics", "base", "limit", "dsir_sampling",
                  "dsir_min_length", "keep_contaminated", "train_model", "bootstrap_resamples", "bootstrap_seed", "versus")


def params(command: str) -> dict[str, click.Parameter]:
    return {param.name: param for param in main.commands[command].params}


def help_text(command: str) -> str:
    result = CliRunner().invoke(main, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def test_every_less_option_defaults_to_less_settings_and_offers_its_registry():
    defaults = LessSettings()
    for command in ("select", "warmup", "featurize", "score", "compare"):
        options = params(command)
        for name in NAMES:
            param = options[name]
            if name in LORA_FIELDS:
                assert param.default == getattr(defaults.lora, LORA_FIELDS[name]), (command, name)
                continue
            if name == "scoring":  # each command fills in its own (score reads stored features: faiss)
                assert param.default is None
            else:
                assert param.default == getattr(defaults, name), (command, name)
            if name in LESS_REGISTRIES:
                assert list(param.type.choices) == list(LESS_REGISTRIES[name]), (command, name)
            else:
                assert not isinstance(param.type, click.Choice), (command, name)
            assert param.help.startswith(field_metadata(LessSettings, name)["help"]), (command, name)


def test_the_settings_name_the_registries_themselves():
    """Adding a kind to a registry adds it to the settings' choices and so to the CLI's."""
    for name, registry in LESS_REGISTRIES.items():
        assert field_metadata(LessSettings, name)["choices"] is registry, name
    for name, registry in TRAIN_REGISTRIES.items():
        assert field_metadata(TrainSettings, name)["choices"] is registry, name
    assert list(PROJECTORS) == list(PROJECTOR_KINDS)  # the projectors torch builds are the kinds the CLI lists


def test_a_choice_added_to_a_registry_shows_in_help():
    registry = {"first": "the first kind"}

    @dataclass
    class Settings:
        kind: str = field(default="first", metadata={"help": "Which kind.", "choices": registry})

    def options_help() -> tuple[list[str], str]:
        command = click.command()(settings_option(Settings(), "kind")(lambda kind: None))
        result = CliRunner().invoke(command, ["--help"], terminal_width=200)
        return list(command.params[0].type.choices), result.output

    assert options_help()[0] == ["first"]
    registry["second"] = "one more"
    choices, text = options_help()
    assert choices == ["first", "second"] and "[first|second]" in text and "[default: first]" in text
    assert "Which kind." in text


def test_help_lists_every_kind_of_the_registries():
    text = help_text("select")
    for registry in (PROJECTOR_KINDS, SCORING_METHODS, INDEX_KINDS, ADAM_FORMS, LOSS_REDUCTIONS, DEVICES):
        assert all(name in text for name in registry)
    assert all(name in help_text("train") for name in LOSS_REDUCTIONS)


def test_train_options_default_to_train_settings():
    defaults = TrainSettings()
    options = params("train")
    for cli_name, name in {"model": "model", "epochs": "epochs", "lr": "learning_rate", "batch_size": "batch_size",
                           "micro_batch_size": "micro_batch_size", "loss_reduction": "loss_reduction",
                           "max_length": "max_length", "seed": "seed", "precision": "precision",
                           "gradient_checkpointing": "gradient_checkpointing", "save_steps": "save_steps",
                           "report_to": "report_to"}.items():
        assert options[cli_name].default == getattr(defaults, name), cli_name
        assert options[cli_name].help.startswith(field_metadata(TrainSettings, name)["help"]), cli_name
    assert list(options["loss_reduction"].type.choices) == list(LOSS_REDUCTIONS)
    assert options["lora"].default is (defaults.method == "lora")


def test_compare_options_default_to_compare_settings():
    """A list field's default is its items as the comma-separated text the option takes."""
    defaults = CompareSettings(pools=["alpaca"], targets=["mmlu"])
    options = params("compare")
    for name in COMPARE_FIELDS:
        value = getattr(defaults, name)
        assert options[name].default == (",".join(value) if isinstance(value, list) else value), name
        assert options[name].help.startswith(field_metadata(CompareSettings, name)["help"]), name
    assert options["base"].secondary_opts == ["--no-base"] and options["keep_contaminated"].is_flag
    # DSIR's sampling is declared by the selector: both commands offer its registry and default
    assert field_metadata(CompareSettings, "dsir_sampling")["choices"] is DSIR_SAMPLING
    for command in ("compare", "select"):
        assert list(params(command)["dsir_sampling"].type.choices) == list(DSIR_SAMPLING), command
        assert params(command)["dsir_sampling"].default == DsirSelector.sampling, command
        assert params(command)["dsir_min_length"].default == DsirSelector.min_length, command


def test_the_recipe_help_reads_the_recipes():
    text = params("compare")["recipe"].help
    for name, recipe in RECIPES.items():
        settings = recipe()
        assert f"{name} (batch {settings.batch_size}, lr " in text and f"{settings.epochs} epochs" in text
        assert recipe.provenance in text  # how the recipe's learning rate was picked
    assert "lr 2e-5" in text  # the LESS recipe, as the paper writes it


def test_options_left_out_give_the_settings_defaults():
    command = main.commands["select"]
    context = command.make_context("select", ["--pool", "alpaca"])
    assert pop_settings(dict(context.params)).to_dict() == LessSettings().to_dict()
    context = command.make_context("select", ["--pool", "alpaca", "--dims", "64,32", "--lora-r", "8"])
    settings = pop_settings(dict(context.params), scoring="faiss")
    assert settings.dims == (64, 32) and settings.lora.r == 8 and settings.scoring == "faiss"


@pytest.mark.parametrize("command", sorted(BEFORE))
def test_commands_keep_the_options_they_had(command):
    flags = {flag for param in main.commands[command].params for flag in param.opts + param.secondary_opts}
    assert flags == set(BEFORE[command])
    text = help_text(command)
    assert all(flag in text for flag in BEFORE[command])


@pytest.mark.parametrize("args, option, registry", [
    (["select", "--pool", "P", "--index", "bogus"], "--index", INDEX_KINDS),
    (["featurize", "--pool", "P", "--projector", "bogus"], "--projector", PROJECTOR_KINDS),
    (["select", "--pool", "P", "--scoring", "bogus"], "--scoring", SCORING_METHODS),
    (["train", "--data", "P", "--loss-reduction", "bogus"], "--loss-reduction", LOSS_REDUCTIONS),
])
def test_a_bad_choice_is_one_line_naming_the_registry(tmp_path, args, option, registry):
    result = cli(*[str(tmp_path / "pool.jsonl") if a == "P" else a for a in args])
    one_error_line(result, f"Invalid value for '{option}'", "'bogus' is not one of",
                   *(repr(name) for name in registry))
    assert list(tmp_path.iterdir()) == []


def test_the_command_starts_without_torch():
    """Making options from the settings must not load the heavy stack at start-up."""
    code = "import sys, influence.cli; print(sorted({'torch', 'transformers', 'faiss'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
