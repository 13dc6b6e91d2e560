"""Compare selectors: select, train and evaluate each on every target; then tables, a plot, overlaps.

A row is a registered selector with its own options (`less`, `less:scoring=exact`,
`longest:unit=words`). Seeds come in two kinds: selection seeds decide what a costly
selection draws (LESS's warmup sample, adapter init and projection), training seeds decide
the training run (adapter init, data order, dropout). One selection serves every training
seed, so a LESS datastore is built once per selection seed, not once per run. Selectors
listed in `redraw` (by default `random`) draw again for every training seed instead: their
draw is the training seed. An untargeted selection is made and trained once and evaluated
on every target; a targeted one is made per target, and LESS reuses the pool's gradient
features (they do not depend on the target) across targets.

Every step is cached under the output directory by a hash of what decides it, so a rerun
does only what is missing and an interrupted comparison resumes where it stopped:

    <out>/selections/<row>-<target>-s<selection seed>-<key>.jsonl (+ its hidden .manifest.json)
    <out>/runs/<row>-s<selection seed>-t<training seed>-<key>/    training (keyed by the picked ids)
    <out>/evals/<target>/<run or base>-<key>.json                 evaluation results
    <out>/results.{md,csv,json}, <out>/plot.png                   the comparison
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import os
import statistics
from dataclasses import InitVar, asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from influence import evaluation, training
from influence.constants import manifest_path, safe_name
from influence.data.contamination import Contamination
from influence.data.example import Example
from influence.data.pools import Pool, load_pool
from influence.data.targets import load_target
from influence.errors import ConfigError, require_positive_ints
from influence.evaluation import EvalSettings, build_task
from influence.evaluation.evaluate import TASK_METRICS
from influence.io import check_output_dir, sha256_json, write_bytes, write_json, write_text
from influence.less.estimate import (FORWARD_UTILIZATION, MATMUL_UTILIZATION, ModelShape, calibrate, duration,
                                     estimate_less, evaluation_seconds, scaled_stats, token_stats, training_seconds)
from influence.less.pipeline import model_config_and_tokenizer
from influence.less.settings import LessSettings
from influence.selection import Diversity, decontaminate, select, write_selection
from influence.selectors import SELECTORS, make_selector
from influence.selectors.dsir import SAMPLING as DSIR_SAMPLING
from influence.training.settings import TrainSettings

log = logging.getLogger(__name__)
BASELINE = "random"
BASE = "base"  # the row of the untrained model
# --metrics names -> the evaluation's metric names; the target loss is always measured
METRICS = {"loss": "target_loss", "accuracy": "accuracy", "em": "exact_match", "f1": "f1"}
GENERATION_METRICS = ("em", "f1")


# ------------------------------------------------------------------ rows: a selector and its options
@dataclass(frozen=True)
class SelectorRow:
    """One row of a comparison: a registered selector and the options it is made with."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """`name`, or `name:key=value,...` as typed: the row's name in tables and files."""
        if not self.options:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_option_text(v)}" for k, v in self.options)

    @classmethod
    def parse(cls, spec: str) -> "SelectorRow":
        """`name[:key=value[,key=value...]]`; values are read as JSON where they parse (8192, 1e-4, true).

        Raises:
            ConfigError: an option without a value, or an empty name.
        """
        name, _, options = spec.strip().partition(":")
        pairs = []
        for part in filter(None, (p.strip() for p in options.split(","))):
            key, eq, value = (x.strip() for x in part.partition("="))
            if not eq or not key or not value:
                raise ConfigError(f"selector row {spec!r}: expected name:key=value[,key=value], got {part!r}")
            pairs.append((key.replace("-", "_"), _option_value(value)))
        if not name.strip():
            raise ConfigError(f"selector row {spec!r} has no selector name")
        return cls(name.strip(), tuple(pairs))


def _option_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _option_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def parse_rows(text: str | Sequence[str]) -> list[str]:
    """Split `less,less:scoring=exact,index=flat,longest` into row specs: a part holding `=` before
    any `:` continues the options of the row before it."""
    parts = [text] if isinstance(text, str) else list(text)
    rows: list[str] = []
    for part in (p.strip() for chunk in parts for p in chunk.split(",")):
        if not part:
            continue
        continues = "=" in part and (":" not in part or part.index("=") < part.index(":"))
        if continues:
            if not rows:
                raise ConfigError(f"selector option {part!r} comes before any selector name")
            rows[-1] += ("," if ":" in rows[-1] else ":") + part
        else:
            rows.append(part)
    return rows


def _safe(text: str) -> str:
    text = Path(text).stem if Path(text).suffix and Path(text).exists() else text
    return safe_name(text, keep_suffix=True, keep="=") or "x"


# ------------------------------------------------------------------ settings
@dataclass
class CompareSettings:
    """What to compare and how to train and evaluate each selection."""

    pools: list[str] = field(metadata={"help": "Pool specs, as for select."})
    targets: list[str] = field(default_factory=list, metadata={
        "help": "Targets (names or files): each a selection target and an evaluation."})
    k: int = field(default=1000, metadata={"help": "Examples per selection."})
    selectors: list[str] = field(default_factory=lambda: ["less", "longest", "random"], metadata={
        "help": "Rows: registered selector names, each optionally with options (less:scoring=exact)."})
    seeds: int = field(default=3, metadata={"help": "Training seeds 0..seeds-1 (and the draws of redraw rows)."})
    selection_seeds: int = field(default=1, metadata={
        "help": "Selection seeds 0..N-1 of the other rows (LESS: warmup sample, adapter init, projection)."})
    redraw: list[str] = field(default_factory=lambda: [BASELINE], metadata={
        "help": "Selectors drawn again for every training seed, with it as their seed."})
    metrics: list[str] = field(default_factory=lambda: ["loss", "accuracy"], metadata={
        "help": "loss (always), accuracy (MMLU, by option log-likelihood), em and f1 (generate answers)."})
    base: bool = field(default=True, metadata={"help": "Evaluate the untrained model as a base row."})
    limit: int | None = field(default=None, metadata={
        "help": "Evaluate on a seeded subset of this many held-out items per target (the same for every row)."})
    train: TrainSettings = field(default_factory=TrainSettings, metadata={"help": "Training settings."})
    less: LessSettings = field(default_factory=LessSettings, metadata={
        "help": "LESS settings (a row's options change them for that row)."})
    eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size."})
    eval_max_length: int = field(default=2048, metadata={"help": "Evaluation token budget per sequence."})
    dsir_sampling: str = field(default="gumbel", metadata={
        "help": "dsir: gumbel (seeded importance resampling, as DSIR) or none (rank by the log weight)."})
    keep_contaminated: bool = field(default=False, metadata={
        "help": "Keep pool examples that overlap a target's held-out items (dropped before selection by default)."})
    target: InitVar[str | None] = None  # one target, as `targets=[target]`

    def __post_init__(self, target: str | None) -> None:
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if target is not None:
            self.targets = [*self.targets, target]
        if not self.pools:
            raise ConfigError("compare needs at least one --pool")
        if not self.targets:
            raise ConfigError("compare needs at least one --target")
        if len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"a target is given twice: {', '.join(self.targets)}")
        self.selectors = parse_rows(self.selectors)
        if not self.selectors:
            raise ConfigError("compare needs at least one selector")
        rows = self.rows()
        unknown = [r.name for r in rows if r.name not in SELECTORS]
        if unknown:
            raise ConfigError(f"unknown selector(s) {', '.join(unknown)}; choose from {', '.join(sorted(SELECTORS))}")
        labels = [r.label for r in rows]
        if len(set(labels)) != len(labels) or BASE in labels:
            raise ConfigError(f"every row needs its own name (and {BASE!r} is the untrained model's row); got "
                              f"{', '.join(labels)}")
        require_positive_ints(self, "k", "seeds", "selection_seeds")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"limit must be positive, got {self.limit}")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ConfigError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
        self.metrics = ["loss"] + [m for m in dict.fromkeys(self.metrics) if m != "loss"]
        if self.dsir_sampling not in DSIR_SAMPLING:
            raise ConfigError(f"dsir_sampling must be one of {', '.join(DSIR_SAMPLING)}, got {self.dsir_sampling!r}")
        if self.less.name and self.selection_seeds > 1:
            raise ConfigError("a fixed LESS datastore --name cannot hold several selection seeds; drop --name")

    def rows(self) -> list[SelectorRow]:
        return [SelectorRow.parse(spec) for spec in self.selectors]

    def eval_metrics(self) -> list[str]:
        """The evaluation's metric names for the chosen --metrics, the target loss left out."""
        return [METRICS[m] for m in self.metrics if m != "loss"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["train"], data["less"] = self.train.to_dict(), self.less.to_dict()
        return data


DIVERSITY_OPTIONS = ("diversity", "diversity_encoder")  # row options for the shared top-k, not the selector


def make_row_selector(row: SelectorRow, config: CompareSettings) -> Any:
    """The row's selector, made from the comparison's settings for it (LESS's settings, which also give
    rds, embed and ifd their model and datastore; DSIR's sampling) changed by the row's own options."""
    defaults = {"less": {"settings": config.less}, "rds": {"settings": config.less}, "embed": {"settings": config.less},
                "ifd": {"settings": config.less}, "dsir": {"sampling": config.dsir_sampling}}.get(row.name, {})
    options = {**defaults, **{k: v for k, v in row.options if k not in DIVERSITY_OPTIONS}}
    try:
        return make_selector(row.name, **options)
    except TypeError as exc:
        raise ConfigError(f"selector row {row.label!r}: {exc}") from None


def row_diversity(row: SelectorRow, config: CompareSettings) -> Diversity | None:
    """Diversity-aware top-k for a row such as `longest:diversity=0.9` (the encoder from
    `diversity_encoder=DIR`, else the bundled one), stored beside the comparison's LESS datastores.

    Raises:
        ConfigError: a threshold outside (0, 1), or an encoder without a threshold.
    """
    options = dict(row.options)
    if "diversity" not in options:
        if "diversity_encoder" in options:
            raise ConfigError(f"selector row {row.label!r}: diversity_encoder needs diversity=TAU")
        return None
    tau = options["diversity"]
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise ConfigError(f"selector row {row.label!r}: diversity must be a cosine in (0, 1), got {tau!r}")
    return Diversity(tau=float(tau), encoder=options.get("diversity_encoder"), settings=config.less)


# ------------------------------------------------------------------ cells
@dataclass
class Cell:
    """One evaluation: a row's training run (or the untrained model) measured on one target."""

    selector: str                      # the row's label
    target: str
    seed: int | None                   # the training seed; None for the base row
    selection_seed: int | None = None  # the seed the selection was made with; None for the base row
    selection: Path | None = None
    run: Path | None = None
    eval: Path | None = None
    target_loss: float = float("nan")
    metrics: dict[str, float] = field(default_factory=dict)
    selection_seconds: float = 0.0
    training_seconds: float = 0.0
    evaluation_seconds: float = 0.0
    items: int = 0                     # held-out items evaluated
    cached: dict[str, bool] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {"target": self.target, "selector": self.selector, "selection_seed": self.selection_seed,
                "seed": self.seed, "target_loss": self.target_loss, **self.metrics,
                "selection_seconds": self.selection_seconds, "training_seconds": self.training_seconds,
                "evaluation_seconds": self.evaluation_seconds}


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _plan(config: CompareSettings, row: SelectorRow) -> list[tuple[int, int]]:
    """(selection seed, training seed) pairs of one row."""
    if row.name in config.redraw:
        return [(seed, seed) for seed in range(config.seeds)]
    return list(itertools.product(range(config.selection_seeds), range(config.seeds)))


def compare(config: CompareSettings, out: str | Path, *,
            on_cell: Callable[[Cell], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the comparison and write its tables and plot under `out`."""
    out = Path(out)
    check_output_dir(out)  # before any selection, training or evaluation
    pool = load_pool(config.pools)
    targets = {spec: load_target(spec) for spec in config.targets}
    selectors = {row.label: make_row_selector(row, config) for row in config.rows()}  # bad options fail here
    diversities = {row.label: row_diversity(row, config) for row in config.rows()}
    # the contamination guard, once for every row: the pool less what overlaps any target's held-out items,
    # so an untargeted selection (evaluated on every target) never trains on a test item, and every
    # targeted row scores the same pool (one LESS warmup and datastore serve all targets)
    guards = {spec: decontaminate(pool, target, keep=config.keep_contaminated)[1] for spec, target in targets.items()}
    for found in guards.values():
        if found is not None and found.ids:
            log.warning("%s", found.describe())
    present = [g for g in guards.values() if g is not None]
    guard = present[0] if len(present) == 1 else _merged(present, pool, config.keep_contaminated)
    scored_pool = pool.without(guard.indices) if guard is not None and guard.ids and not guard.kept else pool
    cleared = {"ids": guard.ids if guard is not None else [], "kept": config.keep_contaminated}
    eval_config = EvalSettings(batch_size=config.eval_batch_size, max_length=config.eval_max_length,
                             keep_predictions=False, progress=config.train.progress)
    wanted = config.eval_metrics()

    def evaluate_cell(cell: Cell, model: Any, model_key: str) -> None:
        # every cell of a target is evaluated on the same held-out items (the --limit subset drawn
        # with seed 0), so differences between rows and seeds come from the selections and training
        key = sha256_json({"model": model_key, "target": cell.target, "limit": config.limit, "seed": 0,
                           "eval": eval_config.to_dict(), "metrics": wanted})[:10]
        stem = cell.run.name if cell.run is not None else BASE
        cell.eval = out / "evals" / _safe(cell.target) / f"{stem}-{key}.json"
        cell.cached["evaluation"] = cell.eval.exists()
        if cell.cached["evaluation"]:
            results = json.loads(cell.eval.read_text())
        else:
            results = evaluation.evaluate(model, cell.target, limit=config.limit, seed=0, config=eval_config,
                                          metrics=wanted)
            evaluation.write_results(results, cell.eval)
        cell.target_loss = float(results["metrics"]["target_loss"])
        cell.metrics = {m: float(results["metrics"][m]) for m in wanted if m in results["metrics"]}
        cell.evaluation_seconds = float(results.get("seconds", 0.0))
        cell.items = int(results["items"])

    cells: list[Cell] = []

    def finish(cell: Cell) -> None:
        cells.append(cell)
        if on_cell:
            on_cell(cell)

    if config.base:
        for spec in config.targets:
            cell = Cell(BASE, spec, None)
            evaluate_cell(cell, config.train.model, sha256_json({"base": config.train.model}))
            finish(cell)
    for row in config.rows():
        selector = selectors[row.label]
        row_targets = list(targets) if selector.requires_target else [None]
        for target_spec in row_targets:
            target = targets[target_spec] if target_spec is not None else None
            target_fp = sha256_json([e.id for e in target.examples]) if target is not None else None
            seen: set[tuple[str, int]] = set()
            for selection_seed, seed in _plan(config, row):
                diversity = diversities[row.label]
                key = sha256_json({"pool": pool.fingerprint, "target": target_fp, "selector": row.name,
                                   "params": selector.params(), "seed": selection_seed, "k": config.k,
                                   "contamination": cleared,
                                   **({"diversity": diversity.to_dict()} if diversity else {})})[:10]
                where = _safe(target_spec) if target_spec is not None else "any"
                selection = out / "selections" / f"{_safe(row.label)}-{where}-s{selection_seed}-{key}.jsonl"
                cached = selection.exists() and manifest_path(selection).exists()
                if not cached:
                    made = select(scored_pool, config.k, selector, target=target, seed=selection_seed,
                                  contamination=guard, diversity=diversity)
                    write_selection(made, selection, overwrite=True)
                ids = _ids(selection)
                picked = sha256_json(ids)
                if (picked, seed) in seen:  # another selection seed picked the very same examples
                    continue
                seen.add((picked, seed))
                train_key = sha256_json({"ids": picked, "train": config.train.identity(), "seed": seed})[:10]
                # a row that picked the very same examples as another shares its training run
                existing = sorted((out / "runs").glob(f"*-t{seed}-{train_key}"))
                run = existing[0] if existing else \
                    out / "runs" / f"{_safe(row.label)}-s{selection_seed}-t{seed}-{train_key}"
                result = training.train(str(selection), config.train.with_(seed=seed), run)
                for spec in (config.targets if target_spec is None else [target_spec]):
                    cell = Cell(row.label, spec, seed, selection_seed, selection, run)
                    cell.cached.update(selection=cached, training=result.reused)
                    cell.selection_seconds = json.loads(manifest_path(selection).read_text())["selection_seconds"]
                    cell.training_seconds = float(result.manifest["seconds"])
                    evaluate_cell(cell, run, train_key)
                    finish(cell)
    summary = summarize(cells, config.eval_metrics())
    summary["sources"] = source_shares(cells, pool)
    summary["overlap"] = overlaps(cells)
    summary["lengths"] = length_stats(cells, pool)
    summary["phases"] = phase_seconds(cells)
    summary["items"] = {c.target: c.items for c in cells}
    summary["pool"] = {"size": len(pool), "fingerprint": pool.fingerprint, "sources": pool.describe()}
    summary["contamination"] = {spec: found.manifest() for spec, found in guards.items() if found is not None}
    summary["config"] = config.to_dict()
    write_reports(summary, out)
    return summary


def _merged(guards: list[Contamination], pool: Pool, kept: bool) -> Contamination | None:
    """Several targets' guards as one record: what an untargeted selection was cleared of."""
    if not guards:
        return None
    ids = list(dict.fromkeys(i for g in guards for i in g.ids))
    found = set(ids)
    return Contamination(target="+".join(g.target for g in guards),
                         heldout_items=sum(g.heldout_items for g in guards),
                         heldout_skipped=sum(g.heldout_skipped for g in guards),
                         indices=[n for n, i in enumerate(pool.ids) if i in found], ids=ids, kept=kept,
                         n=guards[0].n, min_words=guards[0].min_words, seconds=sum(g.seconds for g in guards),
                         pool_fingerprint=pool.fingerprint)


# ------------------------------------------------------------------ the dry run
@dataclass
class CompareEstimate:
    """What a comparison would cost, phase by phase; `lines()` is what `compare --dry-run` prints."""

    phases: list[dict[str, Any]]       # name, seconds (all of the phase), each (one unit), count, detail
    total_seconds: float
    context: list[str]                 # what was counted: pool, cells, device
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        lines = ["dry run of the comparison: a rough estimate (FLOPs / a matmul probe: expect a factor of 2-3 "
                 "either way); nothing was computed or written"]
        lines += [f"  {line}" for line in self.context]
        for phase in self.phases:
            times = f" x {phase['count']}" if phase["count"] != 1 else ""
            lines.append(f"  {phase['name']}: {duration(phase['each'])}{times}"
                         + (f" = {duration(phase['seconds'])}" if times else "")
                         + (f" ({phase['detail']})" if phase.get("detail") else ""))
        lines.append(f"  total: {duration(self.total_seconds)}")
        return lines + [f"  note: {note}" for note in self.notes]


def _eval_examples(items: Sequence[Any]) -> list[Any]:
    return [Example(instruction=i.prompt, input="", output=i.reference, subtask=i.subtask) for i in items]


def _shared_share(items: Sequence[Any]) -> float:
    """The share of the items' characters that prefix reuse runs once per subtask instead of once per item."""
    total = sum(len(i.prompt) + len(i.reference) for i in items)
    groups: dict[str, list[str]] = {}
    for item in items:
        groups.setdefault(item.subtask, []).append(item.prompt)
    saved = sum(len(os.path.commonprefix(prompts)) * (len(prompts) - 1) for prompts in groups.values())
    return saved / total if total else 0.0


def estimate_compare(config: CompareSettings, *, flops_per_second: float | None = None) -> CompareEstimate:
    """Estimate each phase of `compare(config)` with the estimator `select --dry-run` uses: LESS's warmup,
    its pool features per checkpoint, the target features, training per cell and evaluation per cell.

    Loads the pool, the targets and the model's config and tokenizer (never its weights); writes nothing.
    Selectors other than LESS are counted as free: they score from text in seconds.
    """
    pool = load_pool(config.pools)
    targets = {spec: load_target(spec) for spec in config.targets}
    rows = config.rows()
    selectors = {row.label: make_row_selector(row, config) for row in rows}
    models: dict[str | None, tuple[Any, Any]] = {}

    def model(spec: str | None) -> tuple[Any, Any]:
        if spec not in models:
            models[spec] = model_config_and_tokenizer(spec)
        return models[spec]

    device = config.less.device or ("cuda" if torch.cuda.is_available() else "cpu")
    load = None
    if flops_per_second is None:
        flops_per_second, load = calibrate(device)
    probe = flops_per_second
    rate = probe * MATMUL_UTILIZATION
    phases: list[dict[str, Any]] = []
    notes: list[str] = []

    def phase(name: str, each: float, count: int, detail: str = "") -> None:
        phases.append({"name": name, "seconds": each * count, "each": each, "count": count, "detail": detail})

    def unique(name: str, qualifier: str) -> str:
        """`name`, or `name, qualifier` when another row's pass was priced under `name` already."""
        return f"{name}, {qualifier}" if any(p["name"] == name for p in phases) else name

    def draws(row: SelectorRow) -> int:
        return config.seeds if row.name in config.redraw else config.selection_seeds

    # ---- LESS: one warmup and one set of pool features per selection seed, target features per target
    less_rows = [r for r in rows if isinstance(getattr(selectors[r.label], "settings", None), LessSettings)]
    warmups: dict[str, list[str]] = {}
    pool_features: set[str] = set()
    target_features: set[tuple[str, str]] = set()
    pool_passes: set[str] = set()                 # warmups whose pool has had a priced pass
    cosine_passes: set[tuple[str, ...]] = set()   # the unprojected score's per-target pool passes
    for row in less_rows:
        settings = selectors[row.label].settings
        model_config, tokenizer = model(settings.model)
        shape = ModelShape.from_config(model_config, settings.lora)
        stats = token_stats(pool.examples, tokenizer=tokenizer, max_length=settings.max_length)
        warm = sha256_json(settings.warmup_identity())
        features = sha256_json({"warm": warm, "projector": settings.projector, "dims": settings.all_dims,
                                "grad": settings.pool_grad})
        for spec, target in targets.items():
            estimate = estimate_less(stats, target.examples, settings, shape=shape, tokenizer=tokenizer,
                                     device=device, flops_per_second=probe)
            if warm not in warmups:
                warmups[warm] = []
                phase("LESS warmup", estimate.seconds["warmup"], draws(row),
                      f"{estimate.warmup_examples:,} examples x {estimate.checkpoints} epochs, one per selection seed")
            if row.label not in warmups[warm]:
                warmups[warm].append(row.label)
            per_checkpoint = estimate.seconds["featurize_pool"] / estimate.checkpoints
            seeds_detail = f"{estimate.checkpoints} checkpoints x {draws(row)} selection seed(s)"
            if settings.scoring == "unprojected":
                # the exact cosines need the target's queries inside the pool's backward: one pool pass per
                # target (the first also writes the projected features with store_features), and a target
                # pass that forms the queries (and writes the target's features with store_features)
                cosines = (warm, settings.pool_grad, settings.target_grad, settings.adam_form, spec)
                if cosines not in cosine_passes:
                    cosine_passes.add(cosines)
                    again = warm in pool_passes
                    pool_passes.add(warm)
                    phase(f"LESS pool pass for the exact cosines with {spec}, per checkpoint" if again
                          else "LESS pool features, per checkpoint", per_checkpoint,
                          estimate.checkpoints * draws(row),
                          f"{len(pool):,} examples; {seeds_detail}; once per target"
                          + ("; also writes the projected features" if settings.store_features
                             and features not in pool_features else ""))
                    phase(unique(f"LESS target features, {spec}", "for the exact score's queries"),
                          estimate.seconds["featurize_target"], draws(row),
                          f"{len(target):,} examples x {estimate.checkpoints} checkpoints")
                    if settings.store_features:
                        pool_features.add(features)
                        target_features.add((features, spec))
            else:
                if features not in pool_features:
                    pool_features.add(features)
                    pool_passes.add(warm)
                    phase("LESS pool features, per checkpoint", per_checkpoint, estimate.checkpoints * draws(row),
                          f"{len(pool):,} examples; {seeds_detail}; computed once, reused for every target")
                if (features, spec) not in target_features:
                    target_features.add((features, spec))
                    phase(unique(f"LESS target features, {spec}", "projected"), estimate.seconds["featurize_target"],
                          draws(row),
                          f"{len(target):,} examples x {estimate.checkpoints} checkpoints")
            phase(f"LESS scoring, {row.label} on {spec}", estimate.seconds["score"], draws(row))
    for warm, labels in warmups.items():
        if len(labels) > 1:
            notes.append(f"{', '.join(labels)} share one warmup")

    # ---- training: one run per selection and training seed; an untargeted selection serves every target
    model_config, tokenizer = model(config.train.model)
    train_shape = ModelShape.from_config(model_config, config.train.lora)
    train_stats = token_stats(pool.examples, tokenizer=tokenizer, max_length=config.train.max_length)
    runs = sum(draws(r) * (config.seeds if r.name not in config.redraw else 1)
               * (len(targets) if selectors[r.label].requires_target else 1) for r in rows)
    full = config.train.method == "full"
    each = training_seconds(scaled_stats(train_stats, config.k), train_shape, epochs=config.train.epochs,
                            flops_per_second=rate, full=full)
    longest = sorted(pool.examples, key=lambda e: len(e.response), reverse=True)[: config.k]
    most = training_seconds(token_stats(longest, tokenizer=tokenizer, max_length=config.train.max_length),
                            train_shape, epochs=config.train.epochs, flops_per_second=rate, full=full)
    phase("training, per run", each, runs, f"k={config.k:,} at the pool's mean length, {config.train.epochs} epochs; "
          f"the {config.k:,} longest responses would take {duration(most)} a run")

    # ---- evaluation: every run on its target(s), and the untrained model once per target
    eval_config = EvalSettings(batch_size=config.eval_batch_size, max_length=config.eval_max_length)
    generate = {m for m in config.metrics if m in GENERATION_METRICS}
    for spec in targets:
        task = build_task(spec, mmlu_shots=eval_config.mmlu_shots)
        items = task.subset(config.limit, 0)
        stats = token_stats(_eval_examples(items), tokenizer=tokenizer, max_length=config.eval_max_length)
        if eval_config.reuse_prefix:  # a subtask's shared prompt start runs once, not once per item
            stats = scaled_stats(stats, stats.examples, tokens=1.0 - _shared_share(items))
        new_tokens = eval_config.max_new_tokens if generate & {k for k, v in METRICS.items()
                                                               if v in TASK_METRICS[task.kind]} else 0
        count = int(config.base) + sum(draws(r) * (config.seeds if r.name not in config.redraw else 1) for r in rows)
        seconds = evaluation_seconds(stats, train_shape, flops_per_second=probe * FORWARD_UTILIZATION,
                                     generated_tokens=new_tokens)
        phase(f"evaluation on {spec}, per run", seconds, count,
              f"{len(items):,} items, mean {stats.mean:,.0f} tokens run" + (", base included" if config.base else "")
              + (f", {new_tokens} generated tokens each" if new_tokens else ""))
    if generate:
        notes.append("generation runs one token per forward pass and is memory-bound: expect it slower than "
                     "its FLOPs say")
    others = [r.label for r in rows if r not in less_rows]
    if others:
        notes.append(f"selection by {', '.join(others)} is not counted (it scores text in seconds)")
    notes.append("model loading (about a second a run once converted) and writing are not counted")
    if load is not None and load.busy and device == "cpu":
        notes.append(f"the machine was busy while the probe ran ({load.describe()}): every time above assumes it "
                     "stays that busy; on a quiet machine expect them shorter")
    context = [f"pool: {len(pool):,} examples; k={config.k:,}; rows: {', '.join(r.label for r in rows)}"
               + (" and base" if config.base else ""),
               f"targets: {', '.join(targets)}; {config.seeds} training seed(s), {config.selection_seeds} selection "
               f"seed(s); metrics: {', '.join(config.metrics)}",
               f"device: {device}, {probe / 1e9:,.1f} GFLOP/s by a matmul probe, of which {MATMUL_UTILIZATION:.0%} "
               f"assumed reached by training and LESS, {FORWARD_UTILIZATION:.0%} by evaluation's forward passes"]
    return CompareEstimate(phases=phases, total_seconds=sum(p["seconds"] for p in phases), context=context,
                           notes=notes)


# ------------------------------------------------------------------ the reports
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def spread_kind(cells: list[Cell]) -> str:
    """What the ± of a row is a spread over, in words, from the cells themselves."""
    if cells[0].seed is None:
        return "none (one evaluation of the untrained model)"
    selections = {c.selection for c in cells}
    if len(cells) == 1:
        return "none (one run)"
    if len(selections) == 1:
        return f"{len(cells)} training seeds, one selection"
    if len(selections) == len(cells) and all(c.selection_seed == c.seed for c in cells):
        return f"{len(cells)} seeds, each a new draw and its own training seed"
    return f"{len(selections)} selection seeds x {len({c.seed for c in cells})} training seeds"


def summarize(cells: list[Cell], metrics: Sequence[str] = ()) -> dict[str, Any]:
    """Per target and row: mean and spread of each measure, and differences to random and to base.

    A difference to random counts when it is larger than the two rows' spreads together; a
    trained row moved the target when its mean differs from the untrained model's by more
    than its own spread.
    """
    measures = ["target_loss", *[m for m in metrics if any(m in c.metrics for c in cells)]]
    per_target: dict[str, dict[str, Any]] = {}
    for target in dict.fromkeys(c.target for c in cells):
        mine = [c for c in cells if c.target == target]
        rows: dict[str, Any] = {}
        for name in dict.fromkeys(c.selector for c in mine):
            group = [c for c in mine if c.selector == name]
            entry: dict[str, Any] = {"runs": len(group), "selections": len({c.selection for c in group}),
                                     "spread": spread_kind(group)}
            for what in measures:
                values = [_value(c, what) for c in group]
                if all(math.isfinite(v) for v in values):
                    entry[what], entry[f"{what}_std"] = _mean_std(values)
            rows[name] = entry
        for reference, mode in ((BASELINE, "both"), (BASE, "own")):
            if reference not in rows:
                continue
            for name, entry in rows.items():
                if name in (reference, BASE):
                    continue
                for what in measures:
                    if what not in entry or what not in rows[reference]:
                        continue
                    delta = entry[what] - rows[reference][what]
                    spread = entry[f"{what}_std"] + (rows[reference][f"{what}_std"] if mode == "both" else 0.0)
                    entry[f"{what}_vs_{reference}"] = delta
                    # a difference counts only when it is larger than the seed spread
                    entry[f"{what}_{reference}_beyond_spread"] = bool(abs(delta) > spread) if spread > 0 else None
        per_target[target] = rows
    return {"rows": [c.row() for c in cells], "selectors": per_target, "measures": measures,
            "targets": list(per_target)}


def _value(cell: Cell, what: str) -> float:
    return cell.target_loss if what == "target_loss" else cell.metrics.get(what, float("nan"))


def _trained(cells: list[Cell]) -> list[Cell]:
    return [c for c in cells if c.selection is not None]


def _by_target_row(cells: list[Cell]) -> dict[str, dict[str, list[Cell]]]:
    out: dict[str, dict[str, list[Cell]]] = {}
    for cell in _trained(cells):
        out.setdefault(cell.target, {}).setdefault(cell.selector, []).append(cell)
    return out


def _selections(cells: list[Cell]) -> list[Path]:
    return list(dict.fromkeys(c.selection for c in cells))


def source_shares(cells: list[Cell], pool: Pool) -> dict[str, dict[str, dict[str, float]]]:
    """Per target and row, the share of picks from each pool source family (alpaca, flan_cot, ...),
    pooled over the row's selections; `pool` is the pool's own mix."""
    family = {e.id: (e.source or "unknown").split("/")[0] for e in pool.examples}

    def shares(ids: list[str]) -> dict[str, float]:
        counts: dict[str, int] = {}
        for i in ids:
            counts[family.get(i, "unknown")] = counts.get(family.get(i, "unknown"), 0) + 1
        return {name: counts[name] / len(ids) for name in sorted(counts)}

    out: dict[str, dict[str, dict[str, float]]] = {}
    for target, rows in _by_target_row(cells).items():
        out[target] = {"pool": shares(list(family))}
        for name, group in rows.items():
            out[target][name] = shares([i for path in _selections(group) for i in _ids(path)])
    return out


def overlaps(cells: list[Cell]) -> dict[str, dict[str, float]]:
    """Per target, pairwise Jaccard of the rows' selections, averaged over pairs taken in seed order."""
    out: dict[str, dict[str, float]] = {}
    for target, rows in _by_target_row(cells).items():
        sets = {name: [set(_ids(p)) for p in _selections(group)] for name, group in rows.items()}
        out[target] = {f"{a}|{b}": statistics.fmean(len(x & y) / len(x | y) for x, y in zip(sets[a], sets[b]))
                       for a, b in itertools.combinations(sets, 2)}
    return out


def length_stats(cells: list[Cell], pool: Pool) -> dict[str, dict[str, dict[str, float]]]:
    """Per target, response length (characters) of each row's selections, and of the pool."""
    lengths = {e.id: len(e.response) for e in pool.examples}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for target, rows in _by_target_row(cells).items():
        out[target] = {"pool": _length_summary(list(lengths.values()))}
        for name, group in rows.items():
            out[target][name] = _length_summary([lengths[i] for p in _selections(group) for i in _ids(p)
                                                 if i in lengths])
    return out


def _length_summary(values: list[int]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "median": float(statistics.median(values)), "max": float(max(values))}


def phase_seconds(cells: list[Cell]) -> dict[str, Any]:
    """Measured wall time of each phase, to hold against the dry run: per selection, per training run,
    per evaluation; for LESS also its warmups and the features it computed. Cached work counts at the
    time it first took."""
    selections = {c.selection: c.selection_seconds for c in cells if c.selection is not None}
    runs = {c.run: c.training_seconds for c in cells if c.run is not None}
    evals = {c.eval: (c.target, c.evaluation_seconds) for c in cells}

    def stats(values: list[float]) -> dict[str, float]:
        return {"count": len(values), "total": sum(values), "mean": statistics.fmean(values) if values else 0.0}

    warmups: dict[str, float] = {}
    features = {"pool": 0.0, "target": 0.0}
    for path in selections:
        store = json.loads(manifest_path(path).read_text()).get("datastore")
        if not store:
            continue
        warmup = Path(store["workdir"]) / "warmup" / "manifest.json"
        if warmup.exists():
            warmups[str(warmup.parent)] = float(json.loads(warmup.read_text()).get("seconds", 0.0))
        for role, done in store.get("featurized", {}).items():
            features[role] = features.get(role, 0.0) + done.get("gradient_seconds", 0.0) \
                + done.get("projection_seconds", 0.0)
    out: dict[str, Any] = {"selection": stats(list(selections.values())), "training": stats(list(runs.values())),
                           "evaluation": {target: stats([s for t, s in evals.values() if t == target])
                                          for target in dict.fromkeys(t for t, _ in evals.values())}}
    if warmups:
        out["less"] = {"warmup": stats(list(warmups.values())), "pool_features_seconds": features["pool"],
                       "target_features_seconds": features["target"]}
    return out


def _phase_lines(phases: dict[str, Any]) -> list[str]:
    lines = ["## Wall time per phase", "", "| phase | count | total s | mean s |", "|---|---|---|---|"]

    def line(name: str, entry: dict[str, float]) -> None:
        lines.append(f"| {name} | {entry['count']} | {entry['total']:.1f} | {entry['mean']:.1f} |")

    line("selection", phases["selection"])
    if "less" in phases:
        line("of which LESS warmup", phases["less"]["warmup"])
        lines.append(f"| of which LESS pool features | — | {phases['less']['pool_features_seconds']:.1f} | — |")
        lines.append(f"| of which LESS target features | — | {phases['less']['target_features_seconds']:.1f} | — |")
    line("training", phases["training"])
    for target, entry in phases["evaluation"].items():
        line(f"evaluation on {target}", entry)
    return lines + [""]


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "—"
    return "—" if value is None else str(value)


def _label(what: str) -> str:
    return {"target_loss": "target loss", "exact_match": "exact match"}.get(what, what)


def markdown(summary: dict[str, Any]) -> str:
    """The comparison as markdown: per target the rows' means ± their spread, the verdicts, the picks' sources."""
    measures = summary["measures"]
    lines = _settings_lines(summary)
    for target in summary["targets"]:
        rows = summary["selectors"][target]
        present = [m for m in measures if any(m in e for e in rows.values())]
        items = summary.get("items", {}).get(target)
        lines += [f"## {target}" + (f" ({items} held-out items, the same for every row)" if items else ""), ""]
        header = ["row", "runs"] + [f"{_label(m)} (mean ± sd)" for m in present]
        if BASE in rows:
            header.append("vs base (target loss)")
        if BASELINE in rows:
            header += [f"vs random ({_label(m)})" for m in present]
        header.append("± is the spread over")
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, entry in rows.items():
            cells = [name, str(entry["runs"])]
            cells += [("—" if m not in entry else f"{entry[m]:.4f}" if entry["runs"] == 1
                       else f"{entry[m]:.4f} ± {entry[f'{m}_std']:.4f}") for m in present]
            if BASE in rows:
                cells.append(_versus(entry, "target_loss", BASE))
            if BASELINE in rows:
                cells += [_versus(entry, m, BASELINE) for m in present]
            cells.append(entry["spread"])
            lines.append("| " + " | ".join(cells) + " |")
        still = [n for n, e in rows.items() if e.get(f"target_loss_{BASE}_beyond_spread") is False]
        if still:
            lines += ["", f"Training did not move the target loss beyond the seed spread for: {', '.join(still)} "
                          "(their difference to the untrained model is within one standard deviation)."]
        guard = summary.get("contamination", {}).get(target)
        if guard:
            lines += ["", f"Contamination guard: {guard['found']:,} pool example(s) share a {guard['ngram_words']}-gram "
                          f"with {target}'s held-out items ({guard['action']}; every row's pool is cleared of every "
                          "target's)."]
        sources = summary.get("sources", {}).get(target)
        if sources:
            families = sorted({f for shares in sources.values() for f in shares})
            lines += ["", "| picks by source | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
            lines += [f"| {name} | " + " | ".join(f"{shares.get(f, 0.0):.0%}" for f in families) + " |"
                      for name, shares in sources.items()]
        overlap = summary.get("overlap", {}).get(target)
        if overlap:
            lines += ["", "| selections | Jaccard overlap |", "|---|---|"]
            lines += [f"| {pair.replace('|', ' vs ')} | {value:.3f} |" for pair, value in overlap.items()]
        length = summary.get("lengths", {}).get(target)
        if length:
            lines += ["", "| selection | mean response chars | median | max |", "|---|---|---|---|"]
            lines += [f"| {name} | {s['mean']:.0f} | {s['median']:.0f} | {s['max']:.0f} |"
                      for name, s in length.items()]
        lines.append("")
    if summary.get("phases"):
        lines += _phase_lines(summary["phases"])
    extra = [m for m in measures if m != "target_loss"]
    lines += ["## Every run", "", "| target | row | selection seed | training seed | target loss | "
              + "".join(f"{_label(m)} | " for m in extra) + "selection s | training s | evaluation s |",
              "|" + "---|" * (8 + len(extra))]
    for row in summary["rows"]:
        lines.append(f"| {row['target']} | {row['selector']} | {_fmt(row['selection_seed'])} | {_fmt(row['seed'])} | "
                     f"{_fmt(row['target_loss'])} | " + "".join(f"{_fmt(row.get(m))} | " for m in extra)
                     + f"{_fmt(row['selection_seconds'], 1)} | {_fmt(row['training_seconds'], 1)} | "
                       f"{_fmt(row['evaluation_seconds'], 1)} |")
    return "\n".join(lines) + "\n"


def _settings_lines(summary: dict[str, Any]) -> list[str]:
    """What was compared, in a few lines: the pool, the seeds, the training recipe, LESS's warmup."""
    config, pool = summary.get("config"), summary.get("pool")
    if not config or not pool:
        return []
    train, less = config["train"], config["less"]
    lines = ["# Comparison", "", f"- pool: {pool['size']:,} examples; k={config['k']:,}"]
    lines += [f"  - {line}" for line in pool["sources"]]
    lines += [f"- model: {train['model'] or 'bundled SmolLM2-135M-Instruct'}; training: {train['method']} "
              f"(LoRA r={train['lora']['r']}), {train['epochs']} epochs, lr {train['learning_rate']:g}, batch "
              f"{train['batch_size']}",
              f"- seeds: {config['seeds']} training, {config['selection_seeds']} selection; drawn again for every "
              f"training seed: {', '.join(config['redraw']) or 'none'}",
              f"- measures: {', '.join(config['metrics'])}; held-out items per target: "
              f"{config['limit'] or 'all'} (the same for every row)"]
    if any(SelectorRow.parse(spec).name == "less" for spec in config["selectors"]):
        lines.append(f"- LESS: {less['warmup_epochs']} warmup checkpoints on {less['warmup_fraction']:.0%} of the "
                     f"pool, LoRA r={less['lora']['r']}, {less['dims']} dims, projector {less['projector'] or 'default'}")
    return lines + [""]


def _versus(entry: dict[str, Any], what: str, reference: str) -> str:
    if f"{what}_vs_{reference}" not in entry:
        return "—"
    beyond = entry[f"{what}_{reference}_beyond_spread"]
    note = "beyond seed spread" if beyond else "within seed spread" if beyond is False else "no spread"
    return f"{entry[f'{what}_vs_{reference}']:+.4f} ({note})"


def write_reports(summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """results.md, results.csv, results.json and plot.png under `out`, each written atomically."""
    paths = {"markdown": out / "results.md", "csv": out / "results.csv", "json": out / "results.json",
             "plot": out / "plot.png"}
    write_text(paths["markdown"], markdown(summary))
    buffer = io.StringIO()
    fields = list(dict.fromkeys(key for row in summary["rows"] for key in row))
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(summary["rows"])
    write_text(paths["csv"], buffer.getvalue())
    write_json(paths["json"], _finite(summary))
    write_bytes(paths["plot"], plot_png(summary))
    return paths


def _finite(value: Any) -> Any:
    """NaN and infinities as null, so results.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


def plot_png(summary: dict[str, Any]) -> bytes:
    """One panel per target and measure: each trained row's mean with its spread as an error bar, its
    runs as small dots beside it, and the untrained model as a dashed line."""
    # optional and heavy: imported on use
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the file-only backend

    targets = summary["targets"]
    columns = [m for m in summary["measures"]
               if any(m in e for rows in summary["selectors"].values() for e in rows.values())]
    figure, axes = plt.subplots(len(targets), len(columns), figsize=(4.8 * len(columns), 3.4 * len(targets)),
                                squeeze=False)
    for r, target in enumerate(targets):
        rows = summary["selectors"][target]
        names = [n for n in rows if n != BASE]
        for c, what in enumerate(columns):
            axis = axes[r][c]
            shown = [n for n in names if what in rows[n]]
            if not shown:
                axis.set_visible(False)
                continue
            for index, name in enumerate(shown):
                colour = COLOURS[index % len(COLOURS)]
                axis.errorbar([index], [rows[name][what]], yerr=[rows[name][f"{what}_std"]], fmt="o", color=colour,
                              capsize=5, markersize=7)
                runs = [row[what] for row in summary["rows"] if row["target"] == target and row["selector"] == name
                        and row.get(what) is not None]
                axis.scatter([index + 0.15] * len(runs), runs, color=colour, s=10, alpha=0.6)
            if what in rows.get(BASE, {}):
                axis.axhline(rows[BASE][what], color="black", linestyle="--", linewidth=1, label="untrained")
                axis.legend(loc="best", fontsize=7)
            values = [rows[n][what] + sign * rows[n][f"{what}_std"] for n in shown for sign in (-1, 1)]
            values += [row[what] for row in summary["rows"] if row["target"] == target and row.get(what) is not None]
            low, high = min(values), max(values)
            pad = max(high - low, 1e-3) * 0.1
            axis.set_ylim(low - pad, high + pad)
            axis.set_xlim(-0.5, len(shown) - 0.5)
            axis.set_xticks(range(len(shown)), shown, rotation=20, ha="right", fontsize=8)
            better = "lower" if what == "target_loss" else "higher"
            axis.set_title(f"{Path(target).name}: {_label(what)} ({better} is better)", fontsize=9)
            axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()
