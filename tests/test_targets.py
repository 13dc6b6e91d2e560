"""Targets: LESS's few-shot sets by subtask, held-out splits kept apart, custom files."""

from __future__ import annotations

import pytest

from influence.data import load_heldout, load_target
from influence.errors import DataError, UnknownNameError
from tests.conftest import write_jsonl


@pytest.mark.parametrize("name, examples, subtasks, per_subtask", [
    ("bbh", 81, 27, 3), ("mmlu", 285, 57, 5), ("tydiqa", 9, 9, 1)])
def test_named_targets_have_the_less_few_shot_shape(name, examples, subtasks, per_subtask):
    target = load_target(name)
    groups = target.subtasks()
    assert len(target) == examples and len(groups) == subtasks
    assert {len(rows) for rows in groups.values()} == {per_subtask}
    assert all(e.output.strip() for e in target.examples)


def test_bbh_exemplars_are_questions_with_worked_answers():
    example = next(e for e in load_target("bbh").examples if e.subtask == "navigate")
    assert "Q: If you follow these instructions" in example.instruction
    assert example.output.startswith("Let's think step by step.") and "So the answer is" in example.output


def test_held_out_items_never_include_the_selection_examples():
    shots = {e.instruction.split("\n\nQ: ", 1)[1] for e in load_target("bbh").examples}
    heldout = load_heldout("bbh")
    assert len(heldout) > 6000
    assert not shots & {item.question for item in heldout}
    mmlu = load_heldout("mmlu")
    assert len(mmlu) == 14042 and all(len(item.choices) == 4 and item.answer in "ABCD" for item in mmlu)
    tydiqa = load_heldout("tydiqa")
    assert tydiqa and all(item.answer and item.answer in item.context for item in tydiqa)


def test_custom_target_file_groups_by_subtask(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [
        {"instruction": "2+2?", "output": "4", "subtask": "math"},
        {"instruction": "3+3?", "output": "6", "subtask": "math"},
        {"instruction": "Capital of Peru?", "output": "Lima"}])
    target = load_target(str(path))
    assert target.subtasks() == {"math": [0, 1], "default": [2]}


def test_unknown_or_empty_targets_fail_clearly(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown target 'bhh'"):
        load_target("bhh")
    empty = write_jsonl(tmp_path / "e.jsonl", [{"instruction": "a", "output": ""}])
    with pytest.raises(DataError, match="no usable examples"):
        load_target(str(empty))
