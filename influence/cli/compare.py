"""`influence compare`: selectors side by side, trained and evaluated on the target."""

from __future__ import annotations

from pathlib import Path

import click

from influence.cli.less_options import less_options, pop_settings
from influence.cli.select import dsir_sampling_option, keep_contaminated_option
from influence.constants import safe_name
from influence.training.settings import TrainSettings

_TRAIN = TrainSettings()


def default_out_dir(pools: tuple[str, ...], target: str, k: int) -> Path:
    return Path("compare") / f"{'+'.join(safe_name(p) for p in pools)}-{safe_name(target)}-k{k}"


@click.command("compare")
@click.option("--pool", "pools", multiple=True, required=True, metavar="SPEC", help="Pool spec(s), as for select.")
@click.option("--target", required=True, metavar="SPEC", help="Target: the selection target and the evaluation.")
@click.option("--k", type=int, default=1000, show_default=True, help="Examples per selection.")
@click.option("--selectors", default="less,longest,random", show_default=True, help="Comma-separated selectors.")
@click.option("--seeds", type=int, default=3, show_default=True, help="Seeds per selector (0..N-1).")
@click.option("--limit", type=int, default=None, help="Evaluate on a seeded subset of this many held-out items.")
@click.option("--epochs", type=int, default=_TRAIN.epochs, show_default=True, help="Training epochs per selection.")
@click.option("--lr", type=float, default=_TRAIN.learning_rate, show_default=True, help="Training peak learning rate.")
@click.option("--train-batch-size", type=int, default=_TRAIN.batch_size, show_default=True,
              help="Examples per optimizer step.")
@click.option("--train-max-length", type=int, default=_TRAIN.max_length, show_default=True,
              help="Training tokens per example.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory [default: compare/<pool>-<target>-k<k>]; rerun to resume.")
@dsir_sampling_option
@keep_contaminated_option
@less_options
def compare_command(pools, target, k, selectors, seeds, limit, epochs, lr, train_batch_size, train_max_length, out,
                    dsir_sampling, keep_contaminated, **less) -> None:
    """For each selector and seed: select, train, evaluate; then a table, a plot and the overlaps."""
    # loads torch: imported on use, not at start-up
    from influence.compare import CompareSettings, compare, markdown

    settings = pop_settings(less)
    train = TrainSettings(model=settings.model, epochs=epochs, learning_rate=lr, batch_size=train_batch_size,
                        micro_batch_size=min(4, train_batch_size), max_length=train_max_length)
    config = CompareSettings(pools=list(pools), target=target, k=k,
                           selectors=[s.strip() for s in selectors.split(",") if s.strip()], seeds=seeds,
                           limit=limit, train=train, less=settings, dsir_sampling=dsir_sampling,
                           keep_contaminated=keep_contaminated)
    out = out or default_out_dir(pools, target, k)

    def report(cell) -> None:
        reused = ", ".join(step for step, hit in cell.cached.items() if hit)
        click.echo(f"{cell.selector} seed {cell.seed}: target loss {cell.target_loss:.4f}, {cell.metric_name} "
                   f"{cell.metric:.4f}" + (f" (reused {reused})" if reused else ""))

    summary = compare(config, out, on_cell=report)
    click.echo(markdown(summary))
    click.echo(f"wrote {out}/results.md, results.csv, results.json and plot.png")


COMMANDS = [compare_command]
