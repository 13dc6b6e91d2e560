"""Prompt formatting and response-only labels, shared by warmup, featurize, train and evaluate.

With a chat template the example is rendered through it; a model without one gets the
Tulu format that LESS and open-instruct train with (`<|user|>\\n...\\n<|assistant|>\\n...` with
EOS closing each assistant turn). Loss falls only on assistant tokens (labels -100 elsewhere);
an example's `response_prefix` opens the response turn but belongs to the prompt. In a chat
of several turns, `label_turns` says whether every assistant turn is trained on or only the
last. Sequences longer than `max_length` are cut at the end, and the cut is reported.

Special tokens: a chat template writes its own (Llama-3, Mistral and Gemma open with BOS),
so rendered text is tokenized without adding them again; Tulu text gets the tokenizer's
own (its BOS), as LESS tokenizes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

from influence.constants import DEFAULT_LABEL_TURNS, LABEL_TURNS
from influence.data.example import Example
from influence.io import sha256_json

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
TULU_TAGS = {"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"}


@dataclass(frozen=True)
class Encoded:
    """Token ids and labels of one example; `truncated` says whether max_length cut it."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def response_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def tulu_text(messages: Sequence[dict[str, str]], eos: str, *, generation_prompt: bool = False) -> str:
    """Messages in the Tulu format of open-instruct's `concat_messages` (contents stripped, EOS after
    each assistant turn), optionally opening an assistant turn."""
    parts = []
    for message in messages:
        closing = eos if message["role"] == "assistant" else ""
        parts.append(TULU_TAGS[message["role"]] + message["content"].strip() + closing + "\n")
    return "".join(parts) + (TULU_TAGS["assistant"] if generation_prompt else "")


def render(messages: Sequence[dict[str, str]], tokenizer: Any, *, generation_prompt: bool = False) -> str:
    """Messages as the model reads them: through its chat template, else in the Tulu format."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)
    return tulu_text(messages, tokenizer.eos_token or "", generation_prompt=generation_prompt)


def prompt_text(example: Example, tokenizer: Any) -> str:
    """The text a model sees before its response (generation starts right after it), ending
    with the example's response prefix."""
    return render(example.chat()[:-1], tokenizer, generation_prompt=True) + example.response_prefix


def response_text(example: Example, tokenizer: Any) -> str:
    """The response after its prefix, as the format closes it (end-of-turn marker or EOS included),
    or the bare output for an example that leaves its turn open."""
    if not example.closes_turn:
        return example.output
    full = render(example.chat(), tokenizer)
    prompt = prompt_text(example, tokenizer)
    if full.startswith(prompt):
        return full[len(prompt):]
    return example.output + (tokenizer.eos_token or "")


def formatting_identity(tokenizer: Any, label_turns: str = DEFAULT_LABEL_TURNS) -> dict[str, Any]:
    """What decides an example's token ids and labels besides the model: the format (the chat template,
    hashed, or Tulu), the turns labelled, and that special tokens are added once. Datastores record it."""
    template = getattr(tokenizer, "chat_template", None)
    layout = {"chat_template_sha256": sha256_json(template)} if template else {"format": "tulu"}
    return {**layout, "label_turns": label_turns, "special_tokens": "once"}


def tokenize(text: str, tokenizer: Any, *, first: bool) -> list[int]:
    """Token ids of rendered text; the tokenizer's special tokens only at the very start of Tulu text
    (a chat template has written its own)."""
    special = first and not has_chat_template(tokenizer)
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def encode_prompt(example: Example, tokenizer: Any) -> list[int]:
    return tokenize(prompt_text(example, tokenizer), tokenizer, first=True)


def _earlier_turn_spans(chat: list[dict[str, str]], context: str, tokenizer: Any) -> list[tuple[int, int]]:
    """Character spans of `context` holding the assistant turns before the last, each rendered as the
    format closes it; empty (with a warning) when the format renders a shorter chat differently."""
    spans, end = [], 0
    for i, message in enumerate(chat[:-1]):
        if message["role"] != "assistant":
            continue
        before = render(chat[:i], tokenizer, generation_prompt=True)
        after = render(chat[: i + 1], tokenizer)
        if not (after.startswith(before) and context.startswith(after) and len(before) >= end):
            log.warning("the chat format renders earlier turns differently inside a longer chat; "
                        "training on the last assistant turn only")
            return []
        spans.append((len(before), len(after)))
        end = len(after)
    return spans


def encode_example(example: Example, tokenizer: Any, max_length: int = 2048, *,
                   label_turns: str = DEFAULT_LABEL_TURNS) -> Encoded:
    """Token ids with labels on the response only (every assistant turn with `label_turns="all"`),
    cut to `max_length`.

    Raises:
        ValueError: `label_turns` is not one of LABEL_TURNS.
    """
    if label_turns not in LABEL_TURNS:
        raise ValueError(f"label_turns must be one of {', '.join(LABEL_TURNS)}, got {label_turns!r}")
    context = prompt_text(example, tokenizer)
    spans = _earlier_turn_spans(example.chat(), context, tokenizer) if label_turns == "all" else []
    pieces, start = [], 0
    for begin, end in spans:
        pieces += [(context[start:begin], False), (context[begin:end], True)]
        start = end
    pieces += [(context[start:], False), (response_text(example, tokenizer), True)]
    input_ids: list[int] = []
    labels: list[int] = []
    for text, labelled in pieces:
        ids = tokenize(text, tokenizer, first=not input_ids) if text else []
        input_ids += ids
        labels += list(ids) if labelled else [IGNORE_INDEX] * len(ids)
    truncated = len(input_ids) > max_length
    return Encoded(input_ids[:max_length], labels[:max_length], truncated)


def collate(batch: Sequence[Encoded], pad_token_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids, attention_mask, labels."""
    # heavy: imported on use, not at start-up
    import torch

    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, encoded in enumerate(batch):
        n = len(encoded.input_ids)
        input_ids[row, :n] = torch.tensor(encoded.input_ids)
        labels[row, :n] = torch.tensor(encoded.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
