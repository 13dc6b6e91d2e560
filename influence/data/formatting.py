"""Prompt formatting and response-only labels, shared by warmup, featurize, train and evaluate.

With a chat template the example is rendered through it; otherwise a plain instruction
template is used. Loss falls only on the response tokens (labels -100 elsewhere); an
example's `response_prefix` opens the response turn but belongs to the prompt.
Sequences longer than `max_length` are cut at the end, and the cut is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from influence.data.example import Example

IGNORE_INDEX = -100
PLAIN_PROMPT = "### Instruction:\n{prompt}\n\n### Response:\n"


@dataclass(frozen=True)
class Encoded:
    """Token ids and labels of one example; `truncated` says whether max_length cut it."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def response_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _plain_context(chat: list[dict[str, str]]) -> str:
    context = chat[:-1]
    if len(context) == 1 and context[0]["role"] == "user":
        return PLAIN_PROMPT.format(prompt=context[0]["content"])
    transcript = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in context)
    return PLAIN_PROMPT.format(prompt=transcript)


def prompt_text(example: Example, tokenizer: Any) -> str:
    """The text a model sees before its response (generation starts right after it), ending
    with the example's response prefix."""
    chat = example.chat()
    if getattr(tokenizer, "chat_template", None):
        context = tokenizer.apply_chat_template(chat[:-1], tokenize=False, add_generation_prompt=True)
    else:
        context = _plain_context(chat)
    return context + example.response_prefix


def response_text(example: Example, tokenizer: Any) -> str:
    """The response after its prefix, as the template closes it (end-of-turn marker or EOS included),
    or the bare output for an example that leaves its turn open."""
    if not example.closes_turn:
        return example.output
    if getattr(tokenizer, "chat_template", None):
        prompt = prompt_text(example, tokenizer)
        full = tokenizer.apply_chat_template(example.chat(), tokenize=False)
        if full.startswith(prompt):
            return full[len(prompt):]
    return example.output + (tokenizer.eos_token or "")


def encode_prompt(example: Example, tokenizer: Any) -> list[int]:
    return tokenizer(prompt_text(example, tokenizer), add_special_tokens=True)["input_ids"]


def encode_example(example: Example, tokenizer: Any, max_length: int = 2048) -> Encoded:
    """Token ids with labels on the response only, cut to `max_length`."""
    prompt_ids = encode_prompt(example, tokenizer)
    response_ids = tokenizer(response_text(example, tokenizer), add_special_tokens=False)["input_ids"]
    input_ids = prompt_ids + response_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + list(response_ids)
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
