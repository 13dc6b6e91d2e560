"""Evaluation items as token ids: the prompt the model reads and the answer tokens the target loss counts.

A chat item's prompt is a user turn in the model's own format (`influence.data.formatting`, as
in training); a raw item's prompt is its text as it stands. Under the chat protocol the
reference is scored as the training format's response (`encode_example`), its turn left open
(no end-of-turn marker); otherwise only the
tokens of `answer_lead + reference` are scored, after the prompt, the answer prefix and the
loss prefix.
"""

from __future__ import annotations

from typing import Any

from influence.data.example import Example
from influence.data.formatting import IGNORE_INDEX, Encoded, encode_example, prompt_text
from influence.evaluation.items import EvalItem


def as_example(item: EvalItem, response: str = "") -> Example:
    """The item as a prompt whose response turn stays open: a scored reference counts the answer's own
    tokens only, never the template's end-of-turn marker or EOS after it (as the selection targets)."""
    return Example(instruction=item.prompt, input="", output=response, subtask=item.subtask, closes_turn=False)


def item_prompt_text(item: EvalItem, tokenizer: Any, *, loss: bool = False) -> str:
    """What the model reads before it answers (`loss`: before the scored answer, the loss prefix included)."""
    if item.chat:
        text = prompt_text(as_example(item), tokenizer)
        if item.answer_prefix:  # open-instruct's rule: a space before the prefix unless the turn ends in one
            text += item.answer_prefix if text[-1:] in ("\n", " ") else " " + item.answer_prefix
    else:
        text = item.prompt + item.answer_prefix
    return text + (item.loss_prefix if loss else "")


def item_prompt_ids(item: EvalItem, tokenizer: Any, *, loss: bool = False) -> list[int]:
    return tokenizer(item_prompt_text(item, tokenizer, loss=loss), add_special_tokens=True)["input_ids"]


def _training_response(item: EvalItem) -> bool:
    """The chat protocol's items: a plain user turn whose reference is scored as the training response."""
    return item.chat and not (item.answer_prefix or item.loss_prefix or item.answer_lead)


def encode_item(item: EvalItem, tokenizer: Any) -> Encoded:
    """The loss pass's token ids, labels on the scored answer only; never cut (the caller keeps the last tokens)."""
    if _training_response(item):
        return encode_example(as_example(item, item.reference), tokenizer, max_length=1 << 30, label_turns="last")
    prompt = item_prompt_ids(item, tokenizer, loss=True)
    answer = tokenizer(item.scored_text, add_special_tokens=False)["input_ids"]
    return Encoded(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer, False)


def continuation_ids(item: EvalItem, tokenizer: Any, text: str) -> list[int]:
    """The tokens of `text` (an option) as it would be scored after the item's prompt."""
    return tokenizer(item.answer_lead + text, add_special_tokens=False)["input_ids"]
