"""The dry run of a comparison: each phase's estimated time, from the estimator `select --dry-run` uses."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from influence.compare.row_selector import make_row_selector, row_prefilter
from influence.compare.settings import GENERATION_METRICS, METRICS, CompareSettings, SelectorRow
from influence.data.example import Example
from influence.data.pools import load_pool
from influence.data.targets import load_target
from influence.evaluation import EvalSettings, build_task
from influence.evaluation.evaluate import TASK_METRICS
from influence.io import sha256_json
from influence.less.estimate import (FORWARD_UTILIZATION, MATMUL_UTILIZATION, ModelShape, calibrate, duration,
                                     estimate_less, evaluation_seconds, scaled_stats, token_stats, training_seconds)
from influence.less.pipeline import model_config_and_tokenizer
from influence.less.settings import LessSettings


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
        prefilter = row_prefilter(row, config)
        if prefilter is not None:  # the cascade: LESS over a shortlist of N, drawn anew for each target
            stats = stats.scaled(prefilter.n)
        whole_pool_warmup = sha256_json(settings.warmup_identity())
        for spec, target in targets.items():
            warm = whole_pool_warmup if prefilter is None else sha256_json(
                {"warm": whole_pool_warmup, "shortlist": prefilter.label, "target": spec})
            features = sha256_json({"warm": warm, "projector": settings.projector, "dims": settings.all_dims,
                                    "grad": settings.pool_grad})
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
                          f"{stats.examples:,} examples; {seeds_detail}; once per target"
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
                          f"{stats.examples:,} examples; {seeds_detail}; computed once, reused for every target")
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
    def per_target(r: SelectorRow) -> bool:  # a targeted selector or prefilter selects anew for every target
        prefilter = row_prefilter(r, config)
        return selectors[r.label].requires_target or (prefilter is not None and prefilter.targeted)

    runs = sum(len(config.seed_pairs(r)) * (len(targets) if per_target(r) else 1) for r in rows)
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
        count = int(config.base) + sum(len(config.seed_pairs(r)) for r in rows)
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
               f"targets: {', '.join(targets)}; {config.seeds} training seed(s)"
               + (f" (this sitting: {', '.join(map(str, config.only_seeds))})" if config.only_seeds is not None else "")
               + f", {config.selection_seeds} selection seed(s); metrics: {', '.join(config.metrics)}",
               f"device: {device}, {probe / 1e9:,.1f} GFLOP/s by a matmul probe, of which {MATMUL_UTILIZATION:.0%} "
               f"assumed reached by training and LESS, {FORWARD_UTILIZATION:.0%} by evaluation's forward passes"]
    return CompareEstimate(phases=phases, total_seconds=sum(p["seconds"] for p in phases), context=context,
                           notes=notes)
