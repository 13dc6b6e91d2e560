"""Featurization math: examples -> L2-normalised projected per-example gradient features,
and exact cosines of the unprojected gradients with fixed query vectors.

No file-system policy here: `featurize` is a generator of batches, so the orchestration
layer decides where each batch is written, and resumes by passing the example indices
that are not done yet. Examples are processed shortest first to cut padding; because the
per-example gradients are exact, the features do not depend on batch size or order
(beyond float rounding).

The unprojected LESS score needs, per pool example, only the cosines of its full-dimension
gradient with one query per target subtask (`subtask_queries`: the mean of the subtask's
L2-normalised target gradients). `featurize(..., queries=Q)` takes them inside the backward,
parameter block by parameter block (a [B, n] @ [n, S] product and the block's squared
norms), so no [B, dim] gradient is ever formed and the projection, when also asked for,
comes from the same pass.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch

from influence.data.example import Example
from influence.data.formatting import IGNORE_INDEX, collate, encode_example
from influence.errors import ConfigError, DataError
from influence.features.grads import AdamMoments, LoraGradients
from influence.features.projection import Projector, StreamingProjector, dim_slices

DEFAULT_MAX_BATCH_TOKENS = 1024  # padded tokens per featurization batch: bounds activation memory


@dataclass
class FeaturizeStats:
    """Counts and timings of one featurization, filled in as batches are produced."""

    examples: int = 0          # examples asked for
    done: int = 0              # examples featurized so far
    truncated: int = 0         # examples cut at max_length
    empty: int = 0             # examples with no response token left (zero features)
    tokens: int = 0            # tokens through the model (padding excluded)
    gradient_seconds: float = 0.0
    projection_seconds: float = 0.0

    def add(self, other: "FeaturizeStats") -> "FeaturizeStats":
        """Add `other`'s counts and timings to these (a total over checkpoints); returns self."""
        for item in fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def counts(self) -> dict[str, int]:
        """The counts without the timings: what a forward-only featurization records, as it
        computes no gradient and projects nothing."""
        return {key: value for key, value in asdict(self).items() if not key.endswith("_seconds")}

    def __add__(self, other: "FeaturizeStats") -> "FeaturizeStats":
        """Every count and timing summed: the totals of two featurizations, as a new one."""
        return FeaturizeStats(**self.to_dict()).add(other)


@dataclass(frozen=True)
class FeatureBatch:
    """Features of some examples: `features[i]` belongs to `examples[indices[i]]`.

    `features` is float32 [b, sum(dims)], one block per projection dim (see `dim_slices`),
    each block L2-normalised per row; an example without response tokens has zeros.
    None when no projector was given. `cosines` (with queries) is float64 [b, S]: the
    cosine of each example's unprojected gradient with each query (0 for a zero gradient).
    """

    indices: list[int]
    features: torch.Tensor | None
    cosines: torch.Tensor | None = None


def normalize_blocks(features: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """L2-normalise each row of each dim block; all-zero rows stay zero."""
    out = torch.empty_like(features)
    for columns in dim_slices(dims).values():
        block = features[:, columns]
        out[:, columns] = block / block.norm(dim=1, keepdim=True).clamp(min=1e-30)
    return out


def length_batches(lengths: dict[int, int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Example indices grouped into batches, shortest first (ties by index), so padding is small.

    A batch holds at most `batch_size` examples and, when `max_tokens` is set, at most
    `max_tokens` padded tokens (an example longer than that goes alone): activation memory
    grows with the padded token count, not with the number of examples.
    """
    order = sorted(lengths, key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted ascending, so the padded width of `current + [i]` is lengths[i].
        if current and (len(current) == batch_size or
                        (max_tokens is not None and (len(current) + 1) * lengths[i] > max_tokens)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class _QueryDots:
    """Accumulates, block by block, each example's inner products with the queries and its squared norm."""

    def __init__(self, queries: torch.Tensor, batch: int):
        self.queries = queries
        self.dots = torch.zeros(batch, queries.shape[0], dtype=torch.float64, device=queries.device)
        self.squares = torch.zeros(batch, dtype=torch.float64, device=queries.device)

    def add(self, block: torch.Tensor, offset: int) -> None:
        block = block.to(self.queries.device, torch.float32)
        self.dots += (block @ self.queries[:, offset:offset + block.shape[1]].T).double()
        self.squares += block.double().square().sum(dim=1)

    def cosines(self) -> torch.Tensor:
        """[B, S] float64 on the CPU; 0 where the gradient is zero."""
        return (self.dots / self.squares.sqrt().clamp(min=1e-300)[:, None]).cpu()


def _encode(examples: Sequence[Example], tokenizer: Any, wanted: list[int], max_length: int,
            stats: FeaturizeStats) -> tuple[dict[int, Any], int]:
    """Encoded examples by index (counted into `stats`) and the pad id."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ConfigError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
    if wanted and not 0 <= wanted[0] <= wanted[-1] < len(examples):
        raise ConfigError(f"example indices must lie in [0, {len(examples)}), got {wanted[0]}..{wanted[-1]}")
    encoded = {i: encode_example(examples[i], tokenizer, max_length) for i in wanted}
    stats.examples += len(encoded)
    stats.truncated += sum(e.truncated for e in encoded.values())
    stats.empty += sum(all(label == IGNORE_INDEX for label in e.labels[1:]) for e in encoded.values())
    return encoded, pad_id


def _check_sizes(batch_size: int, max_batch_tokens: int | None, max_length: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if max_batch_tokens is not None and max_batch_tokens < 1:
        raise ConfigError(f"max batch tokens must be positive (or None for no cap), got {max_batch_tokens}")
    if max_length < 2:
        raise ConfigError(f"max length must be at least 2 tokens, got {max_length}")


def featurize(model: Any, tokenizer: Any, examples: Sequence[Example], projector: Projector | None, *,
              grad_type: str = "sgd", moments: AdamMoments | None = None, batch_size: int = 8,
              max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS, max_length: int = 2048,
              indices: Iterable[int] | None = None, stats: FeaturizeStats | None = None,
              queries: torch.Tensor | None = None,
              on_gradients: Callable[[list[int], torch.Tensor], None] | None = None) -> Iterator[FeatureBatch]:
    """Yield projected, normalised per-example LoRA gradient features (and/or exact query cosines), batch by batch.

    Args:
        model: a peft LoRA-wrapped causal LM (the checkpoint's adapter loaded).
        tokenizer: its tokenizer (padding uses `pad_token_id`, else `eos_token_id`).
        examples: the examples; yielded indices refer to positions in this sequence.
        projector: built with in_dim = the LoRA gradient dimension (`LoraGradients(model).dim`);
            None for no projected features (then `queries` is required).
        grad_type: "sgd", "adam" (needs `moments`) or "sign".
        batch_size: at most this many examples per forward/backward.
        max_batch_tokens: at most this many padded tokens per batch (None: no cap); it bounds
            activation memory (about 1.3 MB per token for SmolLM2-135M in fp32).
        max_length: longer examples are cut (and counted in `stats.truncated`).
        indices: only these examples (e.g. the ones a resumed run has not done); default all.
        stats: filled in as batches are produced (truncations are known before the first batch).
        queries: float32 [S, dim] on the model's device (`subtask_queries`): each batch then
            carries the exact cosine of every example's unprojected gradient with each query.
        on_gradients: called with each batch's indices and gradient vectors [b, dim] (of
            `grad_type`, unnormalised); they are formed whole, so use it for small sets, e.g. to
            build a target's `SubtaskQueries` in the pass that projects it.
    Raises:
        ConfigError: bad settings, or a projector or queries built for another gradient dimension.
        ManifestMismatchError: Adam moments that do not fit the model's LoRA parameters.
    """
    _check_sizes(batch_size, max_batch_tokens, max_length)
    if projector is None and queries is None and on_gradients is None:
        raise ConfigError("featurize needs a projector, queries, or both")
    gradients = LoraGradients(model, grad_type, moments)
    if projector is not None and projector.in_dim != gradients.dim:
        raise ConfigError(f"the projector expects vectors of length {projector.in_dim} but this model's LoRA "
                          f"gradients have {gradients.dim}; build the projector with in_dim={gradients.dim}")
    if queries is not None and (queries.ndim != 2 or queries.shape[1] != gradients.dim):
        raise ConfigError(f"queries must be [subtasks, {gradients.dim}] (this model's LoRA gradient dimension), "
                          f"got {tuple(queries.shape)}")
    stats = stats if stats is not None else FeaturizeStats()
    wanted = sorted(set(range(len(examples)) if indices is None else indices))
    encoded, pad_id = _encode(examples, tokenizer, wanted, max_length, stats)
    streaming = on_gradients is None and (projector is None or isinstance(projector, StreamingProjector))
    lengths = {i: len(e.input_ids) for i, e in encoded.items()}
    for batch_indices in length_batches(lengths, batch_size, max_batch_tokens):
        items = [encoded[i] for i in batch_indices]
        batch = collate(items, pad_id)
        started = time.perf_counter()
        projection_seconds = 0.0
        features = None
        dots = _QueryDots(queries, len(items)) if queries is not None else None
        if streaming:
            features = projector.zeros(len(items)) if projector is not None else None

            def sink(block: torch.Tensor, offset: int) -> None:
                nonlocal projection_seconds
                tick = time.perf_counter()
                if features is not None:
                    projector.accumulate(features, block, offset)
                if dots is not None:
                    dots.add(block, offset)
                projection_seconds += time.perf_counter() - tick

            gradients(batch["input_ids"], batch["attention_mask"], batch["labels"], sink=sink)
        else:
            grads = gradients(batch["input_ids"], batch["attention_mask"], batch["labels"])
            if on_gradients is not None:
                on_gradients(list(batch_indices), grads)
            tick = time.perf_counter()
            features = projector.project(grads) if projector is not None else None
            if dots is not None:
                dots.add(grads, 0)
            del grads
            projection_seconds = time.perf_counter() - tick
        tick = time.perf_counter()
        if features is not None:
            features = normalize_blocks(features.float().cpu(), projector.dims)
        cosines = dots.cosines() if dots is not None else None
        projection_seconds += time.perf_counter() - tick
        stats.gradient_seconds += time.perf_counter() - started - projection_seconds
        stats.projection_seconds += projection_seconds
        stats.done += len(items)
        stats.tokens += sum(len(e.input_ids) for e in items)
        yield FeatureBatch(list(batch_indices), features, cosines)


def query_memory_bytes(subtasks: int, lora_params: int) -> int:
    """Memory the unprojected score holds during the pool pass: one float32 query per subtask."""
    return int(subtasks) * int(lora_params) * 4


class SubtaskQueries:
    """Per subtask, the mean of its examples' L2-normalised, unprojected gradients, built batch by batch.

    The LESS score of a pool example for subtask s at one checkpoint is the mean over the
    subtask's target examples of cosines, which is the inner product of the example's
    normalised gradient with this query. Rows follow the order of `subtasks`; an example
    with no response token adds a zero vector (and still counts in its subtask's mean), as
    it does in the projected score. Memory: S x dim x 4 bytes.

    Raises:
        DataError: an empty subtask or one naming an example that does not exist.
    """

    def __init__(self, subtasks: Mapping[str, Sequence[int]], num_examples: int, dim: int,
                 device: torch.device | str = "cpu"):
        self.shares: dict[int, list[tuple[int, float]]] = {}  # example -> [(query row, 1 / subtask size)]
        for s, (name, members) in enumerate(subtasks.items()):
            members = [int(i) for i in members]
            if not members:
                raise DataError(f"subtask {name!r} has no target examples; drop it or add examples")
            if min(members) < 0 or max(members) >= num_examples:
                raise DataError(f"subtask {name!r} refers to target example {max(members)}, but there are "
                                f"{num_examples}")
            for i in members:
                self.shares.setdefault(i, []).append((s, 1.0 / len(members)))
        if not subtasks:
            raise DataError("no subtasks given; pass {'all': range(len(examples))} for a target without subtasks")
        self.shape, self.device = (len(subtasks), int(dim)), device
        self.queries: torch.Tensor | None = None  # allocated by the first add
        self.seen: set[int] = set()

    def add(self, indices: Sequence[int], grads: torch.Tensor) -> None:
        """Take a batch's gradient vectors [b, dim] of examples `indices` (an example is counted once)."""
        if self.queries is None:
            self.queries = torch.zeros(self.shape, dtype=torch.float32, device=self.device)
        norms = grads.norm(dim=1).clamp(min=1e-30)
        for row, i in enumerate(indices):
            if i in self.shares and i not in self.seen:
                self.seen.add(i)
                for s, weight in self.shares[i]:
                    self.queries[s].add_(grads[row].to(self.queries.device), alpha=weight / float(norms[row]))

    @property
    def complete(self) -> bool:
        """Every example of every subtask has been added."""
        return self.queries is not None and self.seen == set(self.shares)


def subtask_queries(model: Any, tokenizer: Any, examples: Sequence[Example], subtasks: Mapping[str, Sequence[int]],
                    *, grad_type: str = "sgd", moments: AdamMoments | None = None, batch_size: int = 8,
                    max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS, max_length: int = 2048,
                    stats: FeaturizeStats | None = None,
                    progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """The subtask queries (`SubtaskQueries`) of `examples`: float32 [S, dim] on the model's device.

    Memory: the queries, plus one batch of gradients. `progress` is called with each batch's
    example count as it is done (a progress bar's `update`).

    Raises:
        DataError: an empty subtask or one naming an example that does not exist.
        ConfigError, ManifestMismatchError: as for `featurize`.
    """
    _check_sizes(batch_size, max_batch_tokens, max_length)
    gradients = LoraGradients(model, grad_type, moments)
    found = SubtaskQueries(subtasks, len(examples), gradients.dim, gradients.device)
    stats = stats if stats is not None else FeaturizeStats()
    encoded, pad_id = _encode(examples, tokenizer, sorted(found.shares), max_length, stats)
    lengths = {i: len(e.input_ids) for i, e in encoded.items()}
    for batch_indices in length_batches(lengths, batch_size, max_batch_tokens):
        items = [encoded[i] for i in batch_indices]
        batch = collate(items, pad_id)
        started = time.perf_counter()
        found.add(batch_indices, gradients(batch["input_ids"], batch["attention_mask"], batch["labels"]))
        stats.gradient_seconds += time.perf_counter() - started
        stats.done += len(items)
        stats.tokens += sum(len(e.input_ids) for e in items)
        if progress is not None:
            progress(len(items))
    return found.queries if found.queries is not None else torch.zeros(found.shape, device=gradients.device)
