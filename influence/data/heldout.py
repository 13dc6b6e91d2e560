"""Evaluation items and the seeded splits that keep a target's selection, validation and held-out parts apart.

A split orders a dataset's items by the SHA-256 of the split seed and each item's key (its
record id, or its question), then carves the held-out part, the validation part and the
selection part off that order in turn. The order depends only on the data and the seed:
not on file order, numpy's generator or the Python version; an item keeps its part when
other items are added or removed, and the held-out part does not move when the smaller
parts are resized.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

from influence.errors import DataError

SELECTION, VALIDATION, HELDOUT = "selection", "validation", "heldout"


@dataclass(frozen=True)
class HeldOutItem:
    """One evaluation item: a question with its reference answer (and options, for MMLU)."""

    subtask: str
    question: str
    answer: str
    choices: tuple[str, ...] = ()     # MMLU option texts, in A-D order
    answers: tuple[str, ...] = ()     # all accepted answers (TyDi QA)
    context: str = ""                 # the passage (TyDi QA)
    response: str = ""                # the whole reference response the target loss scores, when more than
    #                                   the answer (a rationale ending in the answer); "" scores the answer
    pool_ids: tuple[str, ...] = ()    # ids of the pool examples this item was read from (FLAN CoT rows)


@dataclass(frozen=True)
class TargetSplit:
    """How a dataset is split into selection, validation and held-out parts: seed, sizes and key."""

    seed: int
    heldout: int
    validation: int
    selection: int | None     # None: every item left after the other two
    key: str                  # what each item's place in the order is hashed from, in words

    def carve(self, keys: Sequence[str]) -> dict[str, list[int]]:
        """Indices into `keys` of each part, each in the original order; items past the three parts are
        in none (a pool's own rows, say).

        Raises:
            DataError: fewer items than the fixed sizes ask for, or a key given twice.
        """
        if len(set(keys)) != len(keys):
            raise DataError("a target split needs one key per item; deduplicate the items first")
        wanted = self.heldout + self.validation + (self.selection or 0)
        if len(keys) < wanted + (1 if self.selection is None else 0):
            raise DataError(f"a split of {self.heldout} held-out, {self.validation} validation and "
                            f"{self.selection or 'at least 1'} selection items needs more than {len(keys)} items")
        order = sorted(range(len(keys)), key=lambda i: (split_rank(self.seed, keys[i]), keys[i]))
        cuts = [(HELDOUT, self.heldout), (VALIDATION, self.validation),
                (SELECTION, len(keys) if self.selection is None else self.selection)]
        parts, start = {}, 0
        for name, size in cuts:
            parts[name] = sorted(order[start: start + size])
            start += size
        return parts

    def record(self, sizes: dict[str, int] | None = None) -> dict[str, Any]:
        """What a manifest or listing says about the split: seed, key, method and the parts' sizes."""
        return {"seed": self.seed, "key": self.key,
                "method": "items ordered by sha256 of '<seed>:<key>'; held out, validation, selection carved in turn",
                **(sizes or {HELDOUT: self.heldout, VALIDATION: self.validation, SELECTION: self.selection})}


def split_rank(seed: int, key: str) -> str:
    """An item's place in a split's order: the hex SHA-256 of '<seed>:<key>'."""
    return hashlib.sha256(f"{seed}:{key}".encode("utf-8")).hexdigest()
