"""`influence warmup`, `featurize` and `score`: the LESS steps one at a time, for pipelines."""

from __future__ import annotations

import click

from influence import distributed
from influence.cli.less_options import less_options, pop_settings
from influence.cli.select import keep_contaminated_option, selection_options
from influence.data import load_pool, load_target
from influence.data.readers import counted
from influence.io import check_output_dir
from influence.selection import decontaminate, run_selection


@click.command("warmup")
@click.option("--pool", "pools", multiple=True, required=True, metavar="SPEC", help="Pool spec(s), as for select.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds the warmup sample and the adapter.")
@less_options
def warmup_command(pools, seed, **less) -> None:
    """Train the warmup LoRA on a seeded fraction of the pool (reused or resumed if present)."""
    # loads torch: imported on use, not at start-up
    from influence.less.pipeline import run_warmup

    settings = pop_settings(less, seed=seed)
    check_output_dir(settings.index_root)
    job = distributed.init_from_env()
    pool = load_pool(pools, stream=True)  # ids in memory; examples read a chunk at a time
    for line in pool.describe() if job.is_main else []:
        click.echo(line)
    result = run_warmup(pool, settings)
    if not job.is_main:
        return
    for path in result.checkpoints:
        click.echo(f"checkpoint {path}")
    click.echo(f"warmup done: {result.out_dir}")


@click.command("featurize")
@click.option("--pool", "pools", multiple=True, required=True, metavar="SPEC", help="Pool spec(s), as for select.")
@click.option("--target", default=None, metavar="SPEC", help="Also featurize this target.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds the warmup and the projection.")
@click.option("--dry-run", is_flag=True, help="Estimate time, disk and memory; compute and write nothing.")
@keep_contaminated_option
@less_options
def featurize_command(pools, target, seed, dry_run, keep_contaminated, **less) -> None:
    """Warm up (or reuse), then write gradient features of the pool (and target) at every checkpoint.

    With a registered --target the pool is first cleared of the target's held-out items, as
    `select` and `score` clear it, so that their datastores are the same.
    Under `torchrun --nproc_per_node N` (or several nodes), each rank featurizes its own
    shards of the same datastores, after training the warmup together (data parallel).
    """
    # loads torch: imported on use, not at start-up
    from influence.less.pipeline import build_features, print_estimate

    # featurize exists to write features: with a target, the unprojected cosines come from the same pass
    settings = pop_settings(less, seed=seed).with_(store_features=True)
    if dry_run:
        print_estimate(pools, target, settings, echo=click.echo)
        return
    check_output_dir(settings.index_root)
    job = distributed.init_from_env()
    pool = load_pool(pools, stream=True)  # ids in memory; examples read a chunk at a time
    for line in pool.describe() if job.is_main else []:
        click.echo(line)
    target_set = load_target(target) if target else None
    pool, contamination = decontaminate(pool, target_set, keep=keep_contaminated)
    if contamination is not None and job.is_main:
        click.echo(contamination.describe())
    features = build_features(pool, target_set, settings)
    if not job.is_main:
        return
    for path in features.pool_stores + features.target_stores + [p for c in features.cosine_stores for p in c]:
        click.echo(f"datastore {path}")
    for role, stats in features.stats["featurized"].items():
        click.echo(f"{role}: {counted(stats['done'], 'example')} featurized now, {stats['truncated']:,} cut at "
                   "max length")


@click.command("score")
@selection_options
@click.option("--target", required=True, metavar="SPEC", help="A target name or file.")
@keep_contaminated_option
@less_options
def score_command(pools, k, seed, fmt, out, overwrite, target, keep_contaminated, **less) -> None:
    """Select by LESS from datastores already built by `featurize` (never computes features).

    --scoring unprojected reads the exact cosines that `featurize --target` took for this target.
    """
    settings = pop_settings(less, seed=seed, scoring="faiss")
    run_selection(pools, k, "less", seed=seed, fmt=fmt, out=out, overwrite=overwrite, target=target,
                  selector_options={"settings": settings, "existing_only": True},
                  keep_contaminated=keep_contaminated, echo=click.echo)


COMMANDS = [warmup_command, featurize_command, score_command]
