"""Evaluation: metrics on hand-made cases, a rigged MMLU item, train-then-evaluate, files, the CLIs."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from influence.errors import ConfigError, EvaluationError, UnknownNameError
from influence.evaluation import (
    EvalSettings as EvalConfig,
    accuracy,
    bbh_match,
    build_task,
    evaluate,
    exact_match,
    extract_answer,
    format_table,
    normalize_answer,
    token_f1,
    write_results,
)
from influence.evaluation.model_outputs import option_logliks, reference_scores
from influence.models import LoadedModel
from influence.testing import tiny_model_and_tokenizer

TRAIN_RECORDS = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "five"},
    {"instruction": "Say hello.", "input": "", "output": "hello there"},
    {"instruction": "Opposite of up?", "input": "", "output": "down", "subtask": "antonyms"},
]


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    model, tokenizer = tiny_model_and_tokenizer()
    return LoadedModel(model=model, tokenizer=tokenizer, spec="tiny-llama", weights_sha256="tiny-llama-seed0")


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ------------------------------------------------------------------ metrics
def test_exact_match_and_f1_on_fixed_strings():
    assert normalize_answer("  The Cat, sat!  ") == "cat sat"
    assert exact_match("the cat.", ["A cat"]) == 1.0
    assert exact_match("cat", "dog") == 0.0
    assert token_f1("the cat sat", "cat sat down") == pytest.approx(0.8)   # P=1, R=2/3
    assert token_f1("cat", ["dog", "a cat"]) == 1.0                        # best reference
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "cat") == 0.0
    assert exact_match("«Париж»", "париж") == 1.0                          # punctuation in any script


def test_answer_extraction_and_bbh_match():
    cot = "Let's think step by step.\nA is before B. So the answer is (B).\n\nQ: another question"
    assert extract_answer(cot) == "(B)"
    assert extract_answer("True\nbecause reasons") == "True"
    assert extract_answer("  \nvalid.") == "valid"
    assert bbh_match("true.", "True") == 1.0 and bbh_match("(A)", "(B)") == 0.0
    assert bbh_match("(B) tiny purple dog", "(B)") == 1.0 and bbh_match("The answer: (C), not (B)", "(B)") == 0.0
    assert accuracy(["A", "B", "C"], ["A", "C", "C"]) == pytest.approx(2 / 3)


# ------------------------------------------------------------------ MMLU by option log-likelihood
def test_mmlu_picks_the_option_whose_log_likelihood_is_rigged(tiny):
    letter_c = tiny.tokenizer("C", add_special_tokens=False)["input_ids"][0]

    def favour_c(module, inputs, output):
        output = output.clone()
        output[..., letter_c] += 50.0
        return output

    config = EvalConfig.for_tests(mmlu_shots=1)
    handle = tiny.model.lm_head.register_forward_hook(favour_c)
    try:
        results = evaluate(tiny, "mmlu", limit=8, seed=3, config=config)
    finally:
        handle.remove()
    predictions = results["predictions"]
    assert {p["prediction"] for p in predictions} == {"C"}
    expected = sum(p["reference"] == "C" for p in predictions) / len(predictions)
    assert results["metrics"]["accuracy"] == pytest.approx(expected)
    assert results["items"] == 8 and results["available"] == 14042
    # the one-pass scoring of single-token options equals scoring each option as a continuation
    items = build_task("mmlu", mmlu_shots=0).subset(3, seed=1)
    fast = reference_scores(tiny.model, tiny.tokenizer, items, max_length=4096, batch_size=2).option_loglik
    slow = option_logliks(tiny.model, tiny.tokenizer, items, max_length=4096, batch_size=3)
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(slow), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ tasks
def test_held_out_items_exclude_the_selection_examples_and_subsets_are_seeded():
    from influence.data import load_target

    task = build_task("bbh")
    shot_questions = {e.instruction.split("\n\nQ: ", 1)[1] for e in load_target("bbh").examples}
    assert not any(item.prompt.split("\n\nQ: ", 1)[1] in shot_questions for item in task.items)
    cot_item = build_task("bbh", cot=True).items[0]
    assert cot_item.prompt.count("\n\nQ: ") == 4                            # 3 exemplars and the question
    assert task.subset(20, seed=1) == task.subset(20, seed=1) != task.subset(20, seed=2)
    with pytest.raises(EvaluationError, match="--limit must be positive"):
        task.subset(0, seed=0)
    mmlu = build_task("mmlu").items[0]
    assert mmlu.prompt.count("\nAnswer:") == 6 and mmlu.options == ("A", "B", "C", "D")
    assert "4 held-out items ship" in build_task("tydiqa").notes[0]


def test_question_answering_files_in_squad_and_jsonl_form(tiny, tmp_path):
    squad = {"data": [{"paragraphs": [{"context": "Paris is the capital of France.", "qas": [
        {"id": "english-1", "question": "What is the capital of France?", "answers": [{"text": "Paris"}]}]}]}]}
    (tmp_path / "dev.json").write_text(json.dumps(squad))
    task = build_task(str(tmp_path / "dev.json"))
    assert task.kind == "qa" and task.items[0].answers == ("Paris",) and task.items[0].subtask == "english"
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "2+2?", "answers": ["4", "four"]}])
    results = evaluate(tiny, str(path), config=EvalConfig.for_tests(), metrics=["exact_match", "f1"])
    assert results["kind"] == "qa" and set(results["metrics"]) >= {"f1", "exact_match", "target_loss"}
    assert "f1" not in evaluate(tiny, str(path), config=EvalConfig.for_tests())["metrics"]  # a file: loss only


# ------------------------------------------------------------------ train, then evaluate
def test_training_lowers_the_training_data_loss(tiny, tmp_path):
    from influence.training import TrainSettings as TrainConfig, train

    data = write_jsonl(tmp_path / "train.jsonl", TRAIN_RECORDS)
    before = evaluate(tiny, str(data), config=EvalConfig.for_tests())
    assert before["kind"] == "generation" and before["metrics"]["n"] == 4
    assert set(before["subtasks"]) == {"antonyms", "default"}
    run = train(data, TrainConfig.for_tests(epochs=3), tmp_path / "run", loaded=tiny)
    from influence.training import load_trained

    after = evaluate(load_trained(run.out_dir, base=tiny), str(data), config=EvalConfig.for_tests())
    assert after["metrics"]["target_loss"] < before["metrics"]["target_loss"] - 0.1
    table = format_table(after)
    assert "overall" in table and "target_loss" in table and len(table.splitlines()) < 25
    written = json.loads(write_results(after, tmp_path / "r.json").read_text())
    assert written["metrics"]["n"] == 4 and len(written["predictions"]) == 4


def test_cli_train_then_evaluate_a_saved_model(tiny, tmp_path):
    from influence.cli import main

    model_dir = tmp_path / "tiny-model"
    tiny.model.save_pretrained(model_dir)
    tiny.tokenizer.save_pretrained(model_dir)
    data = write_jsonl(tmp_path / "train.jsonl", TRAIN_RECORDS)
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--data", str(data), "--model", str(model_dir), "--epochs", "1",
                                  "--lr", "0.01", "--batch-size", "2", "--micro-batch-size", "1",
                                  "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
    result = runner.invoke(main, ["evaluate", "--model", str(tmp_path / "run"), "--target", str(data),
                                  "--batch-size", "2", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "eval-train.jsonl.json").exists() and "overall" in result.output
    result = runner.invoke(main, ["evaluate", "--model", str(model_dir), "--target", "nonsense"])
    assert result.exit_code == 2 and "unknown evaluation target" in result.output


def test_bad_input_gets_a_clear_error(tiny, tmp_path):
    with pytest.raises(UnknownNameError, match="choose one of: bbh, flan_cot:aqua, .*, mmlu, tydiqa, user_oriented$"):
        evaluate(tiny, "no-such-target")
    with pytest.raises(ConfigError, match="mmlu_shots"):
        EvalConfig(mmlu_shots=7)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(EvaluationError, match="malformed JSON"):
        build_task(str(tmp_path / "broken.json"))
    with pytest.raises(EvaluationError, match="expected a model spec"):
        evaluate(42, "tydiqa")


# ------------------------------------------------------------------ answer-only target loss
@pytest.mark.parametrize("kind_item", [
    ("choice", dict(subtask="anatomy", prompt="Q?\nA. x\nB. y\nC. z\nD. w\nAnswer:", reference="C",
                    answers=("C",), options=("A", "B", "C", "D"))),
    ("bbh", dict(subtask="navigate", prompt="Q: Do you return?\nA: Let's think step by step.",
                 reference="Yes", answers=("Yes",))),
    ("qa", dict(subtask="english", prompt="Passage: the sky is blue.\nQuestion: colour?", reference="blue",
                answers=("blue", "Blue"))),
    ("generation", dict(subtask="mail", prompt="Write a two-word greeting.", reference="Hello there.",
                        answers=("Hello there.",))),
], ids=lambda kind_item: kind_item[0])
def test_the_target_loss_scores_the_answer_tokens_and_no_end_of_turn_marker(tiny, kind_item):
    from influence.evaluation.tasks import EvalItem

    item = EvalItem(**kind_item[1])
    scores = reference_scores(tiny.model, tiny.tokenizer, [item], max_length=512, batch_size=1)
    answer_tokens = len(tiny.tokenizer(item.reference, add_special_tokens=False)["input_ids"])
    # the character tokenizer gives one token a character: "<|end|>" or "</s>" would add one more
    assert scores.tokens == [answer_tokens] == [len(item.reference)]
