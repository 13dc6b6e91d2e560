"""`influence compare`: selectors side by side, trained and evaluated on every target."""

from __future__ import annotations

from pathlib import Path

import click

from influence.cli.less_options import less_options, pop_settings
from influence.cli.select import dsir_sampling_option, keep_contaminated_option
from influence.compare.run import compare
from influence.compare.settings import CompareSettings
from influence.constants import safe_name
from influence.training.settings import TrainSettings

RECIPES = {"less": TrainSettings, "small-k": TrainSettings.small_k}


def recipe_summary(settings: TrainSettings) -> str:
    """`batch 32, lr 2e-5, 4 epochs`: what tells the recipes apart."""
    mantissa, exponent = f"{settings.learning_rate:e}".split("e")
    return f"batch {settings.batch_size}, lr {float(mantissa):g}e{int(exponent)}, {settings.epochs} epochs"


def default_out_dir(pools: tuple[str, ...], targets: tuple[str, ...], k: int) -> Path:
    pool_part = "+".join(safe_name(p, keep="=") for p in pools)
    return Path("compare") / f"{pool_part}-{'+'.join(safe_name(t, keep='=') for t in targets)}-k{k}"


@click.command("compare")
@click.option("--pool", "pools", multiple=True, required=True, metavar="SPEC",
              help="Pool spec(s), as for select; SPEC:sample=N[,seed=S][,stratify=source] takes a seeded sample.")
@click.option("--target", "targets", multiple=True, required=True, metavar="SPEC",
              help="Target(s): each a selection target and an evaluation; repeat for several.")
@click.option("--k", type=int, default=1000, show_default=True, help="Examples per selection.")
@click.option("--selectors", default="less,longest,random", show_default=True, metavar="ROW[,ROW...]",
              help="Rows: registered selectors, each optionally with options, as in "
                   "less:scoring=unprojected,less:scoring=faiss,longest:unit=words,random; diversity=TAU "
                   "(and diversity_encoder=DIR) on any row walks its ranking with diversity-aware top-k.")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Training seeds per selection (0..N-1); random draws again with each.")
@click.option("--selection-seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Selection seeds (0..M-1) of the other rows: LESS's warmup sample, adapter init, projection.")
@click.option("--redraw", default="random", show_default=True, metavar="NAME[,NAME...]",
              help="Selectors drawn again for every training seed, with it as their seed ('' for none).")
@click.option("--metrics", default="loss,accuracy", show_default=True, metavar="M[,M...]",
              help="loss (always), accuracy (MMLU, from the same forward pass), em and f1 (generate answers: slow).")
@click.option("--base/--no-base", default=True, show_default=True, help="Evaluate the untrained model as a row.")
@click.option("--limit", type=int, default=None,
              help="Evaluate each target on a seeded subset of this many held-out items (the same for every row).")
@click.option("--recipe", type=click.Choice(sorted(RECIPES)), default="less", show_default=True,
              help="Training recipe: " + " or ".join(f"{name} ({recipe_summary(recipe())})"
                                                      for name, recipe in RECIPES.items())
                   + "; the options below change it.")
@click.option("--epochs", type=int, default=None, help="Training epochs per selection [default: the recipe's].")
@click.option("--lr", type=float, default=None, help="Training peak learning rate [default: the recipe's].")
@click.option("--train-batch-size", type=int, default=None, help="Examples per optimizer step [default: the recipe's].")
@click.option("--train-max-length", type=int, default=None, help="Training tokens per example [default: the recipe's].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory [default: compare/<pools>-<targets>-k<k>]; rerun to resume.")
@click.option("--dry-run", is_flag=True, help="Print the estimated time of each phase and the total; write nothing.")
@dsir_sampling_option
@keep_contaminated_option
@less_options
def compare_command(pools, targets, k, selectors, seeds, selection_seeds, redraw, metrics, base, limit, recipe, epochs,
                    lr, train_batch_size, train_max_length, out, dry_run, dsir_sampling, keep_contaminated,
                    **less) -> None:
    """For each row, seed and target: select, train, evaluate; then tables, a plot and the overlaps."""
    settings = pop_settings(less)
    changes = {name: value for name, value in (("epochs", epochs), ("learning_rate", lr),
                                               ("batch_size", train_batch_size), ("max_length", train_max_length))
               if value is not None}
    if train_batch_size:  # micro-batches of up to 4, a divisor of the batch
        changes["micro_batch_size"] = max(d for d in range(1, 5) if train_batch_size % d == 0)
    train = RECIPES[recipe](model=settings.model, **changes)

    def names(text: str) -> list[str]:
        return [name.strip() for name in text.split(",") if name.strip()]

    config = CompareSettings(pools=list(pools), targets=list(targets), k=k, selectors=[selectors], seeds=seeds,
                             selection_seeds=selection_seeds, redraw=names(redraw), metrics=names(metrics),
                             base=base, limit=limit, train=train, less=settings, dsir_sampling=dsir_sampling,
                             keep_contaminated=keep_contaminated)
    if dry_run:
        # loads torch: imported on use, not at start-up
        from influence.compare.estimate import estimate_compare

        click.echo("\n".join(estimate_compare(config).lines()))
        return
    out = out or default_out_dir(pools, targets, k)

    def report(cell) -> None:
        reused = ", ".join(step for step, hit in cell.cached.items() if hit)
        seed = "" if cell.seed is None else f" seed {cell.seed}" + (
            f" (selection seed {cell.selection_seed})" if selection_seeds > 1 else "")
        measured = "".join(f", {name} {value:.4f}" for name, value in cell.metrics.items())
        click.echo(f"[{cell.target}] {cell.selector}{seed}: target loss {cell.target_loss:.4f}{measured}"
                   + (f" (reused {reused})" if reused else ""))

    compare(config, out, on_cell=report)
    click.echo((out / "results.md").read_text(encoding="utf-8"))
    click.echo(f"wrote {out}/results.md, results.csv, results.json and plot.png")


COMMANDS = [compare_command]
