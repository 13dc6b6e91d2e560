"""Forward-only features of a causal LM: each example's final-layer hidden state (RDS).

LESS's RDS baseline (Xia et al., arXiv 2402.04333) represents an example by the
final-layer hidden state of its last token, the prompt and response read together, and
scores by cosine; we also offer the mean over the example's tokens, and RDS+'s
position-weighted mean (Ivison et al., arXiv 2503.01807: token t of T weighs t / sum(1..T),
every token of prompt and response, as in their released code). No gradients, no
adapter: the features are the model's own, batched like the gradient features and
yielded as the same `FeatureBatch`es, so the same datastore stores them.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import torch

from influence.constants import POOLINGS
from influence.data.example import Example
from influence.data.formatting import IGNORE_INDEX, collate, encode_example
from influence.errors import ConfigError
from influence.features.compute import FeatureBatch, FeaturizeStats, length_batches, normalize_blocks
from influence.training.loss import accepts_logits_to_keep


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, T, H] hidden states of right-padded rows -> [B, H]: the last real token's, the mean over real
    tokens, or their position-weighted mean (`position_weights`)."""
    if pooling == "last":
        last = attention_mask.sum(dim=1) - 1
        return hidden[torch.arange(len(hidden), device=hidden.device), last]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    if pooling == "weighted":
        return (hidden * position_weights(attention_mask).unsqueeze(-1).to(hidden.dtype)).sum(dim=1)
    raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")


def position_weights(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] weights of RDS+'s pooling (SGPT's weighted mean): the real token at 1-based position t of
    a row of T real tokens weighs t / (1 + 2 + ... + T); padding weighs 0. Later tokens, which have
    read more of the example, count for more. float32."""
    mask = attention_mask.to(torch.float32)
    positions = mask.cumsum(dim=1) * mask
    return positions / positions.sum(dim=1, keepdim=True).clamp(min=1)


def forward_plan(tokenizer: Any, count: int, batch_size: int, indices: Iterable[int] | None) -> tuple[int, list[int]]:
    """The padding id and the sorted example indices to run, for a batched forward-only pass.

    Raises:
        ConfigError: batch_size below 1, or a tokenizer with neither a pad nor an EOS token.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ConfigError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
    return pad_id, sorted(set(range(count) if indices is None else indices))


def hidden_size(model: Any) -> int:
    """The width of the model's final hidden state (the RDS feature dimension)."""
    config = model.config
    size = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if size is None and hasattr(config, "get_text_config"):
        size = getattr(config.get_text_config(), "hidden_size", None)
    if size is None:
        raise ConfigError(f"cannot tell the hidden size of {type(model).__name__}; its config has no hidden_size")
    return int(size)


def hidden_states(model: Any, tokenizer: Any, examples: Sequence[Example], *, pooling: str = "last",
                  batch_size: int = 8, max_batch_tokens: int | None = 4096, max_length: int = 2048,
                  indices: Iterable[int] | None = None, stats: FeaturizeStats | None = None) -> Iterator[FeatureBatch]:
    """Yield each example's pooled final-layer hidden state, L2-normalised, batch by batch (float32).

    The example is the prompt and the response as the model is trained on them
    (`encode_example`), cut at `max_length`. Batches go shortest first; right padding
    and the attention mask keep each row's states independent of the others in its batch.

    Raises:
        ConfigError: bad settings or an unknown pooling.
    """
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    pad_id, wanted = forward_plan(tokenizer, len(examples), batch_size, indices)
    stats = stats if stats is not None else FeaturizeStats()
    encoded = {i: encode_example(examples[i], tokenizer, max_length) for i in wanted}
    stats.examples += len(encoded)
    stats.truncated += sum(e.truncated for e in encoded.values())
    stats.empty += sum(all(label == IGNORE_INDEX for label in e.labels[1:]) for e in encoded.values())
    device = next(model.parameters()).device
    # only the hidden states are wanted: skip the vocabulary projection where the model allows it
    extra = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    lengths = {i: len(e.input_ids) for i, e in encoded.items()}
    for batch_indices in length_batches(lengths, batch_size, max_batch_tokens):
        batch = collate([encoded[i] for i in batch_indices], pad_id)
        mask = batch["attention_mask"].to(device)
        with torch.inference_mode():
            out = model(input_ids=batch["input_ids"].to(device), attention_mask=mask, output_hidden_states=True,
                        use_cache=False, **extra)
            pooled = pool_hidden(out.hidden_states[-1].float(), mask, pooling)
        features = normalize_blocks(pooled.cpu(), [pooled.shape[1]])
        stats.done += len(batch_indices)
        stats.tokens += int(mask.sum())
        yield FeatureBatch(list(batch_indices), features)
