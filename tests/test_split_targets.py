"""Targets split from one dataset (user_oriented, flan_cot:<source>): seeded selection / validation /
held-out parts, what each part is used for, how the split is recorded, and the guard's removal of a
FLAN target's own rows from a pool."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from influence.cli import main
from influence.data import Example, load_heldout, load_target
from influence.data.heldout import HELDOUT, SELECTION, VALIDATION, TargetSplit
from influence.data.contamination import HeldOutNgrams
from influence.data.flan_cot_targets import flan_cot_parts
from influence.data.pools import FLAN_COT_SOURCES, Pool, flan_cot_rows, load_pool
from influence.data.targets import split_record
from influence.data.user_oriented import (USER_ORIENTED_FILE, USER_ORIENTED_SPLIT, user_oriented_examples,
                                          user_oriented_parts)
from influence.data.vendored import bundle_text
from influence.errors import ConfigError, DataError
from influence.evaluation import EvalSettings, build_task, evaluate, extract_answer
from influence.evaluation.metrics import cot_answer_match
from influence.evaluation.tasks import COT_ANSWER
from influence.models import LoadedModel
from influence.selection import select
from influence.selectors import make_selector
from influence.testing import tiny_model_and_tokenizer


def _records() -> list[dict]:
    return [json.loads(line) for line in bundle_text("self_instruct_user_oriented", USER_ORIENTED_FILE).splitlines()]


# ------------------------------------------------------------------------------------------ the split
def test_user_oriented_parts_are_disjoint_cover_all_252_items_and_have_the_documented_sizes():
    pairs = user_oriented_examples(_records())
    parts = USER_ORIENTED_SPLIT.carve([record_id for record_id, _ in pairs])
    assert {name: len(indices) for name, indices in parts.items()} == {HELDOUT: 180, VALIDATION: 36, SELECTION: 36}
    chosen = [set(indices) for indices in parts.values()]
    assert set.union(*chosen) == set(range(252)) and sum(map(len, chosen)) == 252
    ids = {name: {e.id for e in examples} for name, examples in user_oriented_parts().items()}
    assert not ids[HELDOUT] & ids[VALIDATION] and not ids[HELDOUT] & ids[SELECTION] \
        and not ids[VALIDATION] & ids[SELECTION]


def test_user_oriented_split_is_stable_and_depends_only_on_the_records_and_the_seed():
    pairs = user_oriented_examples(_records())
    keys = [record_id for record_id, _ in pairs]
    parts = USER_ORIENTED_SPLIT.carve(keys)
    by_id = {name: [keys[i] for i in indices] for name, indices in parts.items()}
    # golden: the first records of each part, fixed by sha256("0:<id>") alone
    assert by_id[HELDOUT][:3] == ["user_oriented_task_1", "user_oriented_task_2", "user_oriented_task_3"]
    assert by_id[VALIDATION][:3] == ["user_oriented_task_0", "user_oriented_task_6", "user_oriented_task_7"]
    assert by_id[SELECTION][:3] == ["user_oriented_task_11", "user_oriented_task_13", "user_oriented_task_14"]
    shuffled = keys[:]
    random.Random(5).shuffle(shuffled)
    again = USER_ORIENTED_SPLIT.carve(shuffled)
    assert {name: sorted(shuffled[i] for i in indices) for name, indices in again.items()} == \
        {name: sorted(ids) for name, ids in by_id.items()}
    other_seed = TargetSplit(seed=1, heldout=180, validation=36, selection=None, key="id").carve(keys)
    assert other_seed[SELECTION] != parts[SELECTION]


def test_a_split_refuses_repeated_keys_and_too_few_items():
    with pytest.raises(DataError, match="one key per item"):
        TargetSplit(seed=0, heldout=1, validation=1, selection=None, key="id").carve(["a", "a", "b"])
    with pytest.raises(DataError, match="needs more than 3 items"):
        TargetSplit(seed=0, heldout=2, validation=1, selection=1, key="id").carve(["a", "b", "c"])


def test_each_instruction_gives_one_example_from_its_first_instance():
    record = {"id": "t1", "motivation_app": "Gmail", "instruction": "Reply politely.",
              "instances": [{"input": "Can we meet?", "output": "Yes, gladly."},
                            {"input": "Lunch?", "output": "Sure."}]}
    no_input = {"id": "t2", "motivation_app": "IMDB", "instruction": "Name a film.",
                "instances": [{"input": "", "output": "Alien"}]}
    (first_id, first), (_, second) = user_oriented_examples([record, no_input])
    assert first_id == "t1" and (first.prompt, first.output, first.subtask) == \
        ("Reply politely.\n\nCan we meet?", "Yes, gladly.", "Gmail")
    assert second.prompt == "Name a film." and second.source == "user_oriented"
    with pytest.raises(DataError, match="record 1"):
        user_oriented_examples([{"id": "t3", "instruction": "x", "instances": []}])


# ------------------------------------------------------------------------------------------ what each part is for
def test_user_oriented_selects_against_its_selection_part_and_evaluates_on_held_out_or_validation():
    target = load_target("user_oriented")
    assert len(target) == 36 and all(e.subtask for e in target.examples)
    assert len(target.subtasks()) > 20  # the motivating apps
    validation = load_target("user_oriented:validation")
    assert validation.name == "user_oriented:validation" and validation.examples == target.examples
    heldout, valid = load_heldout("user_oriented"), load_heldout("user_oriented:validation")
    assert (len(heldout), len(valid)) == (180, 36)
    shown = {e.prompt for e in target.examples}
    assert not shown & {i.question for i in heldout} and not shown & {i.question for i in valid}
    with pytest.raises(ConfigError, match="bbh has no validation split; targets with one: user_oriented:validation"):
        load_target("bbh:validation")


def test_the_split_is_recorded_for_every_part_and_absent_for_unsplit_targets():
    record = split_record("user_oriented:validation")
    assert record == split_record("user_oriented")
    assert {k: record[k] for k in ("seed", SELECTION, VALIDATION, HELDOUT)} == \
        {"seed": 0, SELECTION: 36, VALIDATION: 36, HELDOUT: 180}
    assert split_record("mmlu") is None and split_record("some_file.jsonl") is None


def test_influence_targets_lists_the_split_sizes():
    result = CliRunner().invoke(main, ["targets"])
    assert result.exit_code == 0
    line = next(line for line in result.output.splitlines() if line.startswith("user_oriented "))
    assert "selection 36 / validation 36 / held-out 180; split seed 0" in line


# ------------------------------------------------------------------------------------------ evaluation
@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    model, tokenizer = tiny_model_and_tokenizer()
    return LoadedModel(model=model, tokenizer=tokenizer, spec="tiny-llama", weights_sha256="tiny-llama-seed0")


def test_user_oriented_task_scores_the_experts_responses_on_the_chosen_part():
    task = build_task("user_oriented")
    assert (task.kind, len(task.items), task.default_metrics) == ("generation", 180, ())
    item = task.items[0]
    source = load_heldout("user_oriented")[0]
    assert (item.prompt, item.reference, item.subtask) == (source.question, source.answer, source.subtask)
    assert len(build_task("user_oriented:validation").items) == 36
    with pytest.raises(ConfigError, match="mmlu has no validation split"):
        build_task("mmlu:validation")


def test_user_oriented_measures_the_loss_alone_unless_generation_is_asked_for(tiny):
    config = EvalSettings.for_tests()
    loss_only = evaluate(tiny, "user_oriented:validation", limit=3, config=config)
    assert loss_only["primary_metric"] == "target_loss" and "exact_match" not in loss_only["metrics"]
    assert loss_only["metrics"]["target_loss"] > 0 and {p["prediction"] for p in loss_only["predictions"]} == {""}
    assert loss_only["split"]["validation"] == 36 and loss_only["available"] == 36
    generated = evaluate(tiny, "user_oriented:validation", limit=3, config=config, metrics=["exact_match"])
    assert generated["primary_metric"] == "exact_match" and "exact_match" in generated["metrics"]
    assert generated["metrics"]["target_loss"] == pytest.approx(loss_only["metrics"]["target_loss"])


# ------------------------------------------------------------------------------------------ the guard and manifests
def test_the_guard_drops_pool_copies_of_held_out_and_validation_items_and_the_manifest_records_the_split():
    copies = [Example(next(i.question for i in load_heldout(spec) if len(i.question.split()) >= 13), "",
                      "a long answer " * 20) for spec in ("user_oriented", "user_oriented:validation")]
    pool = Pool(examples=[Example(f"Tell me fact number {i}.", "", f"Fact {i} is true.") for i in range(10)] + copies)
    for spec in ("user_oriented", "user_oriented:validation"):
        selection = select(pool, 3, make_selector("longest"), target=load_target(spec))
        assert selection.contamination.ids == [e.id for e in copies]
        assert not {e.id for e in copies} & {e.id for e in selection.examples}
        assert selection.manifest("alpaca")["target"]["split"]["heldout"] == 180


# ------------------------------------------------------------------------------------------ flan_cot:<source>
def test_every_bundled_flan_cot_source_is_a_target_with_25_50_200_parts():
    assert FLAN_COT_SOURCES == tuple(flan_cot_rows())  # the registry names match the bundle's files
    for source in FLAN_COT_SOURCES:
        parts = flan_cot_parts(source)
        assert {name: len(rows) for name, rows in parts.items()} == {HELDOUT: 200, VALIDATION: 50, SELECTION: 25}
        questions = [{row.question for row, _ in rows} for rows in parts.values()]
        assert sum(map(len, questions)) == 275 and len(set.union(*questions)) == 275
        record = split_record(f"flan_cot:{source}:validation")
        assert {k: record[k] for k in ("seed", SELECTION, VALIDATION, HELDOUT)} == \
            {"seed": 0, SELECTION: 25, VALIDATION: 50, HELDOUT: 200}
    result = CliRunner().invoke(main, ["targets"])
    assert all(f"flan_cot:{source}" in result.output for source in FLAN_COT_SOURCES)
    assert "flan_cot:gsm8k" in result.output and result.output.count("selection 25 / validation 50 / held-out 200") == 7


def test_flan_cot_split_is_stable():
    parts = flan_cot_parts("strategyqa")
    assert parts[HELDOUT][0][0].question == "If you were on a diet, would you have to skip lunch at McDonald's?"
    assert parts[VALIDATION][0][0].question == "Did Eddie Murphy's father see his first stand up show?"
    assert parts[SELECTION][0][0].question == "Does the anatomy of a camel lend itself to jokes on Wednesdays?"


def test_flan_cot_parts_are_worded_as_the_pool_words_its_rows():
    pool_ids = set(load_pool("flan_cot").ids)
    target = load_target("flan_cot:gsm8k")
    assert len(target) == 25 and set(target.subtasks()) == {"gsm8k"}
    assert {e.id for e in target.examples} <= pool_ids
    item = load_heldout("flan_cot:gsm8k")[0]
    assert item.response.endswith(f"\nSo the answer is {item.answer}.") and set(item.pool_ids) <= pool_ids
    task = build_task("flan_cot:gsm8k:validation")
    assert (task.kind, len(task.items), task.default_metrics) == ("cot", 50, ())
    first = load_heldout("flan_cot:gsm8k:validation")[0]
    assert (task.items[0].prompt, task.items[0].reference, task.items[0].answers) == \
        (first.question, first.response, (first.answer,))


def test_a_flan_cot_pool_used_with_flan_cot_strategyqa_keeps_none_of_its_200_held_out_rows():
    pool = load_pool("flan_cot")
    heldout = {i for item in load_heldout("flan_cot:strategyqa") for i in item.pool_ids}
    own = heldout | {i for item in load_heldout("flan_cot:strategyqa:validation") for i in item.pool_ids} \
        | {e.id for e in load_target("flan_cot:strategyqa").examples}
    assert len(heldout & set(pool.ids)) == 200
    selection = select(pool, 5, make_selector("random"), target=load_target("flan_cot:strategyqa"))
    assert not own & set(selection.pool.ids)
    found = selection.contamination
    assert found.own_rows == len(own) == 275 and own <= set(found.ids)
    assert selection.manifest("alpaca")["contamination"]["own_rows_by_id"] == 275
    other = {e.source for e in selection.pool.examples if e.id in set(found.ids) - own}
    assert other <= {"flan_cot/strategyqa"}  # the n-gram guard found near-copies, not other sources' rows


def test_shared_wording_of_a_dataset_is_not_an_items_n_gram():
    template = "is the claim above correct and can it be verified by human common sense without a web search"
    items = [f"claim: the {animal} is a {kind} animal that lives in the wild. {template}"
             for animal, kind in (("lion", "large"), ("owl", "nocturnal"))]
    dataset = items + [f"claim: some other thing {i} is true. {template}" for i in range(3)]
    plain, templated = HeldOutNgrams(items), HeldOutNgrams(items, templates=dataset)
    pool_text = f"claim: an unrelated sentence about cars. {template}"
    assert plain.overlaps(pool_text) and not templated.overlaps(pool_text)
    assert templated.template_ngrams > 0 and templated.overlaps(f"copied: {items[1]}")


def test_cot_answer_match_reads_the_final_answer_as_flan_writes_it():
    assert cot_answer_match(extract_answer("Step one. So the answer is (C)."), "(C)") == 1.0
    assert cot_answer_match("C", "(C)") == 1.0 and cot_answer_match("(B) 992", "(C)") == 0.0
    assert cot_answer_match(extract_answer("24 + 48 = 72 clips.\nSo the answer is $1,072."), "1072") == 1.0
    assert cot_answer_match("72.0 clips", "72") == 1.0 and cot_answer_match("73", "72") == 0.0
    assert cot_answer_match("Yes", "yes") == 1.0 and cot_answer_match("sentence a", "Sentence A") == 1.0
    assert cot_answer_match("no", "yes") == 0.0 and cot_answer_match("the bloody mess", "bloody mess") == 1.0


def test_flan_cot_measures_the_loss_alone_unless_exact_match_is_asked_for(tiny):
    config = EvalSettings.for_tests()
    loss_only = evaluate(tiny, "flan_cot:creak", limit=2, config=config)
    assert loss_only["kind"] == "cot" and "exact_match" not in loss_only["metrics"]
    assert loss_only["split"][HELDOUT] == 200 and loss_only["available"] == 200
    generated = evaluate(tiny, "flan_cot:creak", limit=2, config=config, metrics=["exact_match"])
    assert generated["primary_metric"] == "exact_match" and generated["answer_stop"] == COT_ANSWER
    assert generated["metrics"]["exact_match"] == 0.0  # a random tiny model says neither yes nor no


def test_influence_evaluate_takes_a_validation_part_and_generates_only_when_a_metric_asks(tiny_model_dir, tmp_path):
    runner = CliRunner()
    common = ["evaluate", "--model", str(tiny_model_dir), "--target", "user_oriented:validation", "--limit", "2",
              "--batch-size", "2", "--max-new-tokens", "4"]
    result = runner.invoke(main, [*common, "--out", str(tmp_path / "loss.json")])
    assert result.exit_code == 0, result.output
    loss = json.loads((tmp_path / "loss.json").read_text())
    assert loss["target"] == "user_oriented:validation" and "exact_match" not in loss["metrics"]
    assert loss["split"]["seed"] == 0 and loss["available"] == 36
    result = runner.invoke(main, [*common, "--metrics", "loss,em", "--out", str(tmp_path / "em.json")])
    assert result.exit_code == 0, result.output
    assert "exact_match" in json.loads((tmp_path / "em.json").read_text())["metrics"]
    result = runner.invoke(main, ["evaluate", "--model", str(tiny_model_dir), "--target", "bbh:validation"])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1].startswith(
        "error: target bbh has no validation split")


def test_compare_on_a_validation_part_selects_clear_of_the_targets_rows_and_evaluates_that_part(tmp_path, monkeypatch):
    import influence.evaluation
    from influence.compare import compare
    from influence.compare.settings import CompareSettings
    from tests.conftest import write_jsonl
    from tests.test_compare import _stand_in_training

    trained = _stand_in_training(monkeypatch)
    asked: list[str] = []
    monkeypatch.setattr(influence.evaluation, "evaluate", lambda model, target, **k: asked.append(target) or {
        "primary_metric": "target_loss", "metrics": {"target_loss": 1.0}, "items": 1, "seconds": 0.0})
    rows = [row for part in (HELDOUT, VALIDATION, SELECTION) for row, _ in flan_cot_parts("strategyqa")[part][:2]]
    planted = [{"instruction": row.question, "output": row.example.output} for row in rows]
    filler = [{"instruction": f"Is {n} an even number?", "output": f"{n} is {'even' if n % 2 == 0 else 'odd'}."}
              for n in range(12)]
    pool = write_jsonl(tmp_path / "pool.jsonl", filler + planted)
    spec = "flan_cot:strategyqa:validation"
    summary = compare(CompareSettings(pools=[str(pool)], targets=[spec], k=3, selectors=["bm25", "longest"], seeds=1,
                                      base=False), tmp_path / "cmp")
    own = {row.example.id for row in rows}
    assert summary["contamination"][spec]["own_rows_by_id"] == 6
    assert trained and all(not any(i in Path(p).read_text() for i in own) for p in trained)
    assert set(asked) == {spec}
