"""`influence evaluate`: target loss and the task metric on a target's held-out items."""

from __future__ import annotations

from pathlib import Path

import click

from influence.constants import safe_name
from influence.evaluation import evaluate, format_table, write_results
from influence.evaluation.evaluate import METRICS, EvalSettings
from influence.training import is_training_output
from influence.io import check_output_file

_DEFAULTS = EvalSettings()


def default_results_path(model: str | None, target: str, limit: int | None, cot: bool) -> Path:
    """<training dir>/eval-<target>[-cot][-limitN].json beside a trained model, else runs/eval/<model>-<...>.json."""
    def safe(text: str) -> str:
        return safe_name(Path(text).name or text, keep_suffix=True) or "model"

    suffix = safe(target) + ("-cot" if cot else "") + (f"-limit{limit}" if limit else "") + ".json"
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
@click.option("--cot", is_flag=True, help="BBH: use the 3-shot chain-of-thought prompt (slower generations).")
@click.option("--generate", is_flag=True,
              help="Also generate answers for the task metric where the target's default is the target loss "
                   "alone (user_oriented, flan_cot:<source>: exact match); the other targets always generate.")
@click.option("--batch-size", type=int, default=_DEFAULTS.batch_size, show_default=True,
              help="Sequences per forward pass or generation batch.")
@click.option("--max-new-tokens", type=int, default=None,
              help=f"Greedy answer length [default: {_DEFAULTS.max_new_tokens}, with --cot "
                   f"{_DEFAULTS.cot_max_new_tokens}].")
@click.option("--reuse-prefix/--no-reuse-prefix", default=_DEFAULTS.reuse_prefix, show_default=True,
              help="Run the prompt tokens a subtask's items share (the few-shot context) once per subtask; "
                   "the same numbers to float precision, faster.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Results JSON [default: beside a trained model, else runs/eval/<model>-<target>.json].")
def evaluate_command(model, target, limit, seed, cot, generate, batch_size, max_new_tokens, reuse_prefix, out) -> None:
    """Evaluate a model on a target's held-out items; prints a table and writes the results as JSON."""
    changes = {}
    if max_new_tokens is not None:
        changes["cot_max_new_tokens" if cot else "max_new_tokens"] = max_new_tokens
    config = EvalSettings(batch_size=batch_size, reuse_prefix=reuse_prefix, **changes)
    out = out or default_results_path(model, target, limit, cot)
    check_output_file(out, overwrite=True)  # a rerun replaces its results; fail now, not after the evaluation
    results = evaluate(model, target, limit=limit, seed=seed, cot=cot, config=config,
                       metrics=list(METRICS) if generate else None)
    click.echo(format_table(results))
    path = write_results(results, out)
    click.echo(f"wrote {path}")


COMMANDS = [evaluate_command]
