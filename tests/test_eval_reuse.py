"""Evaluation that reuses work: a subtask's shared prompt prefix run once, cached greedy decoding, stops.

Each fast path is checked against the plain computation it replaces: every item's full
sequence on its own (target loss, option log-likelihoods) and `generate` one item at a time
without a cache (greedy answers).
"""

from __future__ import annotations

import re

import pytest
import torch

from influence.evaluation import EvalSettings as EvalConfig
from influence.evaluation import build_task, evaluate
from influence.evaluation import model_outputs as scoring
from influence.evaluation.evaluate import answer_caps
from influence.evaluation.encoding import encode_item, item_prompt_ids
from influence.evaluation.tasks import ANSWER_LINE, COT_ANSWER, EvalItem
from influence.models import LoadedModel
from influence.testing import tiny_model_and_tokenizer


@pytest.fixture(scope="module")
def sharp() -> LoadedModel:
    """A tiny random Llama with weights scaled up, so its outputs vary with the input (equal answers mean something)."""
    model, tokenizer = tiny_model_and_tokenizer()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(8.0)
    return LoadedModel(model=model, tokenizer=tokenizer, spec="tiny-llama-sharp", weights_sha256="tiny-sharp")


@pytest.fixture
def prefixes_run(monkeypatch) -> list[int]:
    """The length of every shared prefix run, so a test can tell that the fast path was taken."""
    lengths: list[int] = []
    original = scoring.encode_prefix

    def spy(model, ids):
        lengths.append(len(ids))
        return original(model, ids)

    monkeypatch.setattr(scoring, "encode_prefix", spy)
    return lengths


def mmlu_items(per_subject: int, subjects: int = 2, shots: int = 2, protocol: str = "chat") -> list[EvalItem]:
    """MMLU items as chat turns by default: their options are single tokens, scored in the loss pass."""
    task = build_task("mmlu", mmlu_shots=shots, protocol=protocol)
    names = list(dict.fromkeys(item.subtask for item in task.items))[:subjects]
    return [item for name in names for item in [i for i in task.items if i.subtask == name][:per_subject]]


def test_shared_prefix_gives_the_full_sequence_target_loss_and_mmlu_accuracy(sharp, prefixes_run):
    from influence.evaluation.metrics import choose_option

    items = mmlu_items(per_subject=5)
    common = {"max_length": 4096, "batch_size": 3}
    plain = scoring.reference_scores(sharp.model, sharp.tokenizer, items, reuse_prefix=False, **common)
    assert prefixes_run == []
    fast = scoring.reference_scores(sharp.model, sharp.tokenizer, items, reuse_prefix=True, **common)
    context = len(items[0].prompt.rsplit("\n\n", 1)[0])            # the 2-shot context, one token a character
    assert len(prefixes_run) == 2 and min(prefixes_run) > context   # once per subject, context and chat markers
    assert fast.tokens == plain.tokens
    torch.testing.assert_close(torch.tensor(fast.nll), torch.tensor(plain.nll), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(fast.option_loglik), torch.tensor(plain.option_loglik),
                               rtol=1e-5, atol=1e-5)
    chosen = [[choose_option(s, item.options) for s, item in zip(scores.option_loglik, items)]
              for scores in (plain, fast)]
    assert chosen[0] == chosen[1] and len(set(chosen[0])) > 1     # the same choices, and not a constant one
    accuracy = [sum(c == item.reference for c, item in zip(picks, items)) / len(items) for picks in chosen]
    assert accuracy[0] == accuracy[1]


def test_prompts_cut_to_max_length_still_score_as_their_full_sequence(sharp):
    items = mmlu_items(per_subject=4, subjects=1)
    shortest = min(len(encode_item(i, sharp.tokenizer).input_ids) for i in items)
    common = {"max_length": shortest - 40, "batch_size": 2}         # every item loses its oldest tokens
    plain = scoring.reference_scores(sharp.model, sharp.tokenizer, items, reuse_prefix=False, **common)
    fast = scoring.reference_scores(sharp.model, sharp.tokenizer, items, reuse_prefix=True, **common)
    assert plain.truncated == fast.truncated == len(items)
    torch.testing.assert_close(torch.tensor(fast.nll), torch.tensor(plain.nll), rtol=1e-5, atol=1e-5)


def test_multi_token_options_scored_after_a_shared_prefix(sharp, prefixes_run):
    items = [EvalItem(subtask="s", prompt="Pick the best word for the blank in this long shared instruction. "
                      f"Sentence {i}: the {'cat dog'[i % 2::2]} sat on the ___.", reference="mat",
                      options=("mat", "roof top", "x")) for i in range(4)]
    common = {"max_length": 512, "batch_size": 3}
    plain = scoring.option_logliks(sharp.model, sharp.tokenizer, items, reuse_prefix=False, **common)
    fast = scoring.option_logliks(sharp.model, sharp.tokenizer, items, reuse_prefix=True, **common)
    assert prefixes_run and prefixes_run[0] > len("Pick the best word for the blank")
    torch.testing.assert_close(torch.tensor(fast), torch.tensor(plain), rtol=1e-5, atol=1e-5)


def one_at_a_time(loaded: LoadedModel, items: list[EvalItem], budget: int, stop: str | None) -> list[str]:
    """The plain reference: `generate` per item, no cache, no padding, cut where the stop pattern first matches."""
    tokenizer, answers = loaded.tokenizer, []
    pattern = re.compile(stop, re.IGNORECASE) if stop else None
    for item in items:
        ids = item_prompt_ids(item, tokenizer)
        output = loaded.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                                       dtype=torch.long), max_new_tokens=budget, do_sample=False, use_cache=False,
                                       pad_token_id=tokenizer.pad_token_id)
        new = output[0, len(ids):].tolist()
        new = new[:next((i for i, t in enumerate(new) if t == tokenizer.eos_token_id), len(new))]
        text = tokenizer.decode(new, skip_special_tokens=True)
        for end in range(1, len(new) + 1):        # the first new token after which the text matches
            found = pattern.search(tokenizer.decode(new[:end], skip_special_tokens=True)) if pattern else None
            if found:
                text = tokenizer.decode(new[:end], skip_special_tokens=True)[:found.end()]
                break
        answers.append(text)
    return answers


@pytest.mark.parametrize("stop", [None, r"[0-9]"], ids=["to-budget", "at-a-digit"])
def test_batched_cached_greedy_answers_equal_generating_each_item_alone(sharp, prefixes_run, stop):
    shots = "Q: 2 + 2?\nA: 4\n\nQ: capital of France?\nA: Paris\n\n"
    items = [EvalItem(subtask=name, prompt=shots + f"Q: item {i} {'xyz'[i % 3] * i}?\nA:", reference="x")
             for name, numbers in (("a", range(5)), ("b", range(5, 9))) for i in numbers]
    expected = one_at_a_time(sharp, items, 24, stop)
    assert len(set(expected)) > 3                                    # the answers depend on the question
    if stop:
        assert sum(answer[-1:].isdigit() for answer in expected) >= 2  # some answers ended at the stop
    for reuse in (True, False):
        answers = scoring.generate_answers(sharp.model, sharp.tokenizer, items, max_new_tokens=24, max_length=512,
                                           batch_size=3, stop=stop, reuse_prefix=reuse)
        assert answers == expected
    assert len(prefixes_run) == 1 and min(prefixes_run) > len(shots)  # both subtasks share the shots: run once


def test_stop_patterns_end_an_answer_where_the_metric_reads_it():
    from influence.evaluation.metrics import extract_answer

    def cut(pattern: str, text: str) -> str | None:
        found = re.compile(pattern, re.IGNORECASE).search(text)
        return text[:found.end()] if found else None

    assert cut(ANSWER_LINE, "Paris\nQuestion: next") == "Paris\n"
    assert cut(ANSWER_LINE, "\n  Paris\nmore") == "\n  Paris\n"                 # leading blank lines skipped
    assert cut(ANSWER_LINE, "The answer is:\nParis\nmore") == "The answer is:\nParis\n"   # a lead-in continues
    assert cut(ANSWER_LINE, "Paris") is None                                     # not finished yet
    cot = "A is before B.\nSo the answer is (B).\n\nQ: another\nSo the answer is (C).\n"
    assert cut(COT_ANSWER, cot) == "A is before B.\nSo the answer is (B).\n"
    assert extract_answer(cut(COT_ANSWER, cot)) == "(B)"
    assert cut(COT_ANSWER, "step one\n\nQ: a new question") == "step one\n\nQ:"
    tasks = {name: build_task(name, protocol="chat") for name in ("bbh", "tydiqa")}
    assert tasks["bbh"].stop == tasks["tydiqa"].stop == ANSWER_LINE
    assert build_task("bbh", cot=True, protocol="chat").stop == COT_ANSWER
    assert build_task("mmlu", mmlu_shots=0).stop is None


def test_answer_caps_follow_each_subtasks_longest_answer(sharp):
    task = build_task("bbh", protocol="chat")
    caps = answer_caps(task, sharp.tokenizer, limit=1000)
    longest = max(len(a) for item in task.items if item.subtask == "word_sorting" for a in item.answers)
    assert caps["word_sorting"] == longest + 16                          # one token a character
    assert caps["boolean_expressions"] == len("False") + 16
    assert answer_caps(task, sharp.tokenizer, limit=20)["word_sorting"] == 20


def test_evaluate_gives_the_same_results_with_and_without_prefix_reuse(sharp, prefixes_run):
    runs = [evaluate(sharp, "bbh", limit=40, seed=1, config=EvalConfig.for_tests(reuse_prefix=reuse, protocol="chat"))
            for reuse in (True, False)]
    fast, plain = ({"loss": [p["target_loss"] for p in r["predictions"]],
                    "answers": [p["prediction"] for p in r["predictions"]]} for r in runs)
    assert len(prefixes_run) >= 4                                   # subtasks with several items shared them
    assert fast["answers"] == plain["answers"]
    torch.testing.assert_close(torch.tensor(fast["loss"]), torch.tensor(plain["loss"]), rtol=1e-5, atol=1e-5)
    assert runs[0]["answer_stop"] == ANSWER_LINE and runs[0]["settings"]["reuse_prefix"] is True


def test_a_lora_wrapped_model_shares_prefixes_too(sharp, prefixes_run):
    import copy

    from influence.lora import LoraSettings, add_lora, lora_parameters

    model = add_lora(copy.deepcopy(sharp.model), LoraSettings(r=4, alpha=8, dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():                                            # a trained-looking adapter, not a no-op
        for _, param in lora_parameters(model):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.eval()
    items = mmlu_items(per_subject=3, subjects=1, shots=1)
    common = {"max_length": 2048, "batch_size": 2}
    plain = scoring.reference_scores(model, sharp.tokenizer, items, reuse_prefix=False, **common)
    fast = scoring.reference_scores(model, sharp.tokenizer, items, reuse_prefix=True, **common)
    torch.testing.assert_close(torch.tensor(fast.nll), torch.tensor(plain.nll), rtol=1e-5, atol=1e-5)
    answers = [scoring.generate_answers(model, sharp.tokenizer, items, max_new_tokens=6, max_length=2048,
                                        batch_size=2, reuse_prefix=reuse) for reuse in (True, False)]
    assert answers[0] == answers[1] and len(prefixes_run) == 2


def test_cli_evaluate_with_and_without_prefix_reuse(tiny_model_dir, tmp_path):
    import json

    from click.testing import CliRunner

    from influence.cli import main

    records = [{"question": f"In the long shared passage about rivers and hills, what is item {i}?",
                "answers": [f"item {i}"], "subtask": "rivers"} for i in range(4)]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    losses = {}
    for flag in ("--reuse-prefix", "--no-reuse-prefix"):
        out = tmp_path / f"{flag}.json"
        result = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_model_dir), "--target", str(data),
                                           "--batch-size", "3", "--max-new-tokens", "4", flag, "--out", str(out)])
        assert result.exit_code == 0, result.output
        saved = json.loads(out.read_text())
        assert saved["settings"]["reuse_prefix"] is (flag == "--reuse-prefix")
        losses[flag] = [p["target_loss"] for p in saved["predictions"]]
    torch.testing.assert_close(torch.tensor(losses["--reuse-prefix"]), torch.tensor(losses["--no-reuse-prefix"]),
                               rtol=1e-5, atol=1e-5)
