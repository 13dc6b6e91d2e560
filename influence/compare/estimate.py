"""The dry run of a comparison: each phase's estimated time, from the estimator `select --dry-run` uses."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from influence.compare.row_selector import make_row_selector, row_diversity, row_prefilter
from influence.compare.run import pending_work
from influence.compare.settings import BASE, GENERATION_METRICS, METRICS, CompareSettings, SelectorRow
from influence.data.example import Example
from influence.data.pools import load_pool
from influence.data.targets import load_target
from influence.evaluation import EvalSettings, build_task
from influence.evaluation.evaluate import TASK_METRICS, expected_answer_tokens
from influence.io import sha256_json
from influence.less.estimate import (FORWARD_UTILIZATION, MATMUL_UTILIZATION, ModelShape, calibrate, duration,
                                     encoder_shape, estimate_less, evaluation_seconds, response_only, scaled_stats,
                                     token_stats, training_seconds)
from influence.less.pipeline import model_config_and_tokenizer
from influence.selectors import make_selector


FORWARD_SELECTORS = ("rds", "ifd", "embed")  # priced by their forward passes over the pool (and targets)


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


def estimate_compare(config: CompareSettings, *, flops_per_second: float | None = None,
                     out: str | Path | None = None) -> CompareEstimate:
    """Estimate each phase of `compare(config)` with the estimator `select --dry-run` uses: LESS's warmup,
    its pool features per checkpoint, the target features, training per cell and evaluation per cell.

    With `out`, the comparison's directory, only what it does not hold yet is priced: a later sitting's
    dry run leaves out the selections, training runs and evaluations an earlier one made.
    Loads the pool, the targets and the model's config and tokenizer (never its weights); writes nothing.
    rds, ifd and embed (and a diversity row's or a cascade's embeddings) are priced by their forward passes;
    the other selectors are counted as free: they score from text in seconds.
    """
    pool = load_pool(config.pools)
    targets = {spec: load_target(spec) for spec in config.targets}
    rows = config.rows()
    selectors = {row.label: make_row_selector(row, config) for row in rows}
    models: dict[str | None, tuple[Any, Any]] = {}
    pending = pending_work(config, out) if out is not None and Path(out).is_dir() else None
    selecting: dict[tuple[str, str | None], set[int | None]] = {}  # (row, target) -> selection seeds to draw
    for step in pending or []:
        if step.step == "select":
            selecting.setdefault((step.row, step.target), set()).add(step.seed)

    def per_target(r: SelectorRow) -> bool:  # a targeted selector or prefilter selects anew for every target
        prefilter = row_prefilter(r, config)
        return selectors[r.label].requires_target or (prefilter is not None and prefilter.targeted)

    def selects(r: SelectorRow, spec: str | None = None) -> bool:
        """Whether the row still has a selection to make (for target `spec`; any target without one)."""
        if pending is None:
            return True
        return any(row == r.label and (spec is None or target in (spec, None)) for row, target in selecting)

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

    def draws(row: SelectorRow, spec: str) -> int:
        """Selection seeds the row draws for target `spec`: those still to draw, with `out`."""
        if pending is not None:
            return len(selecting.get((row.label, spec), ()))
        return config.seeds if row.name in config.redraw else config.selection_seeds

    # ---- LESS: one warmup and one set of pool features per selection seed, target features per target
    less_rows = [r for r in rows if getattr(selectors[r.label], "name", None) == "less"]
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
            if not selects(row, spec):
                continue
            warm = whole_pool_warmup if prefilter is None else sha256_json(
                {"warm": whole_pool_warmup, "shortlist": prefilter.label, "target": spec})
            features = sha256_json({"warm": warm, "projector": settings.projector, "dims": settings.all_dims,
                                    "grad": settings.pool_grad})
            estimate = estimate_less(stats, target.examples, settings, shape=shape, tokenizer=tokenizer,
                                     device=device, flops_per_second=probe)
            if warm not in warmups:
                warmups[warm] = []
                phase("LESS warmup", estimate.seconds["warmup"], draws(row, spec),
                      f"{estimate.warmup_examples:,} examples x {estimate.checkpoints} epochs, one per selection seed")
            if row.label not in warmups[warm]:
                warmups[warm].append(row.label)
            per_checkpoint = estimate.seconds["featurize_pool"] / estimate.checkpoints
            seeds_detail = f"{estimate.checkpoints} checkpoints x {draws(row, spec)} selection seed(s)"
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
                          estimate.checkpoints * draws(row, spec),
                          f"{stats.examples:,} examples; {seeds_detail}; once per target"
                          + ("; also writes the projected features" if settings.store_features
                             and features not in pool_features else ""))
                    phase(unique(f"LESS target features, {spec}", "for the exact score's queries"),
                          estimate.seconds["featurize_target"], draws(row, spec),
                          f"{len(target):,} examples x {estimate.checkpoints} checkpoints")
                    if settings.store_features:
                        pool_features.add(features)
                        target_features.add((features, spec))
            else:
                if features not in pool_features:
                    pool_features.add(features)
                    pool_passes.add(warm)
                    phase("LESS pool features, per checkpoint", per_checkpoint,
                          estimate.checkpoints * draws(row, spec),
                          f"{stats.examples:,} examples; {seeds_detail}; computed once, reused for every target")
                if (features, spec) not in target_features:
                    target_features.add((features, spec))
                    phase(unique(f"LESS target features, {spec}", "projected"), estimate.seconds["featurize_target"],
                          draws(row, spec),
                          f"{len(target):,} examples x {estimate.checkpoints} checkpoints")
            phase(f"LESS scoring, {row.label} on {spec}", estimate.seconds["score"], draws(row, spec))
    for warm, labels in warmups.items():
        if len(labels) > 1:
            notes.append(f"{', '.join(labels)} share one warmup")

    # ---- forward-only features (rds, ifd, embed; a diversity row's embeddings; a cascade's first stage): one
    #      pass over the pool, and one over each target for a targeted selector, kept in the datastore for every
    #      seed and row that shares them
    forward_rows: list[str] = []
    forward_stores: set[tuple[Any, ...]] = set()

    def forward_phase(key: tuple[Any, ...], name: str, seconds: float, detail: str) -> None:
        if key not in forward_stores:
            forward_stores.add(key)
            phase(name, seconds, 1, detail)

    def price_forward(selector: Any, *, targeted: bool) -> None:
        kind = selector.name
        settings = selector.settings
        if kind == "embed":
            encoder = encoder_shape(selector.encoder)
            if encoder is None:
                notes.append(f"embed's encoder {selector.encoder!r} is not a local directory: its passes are not "
                             "counted")
                return
            roles = [("pool", pool.examples)] + ([(spec, t.examples) for spec, t in targets.items()]
                                                 if targeted else [])
            for role, examples in roles:
                tokens = token_stats(examples, max_length=encoder.max_length).tokens  # each cut at the encoder's
                forward_phase(("embed", selector.encoder, role), f"embed sentence embeddings, {role}",
                              2 * encoder.body_params * tokens / (probe * FORWARD_UTILIZATION),
                              f"{len(examples):,} examples through a {encoder.body_params / 1e6:,.0f}M-parameter "
                              f"encoder, at most {encoder.max_length} word pieces each; once, then reused")
            return
        model_config, tokenizer = model(settings.model)
        shape = ModelShape.from_config(model_config, settings.lora)
        stats = token_stats(pool.examples, tokenizer=tokenizer, max_length=settings.max_length)
        forward_rate = probe * FORWARD_UTILIZATION  # a forward pass alone, as evaluation
        if kind == "ifd":  # the response with its instruction, then alone
            alone = response_only(stats)
            forward_phase(("ifd", settings.model, settings.max_length), "ifd losses, pool",
                          evaluation_seconds(stats, shape, flops_per_second=forward_rate)
                          + evaluation_seconds(alone, shape, flops_per_second=forward_rate),
                          f"{stats.examples:,} examples, with and without the instruction; once, then reused")
            return
        pooling = getattr(selector, "pooling", None)
        named = "" if pooling == "last" else f", {pooling} pooling"
        forward_phase(("rds", settings.model, settings.max_length, pooling, "pool"), f"rds hidden states, pool{named}",
                      evaluation_seconds(stats, shape, flops_per_second=forward_rate),
                      f"{stats.examples:,} examples; once, then reused for every target")
        for spec, target in (targets.items() if targeted else ()):
            target_stats = token_stats(target.examples, tokenizer=tokenizer, max_length=settings.max_length)
            forward_phase(("rds", settings.model, settings.max_length, pooling, spec),
                          f"rds hidden states, {spec}{named}",
                          evaluation_seconds(target_stats, shape, flops_per_second=forward_rate),
                          f"{target_stats.examples:,} examples")

    for row in rows:
        selector = selectors[row.label]
        if not selects(row):
            continue
        if getattr(selector, "name", None) in FORWARD_SELECTORS:
            price_forward(selector, targeted=True)
            forward_rows.append(row.label)
        prefilter = row_prefilter(row, config)
        if prefilter is not None and prefilter.selector in FORWARD_SELECTORS:
            price_forward(make_selector(prefilter.selector, **prefilter.options), targeted=prefilter.targeted)
        diversity = row_diversity(row, config)
        if diversity is not None:
            price_forward(make_selector("embed", settings=diversity.settings, encoder=diversity.encoder),
                          targeted=False)

    # ---- training: one run per selection and training seed; an untargeted selection serves every target
    model_config, tokenizer = model(config.train.model)
    train_shape = ModelShape.from_config(model_config, config.train.lora)
    train_stats = token_stats(pool.examples, tokenizer=tokenizer, max_length=config.train.max_length)
    # `full` rows train on every example
    whole = {r.label for r in rows if getattr(selectors[r.label], "whole_pool", False)}

    def runs_of(these: list[SelectorRow]) -> int:
        if pending is not None:
            labels = {r.label for r in these}
            return sum(step.step == "train" and step.row in labels for step in pending)
        return sum(len(config.seed_pairs(r)) * (len(targets) if per_target(r) else 1) for r in these)

    full = config.train.method == "full"
    each = training_seconds(scaled_stats(train_stats, config.k), train_shape, epochs=config.train.epochs,
                            flops_per_second=rate, full=full)
    longest = sorted(pool.examples, key=lambda e: len(e.response), reverse=True)[: config.k]
    most = training_seconds(token_stats(longest, tokenizer=tokenizer, max_length=config.train.max_length),
                            train_shape, epochs=config.train.epochs, flops_per_second=rate, full=full)
    phase("training, per run", each, runs_of([r for r in rows if r.label not in whole]),
          f"k={config.k:,} at the pool's mean length, {config.train.epochs} epochs; "
          f"the {config.k:,} longest responses would take {duration(most)} a run")
    if whole:
        phase("training on the whole pool, per run",
              training_seconds(train_stats, train_shape, epochs=config.train.epochs, flops_per_second=rate,
                               full=full), runs_of([r for r in rows if r.label in whole]),
              f"{', '.join(sorted(whole))}: all {len(pool):,} examples, {config.train.epochs} epochs")

    # ---- evaluation: every run on its target(s), and the untrained model once per target
    eval_config = EvalSettings(batch_size=config.eval_batch_size, max_length=config.eval_max_length)
    generate = {m for m in config.metrics if m in GENERATION_METRICS}
    cached_evaluations = 0
    for spec in targets:
        task = build_task(spec, mmlu_shots=eval_config.mmlu_shots)
        items = task.subset(config.limit, 0)
        stats = token_stats(_eval_examples(items), tokenizer=tokenizer, max_length=config.eval_max_length)
        reference_tokens = stats.response_tokens / max(stats.examples, 1)
        if eval_config.reuse_prefix:  # a subtask's shared prompt start runs once, not once per item
            stats = scaled_stats(stats, stats.examples, tokens=1.0 - _shared_share(items))
        answered = generate & {k for k, v in METRICS.items() if v in TASK_METRICS[task.kind]}
        new_tokens = round(expected_answer_tokens(task, eval_config, reference_tokens)) if answered else 0
        count = int(config.base) + sum(len(config.seed_pairs(r)) for r in rows)
        base = config.base
        if pending is not None:
            cached_evaluations += count
            count = sum(step.step == "evaluate" and step.target == spec for step in pending)
            cached_evaluations -= count
            base = any(step.row == BASE and step.target == spec for step in pending)
        seconds = evaluation_seconds(stats, train_shape, flops_per_second=probe * FORWARD_UTILIZATION,
                                     generated_tokens=new_tokens)
        budget, unstopped = eval_config.cot_max_new_tokens, ""
        if new_tokens and task.kind == "cot" and new_tokens < budget:
            # a model that has not learned the answer line (the untrained one, often) writes to the budget; a
            # `generation` answer's budget is its reference's length already, so it has no such worst case
            worst = evaluation_seconds(stats, train_shape, flops_per_second=probe * FORWARD_UTILIZATION,
                                       generated_tokens=budget)
            unstopped = f"; a model that never writes its answer line runs all {budget}: {duration(worst)} a run"
        phase(f"evaluation on {spec}, per run", seconds, count,
              f"{len(items):,} items, mean {stats.mean:,.0f} tokens run" + (", base included" if base else "")
              + (f", about {new_tokens} generated tokens each" if new_tokens else "") + unstopped)
    if generate:
        notes.append("generation runs one token per forward pass and is memory-bound: expect it slower than "
                     "its FLOPs say")
    others = [r.label for r in rows if r not in less_rows and r.label not in forward_rows and selects(r)]
    if pending is not None and (made := [r.label for r in rows if not selects(r)]):
        notes.append(f"selections already under {out}, reused: {', '.join(made)}")
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
    if pending is not None:
        context.append(f"already under {out}: {cached_evaluations:,} of this sitting's evaluations (and what they "
                       "need), not priced")
    return CompareEstimate(phases=phases, total_seconds=sum(p["seconds"] for p in phases), context=context,
                           notes=notes)
