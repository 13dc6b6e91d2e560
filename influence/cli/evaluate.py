"""`influence evaluate`: target loss and the task metric on a target's held-out items."""

from __future__ import annotations

from pathlib import Path

import click

from influence.cli.settings_options import settings_option
from influence.constants import safe_name
from influence.errors import ConfigError
from influence.evaluation import evaluate, format_table, write_results
from influence.evaluation.evaluate import EvalSettings
from influence.evaluation.metrics import METRIC_OPTIONS
from influence.io import check_output_file
from influence.training import is_training_output

_DEFAULTS = EvalSettings()


def default_results_path(model: str | None, target: str, limit: int | None, cot: bool,
                         protocol: str = "reference") -> Path:
    """<training dir>/eval-<target>[-chat][-cot][-limitN].json beside a trained model, else
    runs/eval/<model>-<...>.json."""
    def safe(text: str) -> str:
        return safe_name(Path(text).name or text, keep_suffix=True) or "model"

    suffix = (safe(target) + ("-chat" if protocol == "chat" else "") + ("-cot" if cot else "")
              + (f"-limit{limit}" if limit else "") + ".json")
    if model is not None and is_training_output(model):
        return Path(model) / f"eval-{suffix}"
    return Path("runs") / "eval" / f"{safe(model or 'default')}-{suffix}"


@click.command("evaluate")
@click.option("--model", default=None, metavar="DIR_OR_ID",
              help="A directory written by `influence train`, a model id, directory or .gguf [default: bundled model].")
@click.option("--target", required=True, metavar="NAME[:validation]|FILE",
              help="A named target (see `influence targets`; its held-out split, or with :validation the "
                   "validation split of user_oriented and flan_cot:<source>) or a file: question/answers records "
                   "for QA, instruction/output records for target loss and exact match.")
@click.option("--limit", type=int, default=None, help="Evaluate a seeded random subset of this many items.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the --limit subset.")
@settings_option(_DEFAULTS, "protocol")
@click.option("--metrics", default=None, metavar="M[,M...]",
              help=f"What to measure: {', '.join(METRIC_OPTIONS)} (the target loss is always measured; em and f1 "
                   f"generate answers: slow) [default: a named target's own metric; a file: loss only].")
@click.option("--cot", is_flag=True,
              help="--protocol chat: BBH with its 3-shot chain-of-thought prompt (the reference protocol always is).")
@click.option("--batch-size", type=int, default=_DEFAULTS.batch_size, show_default=True,
              help="Sequences per forward pass or generation batch.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
              help=f"Greedy answer length [default: the reference protocol's (BBH 512, TyDi QA 50); --protocol chat: "
                   f"{_DEFAULTS.max_new_tokens}, with --cot {_DEFAULTS.cot_max_new_tokens}].")
@click.option("--reuse-prefix/--no-reuse-prefix", default=_DEFAULTS.reuse_prefix, show_default=True,
              help="Run the prompt tokens a subtask's items share (the few-shot context) once per subtask; "
                   "the same numbers to float precision, faster.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Results JSON [default: beside a trained model, else runs/eval/<model>-<target>.json].")
def evaluate_command(model, target, limit, seed, protocol, metrics, cot, batch_size, max_new_tokens, reuse_prefix,
                     out) -> None:
    """Evaluate a model on a target's held-out items; prints a table and writes the results as JSON."""
    wanted = metric_names(metrics)
    changes = {}
    if max_new_tokens is not None:
        key = "answer_tokens" if protocol == "reference" else "cot_max_new_tokens" if cot else "max_new_tokens"
        changes[key] = max_new_tokens
    config = EvalSettings(protocol=protocol, batch_size=batch_size, reuse_prefix=reuse_prefix, **changes)
    out = out or default_results_path(model, target, limit, cot, protocol)
    check_output_file(out, overwrite=True)  # a rerun replaces its results; fail now, not after the evaluation
    results = evaluate(model, target, limit=limit, seed=seed, cot=cot, config=config, metrics=wanted)
    click.echo(format_table(results))
    path = write_results(results, out)
    click.echo(f"wrote {path}")


def metric_names(text: str | None) -> list[str] | None:
    """--metrics as the evaluation's metric names, the target loss left out; None when not given.

    Raises:
        ConfigError: an unknown name.
    """
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRIC_OPTIONS]
    if unknown or not names:
        raise ConfigError(f"unknown metric(s) {', '.join(unknown) or repr(text)}; choose from "
                          f"{', '.join(METRIC_OPTIONS)}")
    return [METRIC_OPTIONS[name] for name in dict.fromkeys(names) if name != "loss"]


COMMANDS = [evaluate_command]
