"""The `flan_cot:<source>` targets: one FLAN v2 chain-of-thought source split into parts.

Each source's rows, one per distinct question (the first), are split by a seeded hash of
the question (`FLAN_COT_SPLIT`): 200 held out for evaluation, 50 for choosing a training
recipe (validation), 25 as the selection target; the rest stay pool data. Every part is
worded exactly as the `flan_cot` pool words its rows (question -> rationale, then "So the
answer is <answer>."), so a part's rows have the pool examples' ids, and the contamination
guard removes them from any pool by id (every row asking the same question included), as
well as by n-gram.
"""

from __future__ import annotations

import dataclasses
import functools

from influence.data.example import Example
from influence.data.heldout import HELDOUT, SELECTION, VALIDATION, HeldOutItem, TargetSplit
from influence.data.pools import FLAN_COT_SOURCES, FlanCotRow, flan_cot_rows

FLAN_COT_TARGET = "flan_cot"  # a target's name is flan_cot:<source>
FLAN_COT_SPLIT = TargetSplit(seed=0, heldout=200, validation=50, selection=25, key="the question")


@functools.lru_cache(maxsize=None)
def flan_cot_parts(source: str) -> dict[str, tuple[tuple[FlanCotRow, tuple[str, ...]], ...]]:
    """Part name -> (the row, ids of every row of the source with its question), for one source."""
    ids_by_question: dict[str, list[str]] = {}
    first: dict[str, FlanCotRow] = {}
    for row in flan_cot_rows()[source]:
        ids_by_question.setdefault(row.question, []).append(row.example.id)
        first.setdefault(row.question, row)
    rows = list(first.values())
    parts = FLAN_COT_SPLIT.carve([row.question for row in rows])
    return {name: tuple((rows[i], tuple(dict.fromkeys(ids_by_question[rows[i].question]))) for i in indices)
            for name, indices in parts.items()}


def flan_cot_target(source: str) -> list[Example]:
    """The selection part: pool-worded rows, the source as their subtask."""
    return [dataclasses.replace(row.example, subtask=source) for row, _ in flan_cot_parts(source)[SELECTION]]


def _items(source: str, part: str) -> list[HeldOutItem]:
    return [HeldOutItem(subtask=source, question=row.question, answer=row.answer, response=row.example.output,
                        pool_ids=ids) for row, ids in flan_cot_parts(source)[part]]


def flan_cot_heldout(source: str) -> list[HeldOutItem]:
    return _items(source, HELDOUT)


def flan_cot_validation(source: str) -> list[HeldOutItem]:
    return _items(source, VALIDATION)


def flan_cot_row_ids(source: str) -> frozenset[str]:
    """Ids of every pool row of the source that is in one of the target's parts (selection included)."""
    return frozenset(i for rows in flan_cot_parts(source).values() for _, ids in rows for i in ids)


def flan_cot_questions(source: str) -> list[str]:
    """Every distinct question of the source: the texts whose shared n-grams are the source's template."""
    return list(dict.fromkeys(row.question for row in flan_cot_rows()[source]))


def flan_cot_target_names() -> list[str]:
    return [f"{FLAN_COT_TARGET}:{source}" for source in FLAN_COT_SOURCES]
