"""The `user_oriented` target: Self-Instruct's 252 expert-written user-oriented instructions.

Each record (id, motivation_app, instruction, instances) gives one example: the instruction
with its first instance's input as the prompt, the expert's output as the response, the
motivating app as the subtask. Later instances would be left out, so every instruction
weighs the same (every record of the released file has exactly one). A seeded split by
record id (`USER_ORIENTED_SPLIT`) gives 180 held-out items for evaluation, 36 for choosing
a training recipe (validation) and the other 36 as the selection target.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Iterable

from influence.data.example import Example
from influence.data.heldout import HELDOUT, SELECTION, VALIDATION, HeldOutItem, TargetSplit
from influence.data.vendored import bundle_text
from influence.errors import DataError

USER_ORIENTED_FILE = "targets/self_instruct_user_oriented/user_oriented_instructions.jsonl"
USER_ORIENTED_SPLIT = TargetSplit(seed=0, heldout=180, validation=36, selection=None, key="the record's id")


def user_oriented_examples(records: Iterable[dict[str, Any]]) -> list[tuple[str, Example]]:
    """(record id, example) per record: instruction + first instance's input -> the expert's output.

    Raises:
        DataError: a record lacks a field, or its first instance has no output.
    """
    pairs = []
    for line, record in enumerate(records, start=1):
        try:
            first = record["instances"][0]
            example = Example(instruction=record["instruction"].strip(), input=(first.get("input") or "").strip(),
                              output=first["output"].strip(), subtask=record["motivation_app"],
                              source="user_oriented")
            pairs.append((str(record["id"]), example))
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise DataError(f"user-oriented record {line} lacks id, motivation_app, instruction or an instance "
                            f"with an output ({exc!r})") from None
        if not example.output:
            raise DataError(f"user-oriented record {line} ({record['id']}) has an empty output")
    return pairs


@functools.lru_cache(maxsize=1)
def user_oriented_parts() -> dict[str, tuple[Example, ...]]:
    """The bundled records split into selection, validation and held-out examples."""
    records = [json.loads(line) for line in bundle_text("self_instruct_user_oriented", USER_ORIENTED_FILE).splitlines()
               if line.strip()]
    pairs = user_oriented_examples(records)
    parts = USER_ORIENTED_SPLIT.carve([record_id for record_id, _ in pairs])
    return {name: tuple(pairs[i][1] for i in indices) for name, indices in parts.items()}


def _item(example: Example) -> HeldOutItem:
    return HeldOutItem(subtask=example.subtask or "", question=example.prompt, answer=example.output)


def user_oriented_target() -> list[Example]:
    return list(user_oriented_parts()[SELECTION])


def user_oriented_heldout() -> list[HeldOutItem]:
    return [_item(e) for e in user_oriented_parts()[HELDOUT]]


def user_oriented_validation() -> list[HeldOutItem]:
    return [_item(e) for e in user_oriented_parts()[VALIDATION]]
