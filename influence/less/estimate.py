"""Dry-run estimates of a LESS run: time on this device, disk for the datastore, peak memory.

Before spending GPU-days, a user wants to know roughly what a run costs. The estimate counts
work, not wall time: floating-point operations divided by the rate a short matmul probe
reaches on this device, and bytes from the pool size, the projection dims and the number of
checkpoints. It ignores padding, data loading, tokenisation, memory-bound steps and how far
the device falls short of its matmul rate on small kernels, so it is rough: read it as an
order of magnitude (within a factor of 2 or 3), not a schedule.

The FLOP count per token is the usual 6 x parameters of full fine-tuning, adjusted for what
LESS runs: the base model is frozen under LoRA, so its backward pass forms input gradients
only (2 + 2 = 4 per frozen parameter; 6 per LoRA parameter); embeddings are lookups, and the
output layer runs only where a response token is predicted (`response_logits`); attention
adds 12 x layers x hidden x sequence length (PaLM's count).

    shape = ModelShape.from_model(loaded.model, settings.lora)
    estimate = estimate_less(pool.examples, target.examples, settings, shape=shape, tokenizer=loaded.tokenizer)
    print("\\n".join(estimate.lines()))
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from influence.data.example import Example
from influence.data.formatting import encode_example, tulu_text
from influence.errors import ConfigError
from influence.features.compute import DEFAULT_MAX_BATCH_TOKENS, query_memory_bytes
from influence.features.encoder import default_encoder_path
from influence.features.projection import default_projector_name
from influence.index import INDEX_KINDS, TRAIN_BYTES
from influence.less.settings import LessSettings
from influence.lora import LoraSettings
from influence.scoring import DEFAULT_MEMORY_BYTES

FLOPS_PER_FROZEN_PARAMETER = 4     # per token: forward 2 + backward 2 (input gradients only)
FLOPS_PER_TRAINED_PARAMETER = 6    # per token: forward 2 + backward 4 (input and weight gradients)
CHARS_PER_TOKEN = 4                # the usual English rate of BPE tokenizers, when none is given
# the Tulu format's tags around a prompt and its response (a model without a chat template)
TEMPLATE_CHARS = len(tulu_text([{"role": "user", "content": ""}, {"role": "assistant", "content": ""}], ""))
LENGTH_SAMPLE = 2000               # examples tokenised to measure lengths (totals are scaled up)
ADAM_TRANSFORM_FLOPS = 10          # per LoRA parameter and example: the Adam preconditioning of a pool gradient
# Share of the probe's matmul rate a LoRA forward/backward reaches: 0.55 measured for SmolLM2-135M
# (batches of 4 Alpaca examples, fp32, one CPU thread); small models and short sequences reach less.
MATMUL_UTILIZATION = 0.5
# Share of it a forward pass alone reaches (evaluation): 1.28 measured for SmolLM2-135M on 4 x 512 tokens
# (fp32, two busy CPU cores; the probe's square matmul is no faster than the model's long, thin ones).
FORWARD_UTILIZATION = 1.0


# ------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class TokenStats:
    """Token counts of a set of examples, each cut to max_length, measured or approximated."""

    examples: int
    tokens: int            # total, after cutting
    response_tokens: int   # of which response (where logits are computed)
    squared_tokens: float  # sum of squared lengths: attention costs grow with it
    longest: int           # after cutting
    truncated: int         # examples longer than max_length
    method: str            # how lengths were found, in words

    @property
    def mean(self) -> float:
        return self.tokens / self.examples if self.examples else 0.0

    def scaled(self, examples: int) -> "TokenStats":
        """The same lengths for `examples` examples: a cascade's shortlist of N, priced before it is drawn."""
        share = examples / self.examples if self.examples else 0.0
        return replace(self, examples=int(examples), tokens=int(round(self.tokens * share)),
                       response_tokens=int(round(self.response_tokens * share)),
                       squared_tokens=self.squared_tokens * share, truncated=int(round(self.truncated * share)),
                       method=f"{self.method}; scaled to a shortlist of {examples:,}")


def _approximate_lengths(example: Example) -> tuple[int, int]:
    """(all tokens, response tokens) by characters / 4."""
    chat = example.chat()
    response = math.ceil(len(chat[-1]["content"]) / CHARS_PER_TOKEN) + 1  # and an end-of-turn token
    prompt = math.ceil((sum(len(turn["content"]) for turn in chat[:-1]) + TEMPLATE_CHARS) / CHARS_PER_TOKEN)
    return prompt + response, response


def token_stats(examples: Sequence[Example], *, tokenizer: Any = None, max_length: int = 2048,
                sample: int = LENGTH_SAMPLE, seed: int = 0) -> TokenStats:
    """Token lengths as featurization sees them (prompt template + response, cut to `max_length`).

    With a tokenizer, a seeded sample of `sample` examples is tokenised and the totals scaled to
    the whole set (tokenising a million examples would itself take minutes); without one, every
    example's characters / 4 (plus the template) stand in for its tokens.
    """
    n = len(examples)
    if n == 0:
        return TokenStats(0, 0, 0, 0.0, 0, 0, "no examples")
    if tokenizer is None:
        pairs = [_approximate_lengths(e) for e in examples]
        scale, method = 1.0, f"characters / {CHARS_PER_TOKEN} (no tokenizer given)"
    else:
        picked = range(n) if n <= sample else np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
        encoded = [encode_example(examples[int(i)], tokenizer, max_length=1 << 30) for i in picked]
        pairs = [(len(e.input_ids), e.response_tokens) for e in encoded]
        scale = n / len(pairs)
        method = "tokenizer" if n <= sample else f"tokenizer, {len(pairs):,}-example sample"
    lengths, responses = np.array(pairs, dtype=np.int64).reshape(-1, 2).T
    cut = np.minimum(lengths, max_length)
    response_cut = np.clip(responses - (lengths - cut), 0, None)  # a cut takes the end: the response first
    return TokenStats(examples=n, tokens=int(round(cut.sum() * scale)),
                      response_tokens=int(round(response_cut.sum() * scale)),
                      squared_tokens=float((cut.astype(np.float64) ** 2).sum() * scale), longest=int(cut.max()),
                      truncated=int(round((lengths > max_length).sum() * scale)), method=method)


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model: sizes, not weights."""

    params: int          # every parameter of the base model
    lora_params: int     # parameters LoRA adds (and featurization differentiates)
    layers: int
    hidden: int
    heads: int
    vocab: int
    body_params: int = 0  # params less the input embedding and output layer: the ones every token multiplies

    def __post_init__(self) -> None:
        if not self.body_params:
            object.__setattr__(self, "body_params", max(0, self.params - 2 * self.vocab * self.hidden))

    @classmethod
    def from_model(cls, model: Any, lora: LoraSettings) -> "ModelShape":
        """Count a loaded model (or one built on the "meta" device, which holds no weights).

        LoRA parameters are counted as peft would add them: r x (in + out) for every linear layer
        named like one of `lora.target_modules`. A model already wrapped with LoRA is counted
        without its adapters.

        Raises:
            ConfigError: no layer matches the LoRA target modules.
        """
        params = lora_params = 0
        for name, parameter in model.named_parameters():  # tied weights are listed once
            if "lora_" not in name:
                params += parameter.numel()
        table = model.get_input_embeddings().weight
        output = model.get_output_embeddings()
        untied = output is not None and output.weight is not table
        body = params - table.numel() - (output.weight.numel() if untied else 0)
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] in lora.target_modules and hasattr(module, "in_features"):
                lora_params += lora.r * (int(module.in_features) + int(module.out_features))
        if not lora_params:
            raise ConfigError(f"no layer of the model matches the LoRA target modules "
                              f"{', '.join(lora.target_modules)}; set LoraSettings.target_modules to this model's "
                              f"attention projection names")
        config = model.config
        return cls(params=params, lora_params=lora_params, layers=int(config.num_hidden_layers),
                   hidden=int(config.hidden_size), heads=int(config.num_attention_heads), vocab=int(config.vocab_size),
                   body_params=body)

    @classmethod
    def from_config(cls, config: Any, lora: LoraSettings) -> "ModelShape":
        """Build the model from a transformers config on the "meta" device (no memory, no download) and count it."""
        # heavy: transformers, imported on use, not at start-up
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return cls.from_model(model, lora)


def measure_flops(device: str = "cpu", *, seconds: float = 0.25, dtype: Any = None) -> float:
    """Floating-point operations per second of a square matmul on `device`, timed for about `seconds`.

    The dtype is the one a run uses there (float32 on CPU, bfloat16 on CUDA, as `load_model`);
    the probe is a best case for the device: real training reaches a fraction of it.
    """
    dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
    n = 2048 if str(device).startswith("cuda") else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def sync() -> None:
        if str(device).startswith("cuda"):
            torch.cuda.synchronize(device)

    torch.matmul(a, b)  # warm-up: kernels chosen, threads started
    sync()
    rates, deadline = [], time.perf_counter() + seconds
    while len(rates) < 3 or time.perf_counter() < deadline:
        started = time.perf_counter()
        for _ in range(4):
            torch.matmul(a, b)
        sync()
        rates.append(4 * 2 * n ** 3 / max(time.perf_counter() - started, 1e-9))
        if len(rates) >= 200:
            break
    return float(np.median(rates))


@dataclass(frozen=True)
class MachineLoad:
    """How busy the machine's CPUs were while the matmul probe ran: the probe's rate, and with it
    every time of the estimate, holds only while the machine stays this busy."""

    cpus: int
    load_average: float | None   # 1-minute load average when the probe started
    others_busy: float | None    # CPUs' worth of time other processes used during the probe (Linux /proc/stat)

    @property
    def busy(self) -> bool:
        """Other processes took at least a quarter of a CPU, or the load average exceeded the CPUs."""
        if self.others_busy is not None:
            return self.others_busy >= 0.25
        return self.load_average is not None and self.load_average > self.cpus

    def describe(self) -> str:
        parts = []
        if self.others_busy is not None:
            parts.append(f"other processes used {self.others_busy:.1f} of {self.cpus} CPUs")
        if self.load_average is not None:
            parts.append(f"load average {self.load_average:.2f} on {self.cpus} CPUs")
        return ", ".join(parts) or f"{self.cpus} CPUs, load unknown"

    @classmethod
    def unknown(cls) -> "MachineLoad":
        return cls(cpus=os.cpu_count() or 1, load_average=None, others_busy=None)


def _cpu_busy_seconds() -> float | None:
    """Seconds all CPUs have spent busy since boot (Linux), None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)   # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def calibrate(device: str = "cpu", *, seconds: float = 0.5) -> tuple[float, MachineLoad]:
    """`measure_flops` on `device`, and how busy the machine was meanwhile (`MachineLoad`).

    Others' share is the CPUs' busy time during the probe less this process's own CPU time.
    """
    try:
        load_average: float | None = os.getloadavg()[0]
    except (OSError, AttributeError):
        load_average = None
    busy, own, wall = _cpu_busy_seconds(), time.process_time(), time.perf_counter()
    rate = measure_flops(device, seconds=seconds)
    after = _cpu_busy_seconds()
    others = None
    if busy is not None and after is not None:
        elapsed = max(time.perf_counter() - wall, 1e-9)
        others = max(0.0, ((after - busy) - (time.process_time() - own)) / elapsed)
    return rate, MachineLoad(cpus=os.cpu_count() or 1, load_average=load_average, others_busy=others)


# ------------------------------------------------------------------------------------ the estimate
@dataclass
class LessEstimate:
    """A rough cost of one LESS run; `lines()` prints it for the terminal."""

    pool: TokenStats
    target: TokenStats
    shape: ModelShape
    lora: dict[str, Any]
    checkpoints: int                 # featurized: a first epoch of one step, at learning rate 0, is skipped
    dims: int
    projector: str
    device: str
    flops_per_second: float          # the probe's matmul rate
    utilization: float               # share of it the run is assumed to reach
    warmup_examples: int
    warmup_epochs: int
    flops: dict[str, float]          # warmup, featurize_pool, featurize_target, score
    seconds: dict[str, float]        # the same keys, and total
    disk_bytes: dict[str, int]       # pool_features, target_features, checkpoints, total
    memory_bytes: dict[str, int]     # warmup, featurize, score: peak of each
    index_kind: str                  # the index scoring builds, "exact" (chunked, no index) or "unprojected"
    notes: list[str] = field(default_factory=list)
    load: MachineLoad | None = None  # how busy the machine was while the probe ran; None: the rate was given
    subtasks: int = 1
    query_bytes: int = 0             # unprojected: the subtask queries held during a pool pass
    passes: int = 1                  # unprojected: pool passes (subtask groups that fit the memory)

    @property
    def peak_memory_bytes(self) -> int:
        return max(self.memory_bytes.values())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["peak_memory_bytes"] = self.peak_memory_bytes
        return out

    def lines(self) -> list[str]:
        """What a dry run prints: one line per item, the roughness said first."""
        pool, target, s = self.pool, self.target, self.seconds
        peak_phase = max(self.memory_bytes, key=self.memory_bytes.get)
        lines = [
            "dry run: a rough estimate (FLOPs / a matmul probe: expect a factor of 2-3 either way); "
            "nothing was computed or written",
            f"  pool: {pool.examples:,} examples, {_count(pool.tokens)} tokens (mean {pool.mean:,.0f}, longest "
            f"{pool.longest:,}, {pool.truncated:,} cut; {pool.method})",
            f"  target: {target.examples:,} examples, {_count(target.tokens)} tokens",
            f"  model: {_count(self.shape.params)} parameters; LoRA r={self.lora['r']} on "
            f"{', '.join(self.lora['target_modules'])}: {_count(self.shape.lora_params)} parameters",
            f"  features: {self.checkpoints} checkpoints x {self.dims:,} dims ({self.projector} projection)"
            if self.disk_bytes["target_features"] or self.index_kind != "unprojected" else
            f"  features: none projected or stored ({self.checkpoints} checkpoints; --store-features adds "
            f"{self.dims:,}-dim ones from the same pass)",
            f"  device: {self.device}, {_count(self.flops_per_second, 'FLOP/s')} by a matmul probe"
            + (f" ({self.load.describe()} meanwhile)" if self.load is not None else " (given)")
            + f", of which {self.utilization:.0%} assumed reached",
            f"  warmup: {self.warmup_examples:,} examples x {self.warmup_epochs} epochs, "
            f"{_count(self.flops['warmup'], 'FLOP')}, {_duration(s['warmup'])}",
            f"  featurize: pool x {self.checkpoints} checkpoints {_duration(s['featurize_pool'])}, target x "
            f"{self.checkpoints} {_duration(s['featurize_target'])}",
            f"  score ({_scoring_words(self.index_kind)}): {_duration(s['score'])}",
            f"  total time: {_duration(s['total'])}",
            f"  disk: {_bytes(self.disk_bytes['total'])} (pool features {_bytes(self.disk_bytes['pool_features'])}, "
            f"target features {_bytes(self.disk_bytes['target_features'])}, warmup checkpoints "
            f"{_bytes(self.disk_bytes['checkpoints'])})",
            f"  peak memory: {_bytes(self.peak_memory_bytes)} in {peak_phase} (warmup "
            f"{_bytes(self.memory_bytes['warmup'])}, featurize {_bytes(self.memory_bytes['featurize'])}, score "
            f"{_bytes(self.memory_bytes['score'])})",
        ]
        if self.index_kind == "unprojected":
            lines.insert(5, f"  unprojected: {self.subtasks} subtask queries x {_count(self.shape.lora_params)} LoRA "
                            f"parameters x 4 B = {_bytes(self.subtasks * self.shape.lora_params * 4)} held during the "
                            f"pool pass ({self.passes} pass{'es' if self.passes > 1 else ''} of the pool; the queries "
                            f"of a pass must fit in half the memory free)")
        return lines + [f"  note: {note}" for note in self.notes]


def _forward_backward_flops(stats: TokenStats, shape: ModelShape) -> float:
    """A LoRA forward and backward over `stats`' tokens (see the module docstring)."""
    per_token = FLOPS_PER_FROZEN_PARAMETER * shape.body_params + FLOPS_PER_TRAINED_PARAMETER * shape.lora_params
    output_layer = FLOPS_PER_FROZEN_PARAMETER * shape.vocab * shape.hidden * stats.response_tokens
    attention = 12 * shape.layers * shape.hidden * stats.squared_tokens
    return per_token * stats.tokens + output_layer + attention


def _projection_flops(projector: str, shape: ModelShape, dims: int, sparsity: int = 1) -> float:
    """Per example: sjlt adds each gradient entry to `sparsity` buckets; TRAK multiplies by a dense matrix."""
    if projector == "sjlt":
        return 2.0 * sparsity * shape.lora_params
    return 2.0 * shape.lora_params * dims


def _activation_bytes(shape: ModelShape, batch: int, length: int, response_share: float, width: int) -> int:
    """Activations one forward saves for its backward: 34 bytes x hidden per token and layer at 16 bits
    (Korthikanti et al. 2022, scaled to `width`; no L x L attention matrix, as SDPA keeps none), plus
    float32 logits and their gradient at the response positions."""
    per_layer = batch * length * shape.hidden * 17 * width
    logits = batch * max(1, round(length * response_share)) * shape.vocab * 4 * 2
    return int(shape.layers * per_layer + logits)


def _index_bytes(kind: str, n: int, dim: int) -> int:
    if kind == "flat":
        return n * dim * 4
    if kind == "ivf-flat":
        return n * (dim * 4 + 8) + TRAIN_BYTES
    code = max(1, dim // 16)  # influence.index.default_pq_m: about one byte per 16 dims
    return n * (code + 8) + 2 * TRAIN_BYTES  # the training sample and its residuals


def estimate_less(pool: Sequence[Example] | TokenStats, target: Sequence[Example] | TokenStats,
                  settings: LessSettings, *, shape: ModelShape, tokenizer: Any = None, device: str | None = None,
                  flops_per_second: float | None = None, utilization: float = MATMUL_UTILIZATION,
                  index_kind: str | None = None, subtasks: int | None = None, sample: int = LENGTH_SAMPLE,
                  memory_budget: int | None = None) -> LessEstimate:
    """Estimate what a LESS run with `settings` costs: time on `device`, disk, peak memory.

    Args:
        pool, target: the examples (or their `token_stats`).
        settings: the run's settings (LoRA, dims, warmup fraction and epochs, batch sizes, max length).
        shape: the model's sizes (`ModelShape.from_model` or `.from_config`).
        tokenizer: the model's tokenizer to count tokens; None approximates by characters / 4.
        device: where the run would go (default: settings.device, else cuda when present, else cpu).
        flops_per_second: the device's matmul rate; None measures it with `measure_flops` (a fraction of a second).
        utilization: the share of that rate the run reaches (`MATMUL_UTILIZATION`).
        index_kind: the FAISS index scoring will build ("flat", "ivf-flat", "ivf-pq").
        subtasks: number of target subtasks (one search each); default: counted from the target.
        sample: examples tokenised to measure lengths.

    Returns:
        A `LessEstimate`; its `lines()` are what `--dry-run` prints.

    Raises:
        ConfigError: an unknown index kind or a non-positive rate.
    """
    index_kind = settings.index if index_kind is None else index_kind
    if index_kind not in INDEX_KINDS:
        raise ConfigError(f"unknown index kind {index_kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    if subtasks is None:
        subtasks = len({e.subtask for e in target}) if not isinstance(target, TokenStats) else 1
    pool_stats = pool if isinstance(pool, TokenStats) else token_stats(
        pool, tokenizer=tokenizer, max_length=settings.max_length, sample=sample, seed=settings.seed)
    target_stats = target if isinstance(target, TokenStats) else token_stats(
        target, tokenizer=tokenizer, max_length=settings.max_length, sample=sample, seed=settings.seed)
    device = device or settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    load = None
    if flops_per_second is None:
        flops_per_second, load = calibrate(device)
    if not flops_per_second > 0:
        raise ConfigError(f"flops_per_second must be positive, got {flops_per_second}")
    if not 0 < utilization <= 1:
        raise ConfigError(f"utilization must be in (0, 1], got {utilization}")
    projector = settings.projector or default_projector_name(device)
    epochs, dims, n, t = settings.warmup_epochs, settings.dims, pool_stats.examples, target_stats.examples
    width = 2 if device.startswith("cuda") else 4  # bf16 on CUDA, fp32 on CPU, as load_model loads

    warmup_examples = max(1, round(settings.warmup_fraction * n)) if n else 0
    warmup_fraction = warmup_examples / n if n else 0.0
    # The schedule's first step is at learning rate 0: an epoch of that one step is not featurized.
    first_epoch_skipped = epochs > 1 and 0 < warmup_examples <= settings.warmup_batch_size
    checkpoints = epochs - 1 if first_epoch_skipped else epochs
    projection = _projection_flops(projector, shape, dims)
    unprojected = settings.scoring == "unprojected" and t > 0
    store = not unprojected or settings.store_features
    budget = available_memory() // 2 if memory_budget is None else memory_budget
    passes, query_bytes = 1, 0
    if unprojected:
        groups = subtask_groups([str(s) for s in range(subtasks)], shape.lora_params, budget)
        passes, query_bytes = len(groups), query_memory_bytes(len(groups[0]), shape.lora_params)
    # the target pass that projects also forms the queries, unless they come in several groups
    target_passes = 1 if not unprojected else passes if not store else 1 if passes == 1 else 1 + passes
    pool_pass = _forward_backward_flops(pool_stats, shape) + n * ADAM_TRANSFORM_FLOPS * shape.lora_params
    flops = {
        "warmup": warmup_fraction * epochs * _forward_backward_flops(pool_stats, shape),
        "featurize_pool": checkpoints * (passes * pool_pass + n * (projection if store else 0.0)
                                         + (2.0 * n * subtasks * shape.lora_params if unprojected else 0.0)),
        "featurize_target": checkpoints * (_forward_backward_flops(target_stats, shape) * target_passes
                                           + t * projection * store),
        "score": (2.0 * n * dims * checkpoints * (subtasks if settings.scoring == "faiss" else t)
                  if not unprojected else 2.0 * n * subtasks * checkpoints),
    }
    seconds = {key: value / (flops_per_second * utilization) for key, value in flops.items()}
    seconds["total"] = sum(seconds.values())

    row = dims * 2  # float16 features
    disk = {"pool_features": (n * row * checkpoints if store else 0)
            + (n * subtasks * 4 * checkpoints if unprojected else 0),  # float32 cosines per subtask
            "target_features": t * row * checkpoints * store,
            "checkpoints": shape.lora_params * 4 * 3 * epochs}  # adapter + two Adam moments, float32
    disk["total"] = sum(disk.values())

    weights = shape.params * width
    longest = max(pool_stats.longest, target_stats.longest, 1)
    warmup_state = shape.lora_params * 4 * 4  # float32 adapter, gradient and two Adam moments
    featurize_tokens = max(min(settings.batch_size * longest, DEFAULT_MAX_BATCH_TOKENS), longest)
    featurize_batch = max(1, featurize_tokens // longest)
    if projector == "sjlt":
        projector_bytes = shape.lora_params * 12  # bucket index (int64) and signed weight (float32) per entry
    else:
        projector_bytes = shape.lora_params * 128 * 4  # one 128-column block of the dense matrix
    share = pool_stats.response_tokens / pool_stats.tokens if pool_stats.tokens else 1.0
    memory = {
        "warmup": weights + warmup_state + _activation_bytes(shape, settings.warmup_micro_batch_size, longest, share,
                                                             width),
        "featurize": weights + warmup_state + projector_bytes * store + featurize_batch * shape.lora_params * 4 * 2
        + query_bytes + _activation_bytes(shape, featurize_batch, longest, share, width),
        "score": (_index_bytes(index_kind, n, dims * checkpoints) if settings.scoring == "faiss"
                  else DEFAULT_MEMORY_BYTES) + (t * dims * checkpoints * 8 if not unprojected else 0),
    }
    notes = []
    if first_epoch_skipped:
        notes.append(f"the warmup's first epoch is one step at learning rate 0 ({warmup_examples:,} examples, "
                     f"batch {settings.warmup_batch_size}): that checkpoint weighs 0 and is not featurized")
    if load is not None and load.busy and not device.startswith("cuda"):
        notes.append(f"the machine was busy while the probe ran ({load.describe()}): every time above assumes it "
                     "stays that busy; on a quiet machine expect them shorter, by up to the share of the CPUs "
                     "others took")
    if pool_stats.truncated:
        notes.append(f"{pool_stats.truncated:,} pool examples are longer than max_length={settings.max_length:,} "
                     "and will be cut")
    if unprojected:
        index_kind = "unprojected"
        if passes > 1:
            notes.append(f"the {subtasks} subtask queries ({_bytes(query_memory_bytes(subtasks, shape.lora_params))}) "
                         f"exceed half the memory free: the pool is passed {passes} times")
    elif settings.scoring == "faiss" and index_kind == "flat" and memory["score"] > budget:
        notes.append(f"a flat index would need {memory['score'] / 1e9:.1f} GB, more than half the memory available "
                     f"now: scoring will fall back to exact chunked scoring (--index ivf-pq needs a fraction)")
        memory["score"] = DEFAULT_MEMORY_BYTES + t * dims * checkpoints * 8
        index_kind = "exact"
    elif settings.scoring == "exact":
        index_kind = "exact"
    return LessEstimate(pool=pool_stats, target=target_stats, shape=shape, lora=settings.lora.to_dict(),
                        checkpoints=checkpoints, dims=dims, projector=projector, device=device,
                        flops_per_second=float(flops_per_second), utilization=float(utilization),
                        warmup_examples=warmup_examples, warmup_epochs=epochs, flops=flops,
                        seconds=seconds, disk_bytes=disk, memory_bytes={k: int(v) for k, v in memory.items()},
                        index_kind=index_kind, notes=notes, load=load, subtasks=subtasks, query_bytes=query_bytes,
                        passes=passes)


# ------------------------------------------------------------------------------------ training and evaluation
def scaled_stats(stats: TokenStats, examples: int, *, tokens: float = 1.0) -> TokenStats:
    """`examples` examples of `stats`' mean shape (a selection of k from a pool whose picks are not known
    yet), each running a `tokens` share of its tokens (the rest cached); attention still spans them all."""
    share = examples / stats.examples if stats.examples else 0.0
    return TokenStats(examples=examples, tokens=round(stats.tokens * share * tokens),
                      response_tokens=round(stats.response_tokens * share), squared_tokens=stats.squared_tokens * share,
                      longest=stats.longest, truncated=round(stats.truncated * share), method=stats.method)


def training_seconds(stats: TokenStats, shape: ModelShape, *, epochs: int, flops_per_second: float,
                     full: bool = False) -> float:
    """Seconds to train on `stats`' examples for `epochs` passes: LoRA (frozen base) or every weight (`full`),
    at `flops_per_second` reached (the probe's rate times the utilization)."""
    if full:
        shape = ModelShape(params=shape.params, lora_params=shape.body_params, layers=shape.layers,
                           hidden=shape.hidden, heads=shape.heads, vocab=shape.vocab, body_params=1)
    return epochs * _forward_backward_flops(stats, shape) / flops_per_second


def evaluation_seconds(stats: TokenStats, shape: ModelShape, *, flops_per_second: float,
                       generated_tokens: int = 0) -> float:
    """Seconds to score `stats`' items (one forward over prompt and reference: the target loss and option
    log-likelihoods), plus greedy generation of `generated_tokens` per item with a KV cache.

    Generation is one token per forward and memory-bound on most devices: its FLOPs undercount it.
    """
    forward = (2 * shape.body_params * stats.tokens + 2 * shape.vocab * shape.hidden * stats.response_tokens
               + 4 * shape.layers * shape.hidden * stats.squared_tokens)
    per_token = 2 * shape.body_params + 2 * shape.vocab * shape.hidden + 4 * shape.layers * shape.hidden * stats.mean
    return (forward + stats.examples * generated_tokens * per_token) / flops_per_second


def response_only(stats: TokenStats) -> TokenStats:
    """The same examples run with their responses alone (IFD's second pass): the prompt's tokens dropped."""
    share = stats.response_tokens / stats.tokens if stats.tokens else 0.0
    return replace(stats, tokens=stats.response_tokens, squared_tokens=stats.squared_tokens * share * share,
                   longest=min(stats.longest, stats.response_tokens), method=f"{stats.method}; responses alone")


@dataclass(frozen=True)
class EncoderShape:
    """What the estimate needs of a sentence encoder: the parameters every word piece multiplies and its cut."""

    body_params: int
    max_length: int


def encoder_shape(spec: str | None) -> EncoderShape | None:
    """A sentence-transformers directory's shape from its config files (None: the bundled encoder); None for a
    hub id, whose files are not read for a dry run."""
    path = default_encoder_path() if spec is None else Path(spec)
    config = path / "config.json"
    if not config.is_file():
        return None
    model = json.loads(config.read_text())
    cut = path / "sentence_bert_config.json"
    max_length = json.loads(cut.read_text()).get("max_seq_length") if cut.is_file() else None
    layers, hidden = int(model["num_hidden_layers"]), int(model["hidden_size"])
    intermediate = int(model.get("intermediate_size", 4 * hidden))
    return EncoderShape(body_params=layers * (4 * hidden * hidden + 2 * hidden * intermediate),
                        max_length=int(max_length or model.get("max_position_embeddings", 512)))


# ------------------------------------------------------------------------------------ formatting
def _count(value: float, unit: str = "") -> str:
    """1.2 M and 6.7 B for plain counts; 3.4 TFLOP, 1.2 GFLOP/s, 512 FLOP with a unit."""
    for prefix, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:,.1f} {'B' if prefix == 'G' and not unit else prefix}{unit}"
    return f"{value:,.0f} {unit}".rstrip()


def _scoring_words(index_kind: str) -> str:
    if index_kind == "exact":
        return "exact, chunked"
    if index_kind == "unprojected":
        return "unprojected, from the cosines the pool pass took"
    return index_kind + " index"


def _bytes(value: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:,.1f} {unit}"
    return f"{value:,.0f} B"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 90 * 60:
        return f"about {seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"about {seconds / 3600:.1f} h"
    return f"about {seconds / 86400:.1f} days"


def subtask_groups(names: Sequence[str], lora_params: int, budget_bytes: int) -> list[list[str]]:
    """Subtasks split into as few groups as fit `budget_bytes` of queries each: one pool pass per group.

    Raises:
        ConfigError: a single subtask's query does not fit.
    """
    per_pass = budget_bytes // query_memory_bytes(1, lora_params)
    if per_pass < 1:
        raise ConfigError(f"the unprojected LESS score holds one {lora_params:,}-parameter float32 vector per target "
                          f"subtask ({query_memory_bytes(1, lora_params) / 1e9:.2f} GB), more than the "
                          f"{budget_bytes / 1e9:.2f} GB it may use; use --scoring faiss (projected features) or a "
                          "smaller LoRA rank")
    names = list(names)
    passes = -(-len(names) // per_pass)
    size = -(-len(names) // passes)  # balanced groups
    return [names[i:i + size] for i in range(0, len(names), size)]


duration = _duration  # public: other dry runs print their times the same way


def available_memory() -> int:
    """Bytes of memory available now (Linux MemAvailable; physical memory elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62
