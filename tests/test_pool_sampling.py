"""Seeded, stratified samples of a pool spec: `SPEC:sample=N[,seed=S][,stratify=source]`."""

from __future__ import annotations

from collections import Counter

import pytest
from click.testing import CliRunner

from influence.cli import main
from influence.data.pools import load_pool, split_pool_spec
from influence.errors import ConfigError, DataError
from tests.conftest import write_jsonl


def _subtask_file(tmp_path):
    return write_jsonl(tmp_path / "mixed.jsonl", [
        {"instruction": f"Question {i} of {group}?", "output": f"Answer {i} of {group}.", "subtask": group}
        for group, n in (("big", 60), ("mid", 30), ("small", 10)) for i in range(n)])


def test_a_stratified_sample_keeps_each_groups_share_is_seeded_and_keeps_the_source_order(tmp_path):
    path = _subtask_file(tmp_path)
    whole = load_pool([str(path)])
    sample = load_pool([f"{path}:sample=20,stratify=subtask"])
    assert Counter(e.subtask for e in sample.examples) == {"big": 12, "mid": 6, "small": 2}
    assert len(set(sample.ids)) == 20 and set(sample.ids) <= set(whole.ids)
    position = {i: n for n, i in enumerate(whole.ids)}
    assert [position[i] for i in sample.ids] == sorted(position[i] for i in sample.ids)
    assert load_pool([f"{path}:sample=20,stratify=subtask"]).ids == sample.ids
    assert load_pool([f"{path}:sample=20,stratify=subtask,seed=1"]).ids != sample.ids
    assert "seeded sample of 20 (seed 0, stratified by subtask)" in sample.describe()[0]


def test_a_sample_does_not_report_the_examples_it_left_out_as_duplicates(tmp_path):
    path = _subtask_file(tmp_path)
    line = load_pool([f"{path}:sample=20"]).describe()[0]
    assert line.startswith(f"pool {path}:sample=20: 20 examples") and "duplicate" not in line
    doubled = load_pool([f"{path}:sample=20", str(path)]).describe()
    assert "20 exact duplicates of examples already in the pool removed" in doubled[1]


def test_the_bundled_flan_cot_recipe_draws_from_all_seven_sources_in_proportion():
    flan = load_pool(["flan_cot"])
    sample = load_pool(["flan_cot:sample=300,stratify=source"])
    counts = Counter(e.source for e in sample.examples)
    whole = Counter(e.source for e in flan.examples)
    assert len(counts) == 7 and sum(counts.values()) == 300
    for source, n in counts.items():
        assert abs(n - 300 * whole[source] / len(flan)) < 1


def test_an_unstratified_sample_and_the_errors(tmp_path):
    path = _subtask_file(tmp_path)
    assert len(load_pool([f"{path}:sample=7"])) == 7
    assert split_pool_spec("hf:org/data:train") == ("hf:org/data:train", None)
    with pytest.raises(DataError, match="only 100 distinct"):
        load_pool([f"{path}:sample=101"])
    for bad, message in ((f"{path}:sample=0", "positive"), (f"{path}:size=3", "sample=N"),
                         (f"{path}:sample=3,stratify=colour", "stratify must be"), (f"{path}:sample=x", "integers")):
        with pytest.raises(ConfigError, match=message):
            load_pool([bad])


def test_select_takes_a_sampled_pool_spec(tmp_path):
    path = _subtask_file(tmp_path)
    out = tmp_path / "picked.jsonl"
    result = CliRunner().invoke(main, ["select", "--pool", f"{path}:sample=20,stratify=subtask", "--k", "5",
                                       "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "seeded sample of 20" in result.output and len(out.read_text().splitlines()) == 5
