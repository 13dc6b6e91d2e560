"""Featurization math: examples -> L2-normalised projected per-example gradient features.

No file-system policy here: `featurize` is a generator of batches, so the orchestration
layer decides where each batch is written, and resumes by passing the example indices
that are not done yet. Examples are processed shortest first to cut padding; because the
per-example gradients are exact, the features do not depend on batch size or order
(beyond float rounding).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator, Sequence

import torch

from influence.data.example import Example
from influence.data.formatting import IGNORE_INDEX, collate, encode_example
from influence.errors import ConfigError
from influence.features.grads import AdamMoments, LoraGradients
from influence.features.projection import Projector, StreamingProjector, dim_slices


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FeatureBatch:
    """Features of some examples: `features[i]` belongs to `examples[indices[i]]`.

    `features` is float32 [b, sum(dims)], one block per projection dim (see `dim_slices`),
    each block L2-normalised per row; an example without response tokens has zeros.
    """

    indices: list[int]
    features: torch.Tensor


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


def featurize(model: Any, tokenizer: Any, examples: Sequence[Example], projector: Projector, *,
              grad_type: str = "sgd", moments: AdamMoments | None = None, batch_size: int = 8,
              max_batch_tokens: int | None = 1024, max_length: int = 2048, indices: Iterable[int] | None = None,
              stats: FeaturizeStats | None = None) -> Iterator[FeatureBatch]:
    """Yield projected, normalised per-example LoRA gradient features, batch by batch.

    Args:
        model: a peft LoRA-wrapped causal LM (the checkpoint's adapter loaded).
        tokenizer: its tokenizer (padding uses `pad_token_id`, else `eos_token_id`).
        examples: the examples; yielded indices refer to positions in this sequence.
        projector: built with in_dim = the LoRA gradient dimension (`LoraGradients(model).dim`).
        grad_type: "sgd", "adam" (needs `moments`) or "sign".
        batch_size: at most this many examples per forward/backward.
        max_batch_tokens: at most this many padded tokens per batch (None: no cap); it bounds
            activation memory (about 1.3 MB per token for SmolLM2-135M in fp32).
        max_length: longer examples are cut (and counted in `stats.truncated`).
        indices: only these examples (e.g. the ones a resumed run has not done); default all.
        stats: filled in as batches are produced (truncations are known before the first batch).
    Raises:
        ConfigError: bad settings, or a projector built for another gradient dimension.
        ManifestMismatchError: Adam moments that do not fit the model's LoRA parameters.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if max_batch_tokens is not None and max_batch_tokens < 1:
        raise ConfigError(f"max batch tokens must be positive (or None for no cap), got {max_batch_tokens}")
    if max_length < 2:
        raise ConfigError(f"max length must be at least 2 tokens, got {max_length}")
    gradients = LoraGradients(model, grad_type, moments)
    if projector.in_dim != gradients.dim:
        raise ConfigError(f"the projector expects vectors of length {projector.in_dim} but this model's LoRA "
                          f"gradients have {gradients.dim}; build the projector with in_dim={gradients.dim}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ConfigError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
    stats = stats if stats is not None else FeaturizeStats()
    wanted = sorted(set(range(len(examples)) if indices is None else indices))
    if wanted and not 0 <= wanted[0] <= wanted[-1] < len(examples):
        raise ConfigError(f"example indices must lie in [0, {len(examples)}), got {wanted[0]}..{wanted[-1]}")
    encoded = {i: encode_example(examples[i], tokenizer, max_length) for i in wanted}
    stats.examples += len(encoded)
    stats.truncated += sum(e.truncated for e in encoded.values())
    stats.empty += sum(all(label == IGNORE_INDEX for label in e.labels[1:]) for e in encoded.values())
    streaming = isinstance(projector, StreamingProjector)
    lengths = {i: len(e.input_ids) for i, e in encoded.items()}
    for batch_indices in length_batches(lengths, batch_size, max_batch_tokens):
        items = [encoded[i] for i in batch_indices]
        batch = collate(items, pad_id)
        started = time.perf_counter()
        projection_seconds = 0.0
        if streaming:
            features = projector.zeros(len(items))

            def sink(block: torch.Tensor, offset: int) -> None:
                nonlocal projection_seconds
                tick = time.perf_counter()
                projector.accumulate(features, block, offset)
                projection_seconds += time.perf_counter() - tick

            gradients(batch["input_ids"], batch["attention_mask"], batch["labels"], sink=sink)
        else:
            grads = gradients(batch["input_ids"], batch["attention_mask"], batch["labels"])
            tick = time.perf_counter()
            features = projector.project(grads)
            del grads
            projection_seconds = time.perf_counter() - tick
        tick = time.perf_counter()
        features = normalize_blocks(features.float().cpu(), projector.dims)
        projection_seconds += time.perf_counter() - tick
        stats.gradient_seconds += time.perf_counter() - started - projection_seconds
        stats.projection_seconds += projection_seconds
        stats.done += len(items)
        stats.tokens += sum(len(e.input_ids) for e in items)
        yield FeatureBatch(list(batch_indices), features)
