"""Pools: the bundled real data offline, files, mixing, stable ids and deduplication."""

from __future__ import annotations

import pytest

from influence.data import Example, load_pool
from influence.errors import SelectionError, UnknownNameError
from tests.conftest import write_jsonl


def test_alpaca_offline_uses_the_bundled_sample_and_says_so():
    pool = load_pool("alpaca")
    assert len(pool) == 4998  # 5,000 rows, 2 with an empty response
    assert pool.sources[0].skipped_empty == 2
    assert "bundled" in pool.describe()[0] and "4,998 examples" in pool.describe()[0]
    assert all(e.source == "alpaca" for e in pool.examples)


def test_flan_cot_turns_rows_into_rationale_then_answer():
    pool = load_pool("flan_cot")
    assert pool.sources[0].read == 33443
    assert len(pool) + pool.duplicates == 33443
    sources = {e.source for e in pool.examples}
    assert sources == {f"flan_cot/{n}" for n in
                       ("aqua", "creak", "ecqa", "gsm8k", "qasc", "sensemaking", "strategyqa")}
    gsm = next(e for e in pool.examples if e.source == "flan_cot/gsm8k")
    assert gsm.output.endswith(".") and "\nSo the answer is " in gsm.output


def test_ids_are_content_hashes_independent_of_source():
    a = Example("Say hi", "", "Hi!", source="one")
    b = Example("Say hi", "", "Hi!", source="two", subtask="x")
    c = Example("Say hi", "", "Hello!")
    assert a.id == b.id != c.id
    assert len(a.id) == 16


def test_mixed_pools_keep_each_source_and_remove_exact_duplicates(tmp_path, alpaca_records):
    first = write_jsonl(tmp_path / "a.jsonl", alpaca_records)
    second = write_jsonl(tmp_path / "b.jsonl", alpaca_records[:2] + [{"instruction": "New", "output": "Yes."}])
    pool = load_pool([str(first), str(second)])
    assert len(pool) == 4 and pool.duplicates == 2
    assert [e.source for e in pool.examples] == ["a.jsonl"] * 3 + ["b.jsonl"]
    assert "2 exact duplicates removed" in pool.describe()[-1]


def test_pool_fingerprint_changes_with_content(tmp_path, alpaca_records):
    one = load_pool(str(write_jsonl(tmp_path / "a.jsonl", alpaca_records)))
    same = load_pool(str(write_jsonl(tmp_path / "b.jsonl", alpaca_records)))
    other = load_pool(str(write_jsonl(tmp_path / "c.jsonl", alpaca_records[1:])))
    assert one.fingerprint == same.fingerprint != other.fingerprint


def test_unknown_pool_names_the_choices():
    with pytest.raises(UnknownNameError, match="unknown pool 'alpacca'; choose one of: alpaca, flan_cot"):
        load_pool("alpacca")


def test_empty_pool_is_an_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SelectionError, match="no usable examples"):
        load_pool(str(empty))
    only_empty = write_jsonl(tmp_path / "blank.jsonl", [{"instruction": "a", "output": "  "}])
    with pytest.raises(SelectionError, match="no usable examples"):
        load_pool(str(only_empty))
