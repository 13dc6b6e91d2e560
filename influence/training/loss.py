"""Per-example negative log-likelihood of the labelled (response) tokens.

Shared by training (summed over an optimizer step), evaluation (target loss) and the IFD
selector (two forward passes per example), so all of them measure the same thing. The LM
head runs only at positions whose next token carries a label: on instruction data most
tokens are prompt, and the vocabulary projection is the largest matrix product of a small
model.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

from influence.data.formatting import IGNORE_INDEX


@lru_cache(maxsize=32)
def _accepts_logits_to_keep(forward: Any) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward can compute logits at chosen positions only (transformers >= 4.50)."""
    model = getattr(model, "module", model)  # a DDP or FSDP wrapper passes its keywords to the model inside
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _accepts_logits_to_keep(type(base).forward)


def response_logits(model: Any, batch: dict[str, Any], **forward: Any) -> tuple[Any, Any]:
    """Logits at the positions that predict a labelled token, and those tokens.

    Args:
        model: a causal LM (optionally peft-wrapped).
        batch: `collate` output: input_ids, attention_mask, labels (-100 where no loss).
        forward: extra or replaced arguments of the model's forward (evaluation passes a cached
            prefix: past_key_values, the attention mask over prefix and batch, position_ids).

    Returns:
        (logits [B, P, V], targets [B, P]): P covers every position some row of the batch
        needs; targets are -100 where a row has no label there.
    """
    # heavy: imported on use, not at start-up
    import torch

    labels = batch["labels"]
    targets = labels[:, 1:]
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False, **forward}
    if accepts_logits_to_keep(model):
        positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
        if positions.numel() == 0:
            positions = torch.zeros(1, dtype=torch.long, device=labels.device)
        return model(**kwargs, logits_to_keep=positions).logits, targets[:, positions]
    return model(**kwargs).logits[:, :-1], targets


def example_nll(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Summed NLL and labelled-token count per row of a right-padded batch.

    Args:
        model: a causal LM (optionally peft-wrapped).
        batch: `collate` output: input_ids, attention_mask, labels (-100 where no loss).

    Returns:
        (nll_sum, tokens): float tensor [B] (differentiable) and long tensor [B].
    """
    # heavy: imported on use, not at start-up
    import torch.nn.functional as F

    logits, targets = response_logits(model, batch)
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    return nll.sum(dim=1), (targets != IGNORE_INDEX).sum(dim=1)
