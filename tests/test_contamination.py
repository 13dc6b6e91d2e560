"""The contamination guard: a planted copy of a held-out MMLU item never reaches a selection."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from influence.cli import main
from influence.constants import manifest_path
from influence.data import Example, load_pool
from influence.data.contamination import HeldOutNgrams
from influence.data.pools import Pool
from influence.data.targets import load_heldout, load_target
from influence.selection import decontaminate, select, write_selection
from influence.selectors import make_selector
from tests.conftest import write_jsonl


def _heldout_question() -> str:
    """A held-out MMLU test question of at least 20 words."""
    return next(item.question for item in load_heldout("mmlu") if len(item.question.split()) >= 20)


def _planted_copy() -> Example:
    """The held-out question, re-cased and re-spaced inside a longer prompt, with the longest response."""
    words = _heldout_question().split()
    return Example(instruction="Quiz time! Answer this one:\n" + "   ".join(words).upper() + "\n\nThanks.",
                   input="", output="I think the answer is the second option. " * 30)


def _pool_with(planted: Example) -> Pool:
    return Pool(examples=[Example(f"Tell me fact number {i}.", "", f"Fact {i} is true.") for i in range(20)]
                + [planted])


# ------------------------------------------------------------------------------------------ the n-gram test
def test_thirteen_shared_words_count_and_twelve_do_not():
    words = [f"w{i}" for i in range(30)]
    ngrams = HeldOutNgrams([" ".join(words)])
    assert ngrams.overlaps("prefix " + " ".join(words[5:18]).upper() + " suffix")   # 13 words, other case
    assert ngrams.overlaps("x\n" + "\t ".join(words[5:18]))                        # 13 words, other spacing
    assert not ngrams.overlaps("prefix " + " ".join(words[5:17]) + " suffix")      # 12 words


def test_short_items_are_matched_whole_and_very_short_ones_are_not_checked():
    ngrams = HeldOutNgrams(["one two three four five six seven eight nine", "True and False is"])
    assert ngrams.items == 2 and ngrams.skipped == 1
    assert ngrams.overlaps("so: one two three four five six seven eight nine and done")
    assert not ngrams.overlaps("one two three four five six seven eight")   # not the whole item
    assert not ngrams.overlaps("true and false is")                         # too short to be checked


# ------------------------------------------------------------------------------------------ in the selection path
def test_a_planted_heldout_mmlu_item_is_dropped_before_scoring_for_an_untargeted_selector():
    planted = _planted_copy()
    pool = _pool_with(planted)
    selection = select(pool, 3, make_selector("longest"), target=load_target("mmlu"))
    assert planted.id not in {e.id for e in selection.examples}   # it has the longest response by far
    assert len(selection.pool) == len(pool) - 1
    guard = selection.manifest("alpaca")["contamination"]
    assert guard["ids"] == [planted.id] and guard["action"] == "dropped" and guard["target"] == "mmlu"
    assert guard["pool_fingerprint_before"] == pool.fingerprint
    assert "1 pool example(s) share a 13-gram with mmlu's" in selection.summary()[0]


def test_keep_contaminated_keeps_the_item_and_still_records_it():
    planted = _planted_copy()
    selection = select(_pool_with(planted), 1, make_selector("longest"), target=load_target("mmlu"),
                       keep_contaminated=True)
    assert selection.examples[0].id == planted.id
    assert selection.manifest("alpaca")["contamination"]["action"] == "kept"


def test_a_target_file_has_no_heldout_items_and_is_not_checked(tmp_path):
    target = write_jsonl(tmp_path / "t.jsonl", [{"instruction": _heldout_question(), "output": "A"}])
    pool = _pool_with(_planted_copy())
    assert decontaminate(pool, load_target(str(target))) == (pool, None)


def test_a_streamed_pool_is_decontaminated_and_stays_streamed(tmp_path):
    planted = _planted_copy()
    records = [{"instruction": e.instruction, "output": e.output} for e in _pool_with(planted).examples]
    pool = load_pool(str(write_jsonl(tmp_path / "pool.jsonl", records)), stream=True)
    clean, guard = decontaminate(pool, load_target("mmlu"))
    assert guard.ids == [planted.id] and planted.id not in clean.ids
    assert [e.id for e in clean.examples] == clean.ids and clean.take([1, 0]) == [clean.examples[1], clean.examples[0]]


def test_select_command_prints_the_count_and_lists_the_ids(tmp_path):
    planted = _planted_copy()
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"instruction": e.instruction, "output": e.output}
                                                 for e in _pool_with(planted).examples])
    out = tmp_path / "sel.jsonl"
    args = ["select", "--pool", str(pool), "--target", "mmlu", "--selector", "longest", "--k", "2", "--out", str(out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "contamination guard: 1 pool example(s)" in result.output and "dropped before scoring" in result.output
    assert planted.id not in out.read_text()
    assert json.loads((tmp_path / ".sel.manifest.json").read_text())["contamination"]["ids"] == [planted.id]
    kept = CliRunner().invoke(main, args + ["--keep-contaminated", "--overwrite"], catch_exceptions=False)
    assert kept.exit_code == 0 and planted.id in out.read_text()


def test_compare_never_trains_any_selector_on_the_targets_heldout_items(tmp_path, monkeypatch):
    """compare goes through the shared path: every selection, targeted or not, is clean."""
    import influence.evaluation
    import influence.training

    trained = []

    def fake_train(data, config, out_dir):
        trained.append(data)
        return SimpleNamespace(reused=False, manifest={"seconds": 0.0})

    monkeypatch.setattr(influence.training, "train", fake_train)
    monkeypatch.setattr(influence.evaluation, "evaluate", lambda *a, **k: {
        "primary_metric": "accuracy", "metrics": {"target_loss": 1.0, "accuracy": 0.5}, "items": 1, "seconds": 0.0})
    monkeypatch.setattr(influence.evaluation, "write_results", lambda results, path: path)
    planted = _planted_copy()
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"instruction": e.instruction, "output": e.output}
                                                 for e in _pool_with(planted).examples])
    from influence.compare import CompareSettings as CompareConfig, compare

    summary = compare(CompareConfig(pools=[str(pool)], targets=["mmlu"], k=3, selectors=["bm25", "longest", "random"],
                                    seeds=1), tmp_path / "cmp")
    assert len(trained) == 3
    for path in trained:
        assert planted.id not in open(path).read()
        manifest = json.loads(manifest_path(path).read_text())
        assert manifest["contamination"]["ids"] == [planted.id]
    assert summary["contamination"]["mmlu"]["found"] == 1
