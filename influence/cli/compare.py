"""`influence compare`: selectors side by side, trained and evaluated on every target."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

from influence.cli.less_options import less_options, pop_settings
from influence.cli.settings_options import apply, settings_option
from influence.compare.run import compare, regenerate
from influence.compare.settings import RECIPES, CompareSettings
from influence.constants import safe_name
from influence.training.settings import TrainSettings


def recipe_summary(settings: TrainSettings) -> str:
    """`batch 32, lr 2e-5, 4 epochs`: what tells the recipes apart."""
    mantissa, exponent = f"{settings.learning_rate:e}".split("e")
    return f"batch {settings.batch_size}, lr {float(mantissa):g}e{int(exponent)}, {settings.epochs} epochs"


# CompareSettings' fields (a list field takes comma-separated text): what is compared ...
COMPARISON_OPTIONS = [
    settings_option(CompareSettings, "k"),
    settings_option(CompareSettings, "selectors", metavar="ROW[,ROW...]"),
    settings_option(CompareSettings, "seeds", type=click.IntRange(min=1)),
    settings_option(CompareSettings, "selection_seeds", type=click.IntRange(min=1)),
    settings_option(CompareSettings, "redraw", metavar="NAME[,NAME...]"),
    settings_option(CompareSettings, "only_seeds", metavar="S[,S...]"),
    settings_option(CompareSettings, "metrics", metavar="M[,M...]"),
    settings_option(CompareSettings, "base"),
    settings_option(CompareSettings, "versus", metavar="ROW[,ROW...]"),
    settings_option(CompareSettings, "limit", type=int),
    settings_option(CompareSettings, "train_model", metavar="M"),
    settings_option(CompareSettings, "bootstrap_resamples", type=click.IntRange(min=1)),
    settings_option(CompareSettings, "bootstrap_seed"),
]
# ... and how every row selects
SELECTION_OPTIONS = [
    settings_option(CompareSettings, "dsir_sampling"),
    settings_option(CompareSettings, "dsir_min_length", type=click.IntRange(min=0)),
    settings_option(CompareSettings, "keep_contaminated"),
]


def comparison_options(function: Callable) -> Callable:
    return apply(COMPARISON_OPTIONS, function)


def selection_options(function: Callable) -> Callable:
    return apply(SELECTION_OPTIONS, function)


def default_out_dir(pools: tuple[str, ...], targets: tuple[str, ...], k: int) -> Path:
    pool_part = "+".join(safe_name(p, keep="=") for p in pools)
    return Path("compare") / f"{pool_part}-{'+'.join(safe_name(t, keep='=') for t in targets)}-k{k}"


@click.command("compare")
@click.option("--pool", "pools", multiple=True, required=True, metavar="SPEC",
              help="Pool spec(s), as for select; SPEC:sample=N[,seed=S][,stratify=source] takes a seeded sample.")
@click.option("--target", "targets", multiple=True, required=True, metavar="SPEC",
              help="Target(s): each a selection target and an evaluation; repeat for several.")
@comparison_options
@click.option("--recipe", type=click.Choice(sorted(RECIPES)), default="less", show_default=True,
              help="Training recipe: " + "; ".join(f"{name} ({recipe_summary(recipe())}; {recipe.provenance})"
                                                   for name, recipe in RECIPES.items())
                   + ". The options below change it.")
@click.option("--epochs", type=int, default=None, help="Training epochs per selection [default: the recipe's].")
@click.option("--lr", type=float, default=None, help="Training peak learning rate [default: the recipe's].")
@click.option("--train-batch-size", type=int, default=None, help="Examples per optimizer step [default: the recipe's].")
@click.option("--train-max-length", type=int, default=None, help="Training tokens per example [default: the recipe's].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory [default: compare/<pools>-<targets>-k<k>]; rerun to resume.")
@click.option("--dry-run", is_flag=True,
              help="Print the estimated time of each phase and the total, leaving out what --out holds already; "
                   "write nothing.")
@click.option("--reports-only", is_flag=True,
              help="Redo the tables and plot under --out from its saved evaluations; select, train, evaluate nothing.")
@selection_options
@less_options
def compare_command(pools, targets, k, selectors, seeds, selection_seeds, redraw, only_seeds, metrics, base, versus,
                    limit, train_model, bootstrap_resamples, bootstrap_seed, recipe, epochs, lr, train_batch_size,
                    train_max_length, out, dry_run, reports_only, dsir_sampling, dsir_min_length, keep_contaminated,
                    **less) -> None:
    """For each row, seed and target: select, train, evaluate; then tables, a plot and the overlaps."""
    settings = pop_settings(less)
    changes = {name: value for name, value in (("epochs", epochs), ("learning_rate", lr),
                                               ("batch_size", train_batch_size), ("max_length", train_max_length))
               if value is not None}
    if train_batch_size:  # micro-batches of up to 4, a divisor of the batch
        changes["micro_batch_size"] = max(d for d in range(1, 5) if train_batch_size % d == 0)
    train = RECIPES[recipe](**changes)  # its model: --train-model, else --model (CompareSettings decides)

    def names(text: str) -> list[str]:
        return [name.strip() for name in text.split(",") if name.strip()]

    config = CompareSettings(pools=list(pools), targets=list(targets), k=k, selectors=[selectors], seeds=seeds,
                             selection_seeds=selection_seeds, redraw=names(redraw), metrics=names(metrics),
                             only_seeds=[int(s) for s in names(only_seeds)] if only_seeds else None,
                             base=base, versus=[versus] if versus else [], limit=limit, train=train, recipe=recipe, train_model=train_model,
                             less=settings, dsir_sampling=dsir_sampling,
                             dsir_min_length=dsir_min_length, keep_contaminated=keep_contaminated,
                             bootstrap_resamples=bootstrap_resamples, bootstrap_seed=bootstrap_seed)
    out = out or default_out_dir(pools, targets, k)
    if dry_run:  # what the output directory holds already is not priced again
        # loads torch: imported on use, not at start-up
        from influence.compare.estimate import estimate_compare

        click.echo("\n".join(estimate_compare(config, out=out).lines()))
        return
    if reports_only:
        regenerate(out, versus=config.versus or None)
        click.echo(f"wrote {out}/results.md, results.csv, differences.csv, results.json and plot.png again")
        return

    def report(cell) -> None:
        reused = ", ".join(step for step, hit in cell.cached.items() if hit)
        seed = "" if cell.seed is None else f" seed {cell.seed}" + (
            f" (selection seed {cell.selection_seed})" if selection_seeds > 1 else "")
        measured = "".join(f", {name} {value:.4f}" for name, value in cell.metrics.items())
        click.echo(f"[{cell.target}] {cell.selector}{seed}: target loss {cell.target_loss:.4f}{measured}"
                   + (f" (reused {reused})" if reused else ""))

    compare(config, out, on_cell=report)
    click.echo((out / "results.md").read_text(encoding="utf-8"))
    click.echo(f"wrote {out}/results.md, results.csv, differences.csv, results.json and plot.png")


COMMANDS = [compare_command]
