"""Instruction-following difficulty (IFD; Li et al., "From Quantity to Quality", NAACL 2024).

IFD = s(A | Q) / s(A): the mean NLL of the response tokens given the instruction, over
their mean NLL given no instruction. The paper's code scores the response alone after a
bare "### Response:" marker; we give it the same chat turn with the instruction left
empty (the template's roles stay, the instruction's words go), and score exactly the
same response token ids in both passes, so the two losses differ only by what came
before. Forward passes only, batched.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from influence.data.example import Example
from influence.data.formatting import IGNORE_INDEX, Encoded, collate, encode_example, encode_prompt
from influence.features.compute import FeaturizeStats, length_batches
from influence.training.loss import example_nll
from influence.features.represent import forward_plan


def without_instruction(example: Example) -> Example:
    """The example's response (after its response prefix, if any) as a single assistant turn
    after an empty user turn."""
    return Example(instruction="", input="", output=example.response, response_prefix=example.response_prefix)


def ifd_pair(example: Example, tokenizer: Any, max_length: int) -> tuple[Encoded, Encoded]:
    """(response given the instruction, the same response tokens given an empty instruction).

    The conditioned sequence is cut at `max_length` as in training; the response tokens
    that survive are the ones both sequences score.
    """
    conditioned = encode_example(example, tokenizer, max_length, label_turns="last")  # IFD scores the response alone
    response = [label for label in conditioned.labels if label != IGNORE_INDEX]
    context = encode_prompt(without_instruction(example), tokenizer)
    alone = Encoded(context + response, [IGNORE_INDEX] * len(context) + response, conditioned.truncated)
    return conditioned, alone


def response_losses(model: Any, tokenizer: Any, examples: Sequence[Example], *, batch_size: int = 8,
                    max_batch_tokens: int | None = 4096, max_length: int = 2048, indices: Iterable[int] | None = None,
                    stats: FeaturizeStats | None = None) -> Iterator[tuple[list[int], np.ndarray]]:
    """Yield (example indices, float64 [b, 2]): each example's mean response NLL given its instruction
    and given none. Rows with no response token left after cutting are NaN.

    Raises:
        ConfigError: bad settings.
    """
    pad_id, wanted = forward_plan(tokenizer, len(examples), batch_size, indices)
    stats = stats if stats is not None else FeaturizeStats()
    pairs = {i: ifd_pair(examples[i], tokenizer, max_length) for i in wanted}
    stats.examples += len(pairs)
    stats.truncated += sum(p[0].truncated for p in pairs.values())
    stats.empty += sum(p[0].response_tokens == 0 for p in pairs.values())
    device = next(model.parameters()).device
    lengths = {i: len(p[0].input_ids) for i, p in pairs.items()}
    for batch_indices in length_batches(lengths, batch_size, max_batch_tokens):
        out = np.empty((len(batch_indices), 2), dtype=np.float64)
        for column in (0, 1):
            batch = collate([pairs[i][column] for i in batch_indices], pad_id)
            with torch.inference_mode():
                nll, tokens = example_nll(model, {k: v.to(device) for k, v in batch.items()})
            tokens = tokens.double().cpu().numpy()
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, column] = np.where(tokens > 0, nll.double().cpu().numpy() / tokens, np.nan)
        stats.done += len(batch_indices)
        stats.tokens += sum(len(pairs[i][0].input_ids) + len(pairs[i][1].input_ids) for i in batch_indices)
        yield list(batch_indices), out


def ifd_from_losses(losses: np.ndarray) -> np.ndarray:
    """IFD = conditioned / alone, per row of `response_losses`' [n, 2]; NaN where undefined."""
    losses = np.asarray(losses, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ifd = losses[:, 0] / losses[:, 1]
    return np.where(np.isfinite(ifd), ifd, np.nan)

