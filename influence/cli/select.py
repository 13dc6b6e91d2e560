"""`influence select`: choose k examples from one or more pools."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from influence.algorithms import ALGORITHMS, DEFAULT_ALGORITHM, RoundRobin, Uot, algorithm_from_options
from influence.cascade import PREFILTER_HELP, Prefilter
from influence.cli.less_options import NAMES, less_options, pop_settings
from influence.cli.settings_options import settings_option
from influence.constants import OUTPUT_FORMATS, POOLINGS
from influence.data.contamination import KEEP_CONTAMINATED_HELP
from influence.errors import SelectionError
from influence.selection import Diversity, run_selection, selector_options
from influence.selectors import SELECTORS
from influence.selectors.baselines import LENGTH_UNITS
from influence.selectors.dsir import MIN_LENGTH_HELP as DSIR_MIN_LENGTH_HELP, SAMPLING_HELP as DSIR_SAMPLING_HELP, DsirSelector


def selection_options(function):
    for option in reversed([
        click.option("--pool", "pools", multiple=True, required=True, metavar="SPEC",
                     help="A pool name (see `influence pools`), a data file, or hf:ID[:SPLIT]. Repeat to mix."),
        click.option("--k", type=int, default=1000, show_default=True, help="How many examples to select."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Seed for random choices."),
        click.option("--format", "fmt", type=click.Choice(OUTPUT_FORMATS), default=None,
                     help="Record layout of the output JSONL [default: alpaca, or messages when a selected "
                          "chat has several turns]; prompt-completion is TRL's conversational prompt/completion."),
        click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Output JSONL [default: selections/<pool>-<selector>-k<k>.jsonl]; the manifest goes "
                          "beside it as .<name>.manifest.json (hidden, so `datasets` loads the records only). "
                          "`-` (stdout) is refused: a selection is a file and its manifest."),
        click.option("--overwrite", is_flag=True, help="Replace an existing output."),
    ]):
        function = option(function)
    return function


ALGORITHM_HELP = ("How k examples are chosen from the scores: top-k of the aggregated score; round-robin, each "
                  "target example in turn taking its most similar example not yet chosen; uot, unbalanced optimal "
                  "transport from the target to the pool. round-robin and uot need a selector with per-target "
                  "similarities (less, rds, embed, bm25).")
algorithm_options = [
    click.option("--algorithm", type=click.Choice(list(ALGORITHMS)), default=DEFAULT_ALGORITHM, show_default=True,
                 help=ALGORITHM_HELP),
    settings_option(RoundRobin, "over", flag="--algorithm-over", param="algorithm_over",
                    help="round-robin and uot: turns (or transported mass) per target example or per subtask; "
                         "less's exact scoring keeps per-subtask similarities only."),
    settings_option(Uot, "eps", flag="--uot-eps", param="uot_eps"),
    settings_option(Uot, "target_marginal", flag="--uot-target-marginal", param="uot_target_marginal"),
    settings_option(Uot, "pool_marginal", flag="--uot-pool-marginal", param="uot_pool_marginal"),
]


def with_algorithm_options(function):
    for option in reversed(algorithm_options):
        function = option(function)
    return function


dsir_sampling_option = settings_option(DsirSelector, "sampling", flag="--dsir-sampling", param="dsir_sampling",
                                       help=f"dsir: {DSIR_SAMPLING_HELP}")
dsir_min_length_option = settings_option(DsirSelector, "min_length", flag="--dsir-min-length", param="dsir_min_length",
                                         type=click.IntRange(min=0), help=f"dsir: {DSIR_MIN_LENGTH_HELP}.")
keep_contaminated_option = click.option("--keep-contaminated", is_flag=True, help=KEEP_CONTAMINATED_HELP)


def given_options(names) -> list[str]:
    """The `--options` among the parameter `names` that the user gave (not left at their default)."""
    ctx = click.get_current_context()
    given = []
    for param in ctx.command.params:
        if param.name in names and ctx.get_parameter_source(param.name) in (ParameterSource.COMMANDLINE,
                                                                            ParameterSource.ENVIRONMENT):
            given.append(max(param.opts, key=len))
    return given


@click.command("select")
@selection_options
@click.option("--target", default=None, metavar="SPEC",
              help="A target name (see `influence targets`) or file, for targeted selectors. A registered "
                   "target also keeps its held-out items out of any selector's pool (see --keep-contaminated).")
@click.option("--selector", type=click.Choice(sorted(SELECTORS)), default=None,
              help="Scoring method [default: longest without a target, less with one].")
@click.option("--length-unit", type=click.Choice(LENGTH_UNITS), default="chars", show_default=True,
              help="longest: measure responses in characters or words.")
@click.option("--pooling", type=click.Choice(POOLINGS), default="last", show_default=True,
              help="rds: the last token's final hidden state (as LESS), the mean over tokens, or RDS+'s "
                   "position-weighted mean (weighted).")
@click.option("--embed-model", default=None, metavar="M",
              help="embed and --diversity: a sentence-transformers directory or hub id "
                   "[default: the bundled all-MiniLM-L6-v2].")
@click.option("--diversity", type=float, default=None, metavar="TAU",
              help="Walk the ranking and skip an example whose embedding has cosine above TAU with one already "
                   "chosen (DEITA's filter; 0.9 in its paper); the summary gives the closest two picks' cosine, above "
                   "which TAU changes nothing [default: off].")
@click.option("--prefilter", default=None, metavar="SELECTOR:N", help=PREFILTER_HELP)
@click.option("--dry-run", is_flag=True, help="less: estimate time, disk and memory; compute and write nothing.")
@with_algorithm_options
@dsir_sampling_option
@dsir_min_length_option
@keep_contaminated_option
@less_options
def select_command(pools, k, seed, fmt, out, overwrite, target, selector, length_unit, pooling, embed_model, diversity,
                   prefilter, dry_run, algorithm, algorithm_over, uot_eps, uot_target_marginal, uot_pool_marginal,
                   dsir_sampling, dsir_min_length, keep_contaminated, **less) -> None:
    """Select k examples from a pool and write them, SFT-ready, with a manifest.

    With --selector less (the default when --target is given) every LESS step runs here,
    reusing whatever datastore under --index-root already matches.
    """
    name = selector or ("less" if target else "longest")
    settings = pop_settings(less, seed=seed)

    def options_for(selector_name: str) -> dict:
        return selector_options(selector_name, settings, length_unit=length_unit, pooling=pooling,
                                embed_model=embed_model, dsir_sampling=dsir_sampling,
                                dsir_min_length=dsir_min_length)

    first = None
    if prefilter is not None:
        first = Prefilter.parse(prefilter)
        first.options = options_for(first.selector)
        first.check(k, target)
    if dry_run:
        if name != "less":
            raise SelectionError(f"--dry-run estimates the less selector; {name!r} takes a second anyway")
        from influence.less.pipeline import print_estimate  # imports torch: only when asked

        print_estimate(pools, target, settings, echo=click.echo, shortlist=first.n if first else None)
        return
    options = options_for(name)
    used = {name} | ({first.selector} if first else set())
    model_based = ("less", "rds", "embed", "ifd")  # the LESS options give their model, datastore and device
    ignored = given_options(([] if "longest" in used else ["length_unit"])
                            + ([] if "dsir" in used else ["dsir_sampling", "dsir_min_length"]) + ([] if "rds" in used else ["pooling"])
                            + ([] if "embed" in used or diversity is not None else ["embed_model"])
                            + ([] if used & set(model_based) or diversity is not None else list(NAMES)))
    algorithm_given = {"algorithm_over": algorithm_over, "uot_eps": uot_eps,
                       "uot_target_marginal": uot_target_marginal, "uot_pool_marginal": uot_pool_marginal}
    method, not_taken = algorithm_from_options(algorithm, algorithm_given)
    if given_options(not_taken):
        click.echo(f"note: --algorithm {algorithm} ignores {', '.join(given_options(not_taken))}", err=True)
    chosen = None if diversity is None else Diversity(tau=diversity, encoder=embed_model, settings=settings)
    run_selection(pools, k, name, seed=seed, fmt=fmt, out=out, overwrite=overwrite, target=target,
                  selector_options=options, keep_contaminated=keep_contaminated, ignored=ignored, diversity=chosen,
                  algorithm=method, prefilter=first, echo=click.echo)


COMMANDS = [select_command]
