"""The reference protocols: each named target's prompt, answer and metric as LESS's evaluation scripts make them.

The exact strings below were worked out by reading open-instruct's eval/mmlu, eval/bbh and
eval/tydiqa run_eval.py as LESS ships them (with the flags of eval_mmlu.sh, eval_bbh.sh and
eval_tydiqa.sh); the tests check that our prompts are those strings, character for character.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from influence.evaluation import RESULTS_FORMAT, EvalSettings, build_task, evaluate
from influence.evaluation import model_outputs as scoring
from influence.evaluation.encoding import encode_item, item_prompt_text
from influence.evaluation.items import EvalItem
from influence.evaluation.metrics import bbh_reference_answer, bbh_reference_match, exact_match, token_f1
from influence.evaluation.reference import BBH_ANSWER_TOKENS, BBH_PER_TASK, TYDIQA_CONTEXT_TOKENS
from influence.models import LoadedModel
from influence.testing import tiny_llama, tiny_tokenizer

# open-instruct's tulu chat format (eval/templates.py), which eval_tydiqa.sh names, as a chat template
TULU_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
LETTERS = [" A", " B", " C", " D"]


@pytest.fixture(scope="module")
def lettered() -> LoadedModel:
    """A tiny random Llama whose tokenizer has " A".." D" as single tokens, as byte-level BPE tokenizers do."""
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(LETTERS)
    model = tiny_llama(len(tokenizer))
    with torch.no_grad():           # sharper outputs, so that equal numbers mean something
        for param in model.parameters():
            param.mul_(8.0)
    return LoadedModel(model=model, tokenizer=tokenizer, spec="tiny-lettered", weights_sha256="tiny-lettered")


def saved(loaded: LoadedModel, path) -> str:
    loaded.model.save_pretrained(path)
    loaded.tokenizer.save_pretrained(path)
    return str(path)


# ------------------------------------------------------------------ the prompts, exactly
MMLU_ABSTRACT_ALGEBRA_0 = (
    "The following are multiple choice questions (with answers) about  abstract algebra.\n\n"
    "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
    "Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. Statement 2 | If H and K are "
    "subgroups of G then HK is a subgroup of G.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\n"
    "Answer: B\n\n"
    "Statement 1 | Every element of a group generates a cyclic subgroup of the group. Statement 2 | The symmetric "
    "group S_10 has 10 elements.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: C\n\n"
    "Statement 1| Every function from a finite set onto itself must be one to one. Statement 2 | Every subgroup of "
    "an abelian group is abelian.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: A\n\n"
    "Find the characteristic of the ring 2Z.\nA. 0\nB. 3\nC. 12\nD. 30\nAnswer: A\n\n"
    "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
    "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")


def test_mmlu_reference_prompt_is_open_instructs_5_shot_raw_text(lettered):
    item = next(i for i in build_task("mmlu").items if i.subtask == "abstract_algebra")
    assert item_prompt_text(item, lettered.tokenizer, loss=True) == MMLU_ABSTRACT_ALGEBRA_0   # no chat markers
    encoded = encode_item(item, lettered.tokenizer)
    scored = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != -100]
    assert lettered.tokenizer.decode(scored) == " B" and len(scored) == 1                  # one letter's token


BBH_SPORTS_0 = (
    "Determine whether an artificially constructed sentence relating to sports is plausible or not.\n\n"
    "Q: Is the following sentence plausible? \"Bam Adebayo scored a reverse layup in the Western Conference "
    "Finals.\"\nA: Let's think step by step. Bam Adebayo is an American basketball player. Scoring a reverse layup "
    "in the Western Conference Finals is part of the NBA Finals. So the answer is yes.\n\n"
    "Q: Is the following sentence plausible? \"Santi Cazorla scored a touchdown.\"\nA: Let's think step by step. "
    "Santi Cazorla is a soccer player. Touchdown is part of American football and rugby. So the answer is no.\n\n"
    "Q: Is the following sentence plausible? \"DeMar DeRozan was called for the goal tend.\"\nA: Let's think step "
    "by step. DeMar DeRozan is an American basketball player. Goal tending is part of basketball. So the answer "
    "is yes.\n\n"
    "Q: Is the following sentence plausible? \"Elias Lindholm beat the buzzer.\"\nA:")


def test_bbh_reference_prompt_is_the_3_shot_chain_of_thought_as_raw_text(lettered):
    item = next(i for i in build_task("bbh").items if i.subtask == "sports_understanding")
    tokenizer = lettered.tokenizer
    assert item_prompt_text(item, tokenizer) == BBH_SPORTS_0                      # what generation continues
    # the target loss reads the exemplars' answer phrase, then scores the answer alone
    assert item_prompt_text(item, tokenizer, loss=True) == BBH_SPORTS_0 + " So the answer is"
    encoded = encode_item(item, tokenizer)
    assert tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != -100]) == " no"


TYDIQA_ENGLISH = (
    "<|user|>\n"
    "Answer the following question based on the information in the given passage.\n\n"
    "Passage: Home Box Office (HBO) is an American premium cable and satellite television network that is owned "
    "by the namesake unit Home Box Office, Inc., a division of AT&T's WarnerMedia. The program which featured on "
    "the network consists primarily of theatrically released motion pictures and original television shows, along "
    "with made-for-cable movies, documentaries and occasional comedy and concert specials.\n"
    "Question: Who owns HBO?\nAnswer: Home Box Office\n\n"
    "Passage: {passage}\nQuestion: Where is the Eiffel Tower?\n"
    "\n<|assistant|>\nAnswer:")


def test_tydiqa_reference_prompt_is_the_languages_1_shot_template_as_a_chat_turn(lettered, tmp_path):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = TULU_TEMPLATE
    passage = "The Eiffel Tower stands in Paris. " * 20                       # 680 characters: one token each
    goldp = {"data": [{"paragraphs": [{"context": passage, "qas": [
        {"id": "english-7", "question": "Where is the Eiffel Tower?", "answers": [{"text": "Paris"}]}]}]}]}
    (tmp_path / "dev.json").write_text(json.dumps(goldp))
    task = build_task(str(tmp_path / "dev.json"))
    assert task.protocol == "reference" and task.stop == r"\n"
    item = task.fitted(task.items, tokenizer, 2048)[0]
    cut = passage[:TYDIQA_CONTEXT_TOKENS]                                      # passages cut to 512 tokens
    assert item_prompt_text(item, tokenizer) == TYDIQA_ENGLISH.format(passage=cut)
    encoded = encode_item(item, tokenizer)
    assert tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != -100]) == " Paris"
    # the chat protocol keeps the generic question-answering turn
    assert "Question: Who owns HBO?" not in build_task(str(tmp_path / "dev.json"), protocol="chat").items[0].prompt


def test_mmlu_drops_shots_until_the_prompt_and_answer_fit(lettered):
    from influence.evaluation.reference import mmlu_prompt
    from influence.data.targets import mmlu_dev

    task = build_task("mmlu")
    item = next(i for i in task.items if i.subtask == "abstract_algebra")
    row = ["Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.", "0", "4", "2", "6",
           "B"]
    dev = mmlu_dev()["abstract_algebra"]
    sizes = {k: len(encode_item(replace(item, prompt=mmlu_prompt("abstract_algebra", dev[:k], row)),
                                lettered.tokenizer).input_ids) for k in range(6)}
    assert sizes[5] > sizes[3] > sizes[2]
    for budget, shots in ((sizes[5], 5), (sizes[5] - 1, 4), (sizes[3], 3), (sizes[3] - 1, 2), (10, 0)):
        fitted = task.fitted([item], lettered.tokenizer, budget)[0]
        assert fitted.prompt == mmlu_prompt("abstract_algebra", dev[:shots], row)
        assert fitted.prompt.count("\nAnswer: ") == shots


# ------------------------------------------------------------------ what the reference scripts read and score
def test_bbh_answer_read_after_so_the_answer_is_and_matched_ignoring_case_and_punctuation():
    cot = "Let's think step by step. So the answer is (B). Then again, So the answer is (C)."
    assert bbh_reference_answer(cot) == "(B)"                                 # the first, up to its period
    assert bbh_reference_answer("  valid\n\nQ: next") == "valid"             # no phrase: the first paragraph
    assert bbh_reference_answer("so the answer is yes.") == "so the answer is yes."   # the phrase is case-sensitive
    assert bbh_reference_match("(b)", "(B)") == bbh_reference_match("Yes!", "yes") == 1.0
    assert bbh_reference_match("(B) dog", "(B)") == bbh_reference_match("no", "yes") == 0.0


def test_tydiqa_scores_as_the_squad_v1_script_does():
    assert exact_match("«Paris»", "paris") == 1.0                  # our general normalisation: any punctuation
    assert exact_match("«Paris»", "paris", squad=True) == 0.0      # SQuAD v1.1: ASCII punctuation only
    assert exact_match("The Paris!", "paris", squad=True) == 1.0
    assert token_f1("", "", squad=True) == 0.0 and token_f1("", "") == 1.0
    assert token_f1("in Paris France", ["paris", "x"], squad=True) == pytest.approx(0.5)


def test_bbh_takes_40_items_per_task_unless_limited():
    task = build_task("bbh")
    items = task.subset(None, seed=0)
    per_task = {name: sum(i.subtask == name for i in items) for name in {i.subtask for i in task.items}}
    assert set(per_task.values()) == {BBH_PER_TASK} and len(items) == 27 * BBH_PER_TASK
    assert items == task.subset(None, seed=0) != task.subset(None, seed=1)
    assert len(task.subset(27, seed=0)) == 27


# ------------------------------------------------------------------ batching
def mixed_items() -> list[EvalItem]:
    """Four MMLU items of one subject (a shared 2-shot context) and six one-item subtasks sharing nothing."""
    mmlu = [i for i in build_task("mmlu", mmlu_shots=2).items if i.subtask == "anatomy"][:4]
    loose = [EvalItem(subtask=f"s{i}", prompt=f"{'xyzw'[i % 4] * (i + 1)} question {i}?", reference=f"answer {i}")
             for i in range(6)]
    return mmlu + loose


def test_items_sharing_no_prefix_are_batched_across_subtasks(lettered, monkeypatch):
    items = mixed_items()
    ids = [encode_item(item, lettered.tokenizer).input_ids for item in items]
    groups = scoring._subtask_groups(items)
    limits = [min(len(ids[r]) for r in group) - 2 for group in groups]
    shared, loose = scoring.plan_groups(ids, groups, limits, True)
    assert [group for group, _ in shared] == [[0, 1, 2, 3]] and sorted(loose) == [4, 5, 6, 7, 8, 9]
    batches = []
    original = scoring._batch_logits
    monkeypatch.setattr(scoring, "_batch_logits", lambda model, rows, batch, *rest: (
        batches.append(sorted(batch)), original(model, rows, batch, *rest))[1])
    scoring.reference_scores(lettered.model, lettered.tokenizer, items, max_length=4096, batch_size=3)
    assert len(batches) == 2 + 2                        # 4 items after their prefix, then 6 loose ones by threes
    assert any(len({items[r].subtask for r in batch}) == 3 for batch in batches)


def test_target_loss_and_option_scores_do_not_depend_on_batching(lettered):
    items = mixed_items()
    single = scoring.reference_scores(lettered.model, lettered.tokenizer, items, max_length=4096, batch_size=1,
                                      reuse_prefix=False)
    batched = scoring.reference_scores(lettered.model, lettered.tokenizer, items, max_length=4096, batch_size=4)
    assert batched.tokens == single.tokens and single.tokens[:4] == [1, 1, 1, 1]
    torch.testing.assert_close(torch.tensor(batched.nll), torch.tensor(single.nll), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(batched.option_loglik[:4]), torch.tensor(single.option_loglik[:4]),
                               rtol=1e-5, atol=1e-5)
    answers = [scoring.generate_answers(lettered.model, lettered.tokenizer, items, max_new_tokens=6, max_length=4096,
                                        batch_size=size, reuse_prefix=size > 1) for size in (1, 4)]
    assert answers[0] == answers[1]


# ------------------------------------------------------------------ the command, per target
def run_cli(args: list[str]) -> dict:
    from influence.cli import main

    result = CliRunner().invoke(main, ["evaluate", *args])
    assert result.exit_code == 0, result.output
    return json.loads(open(args[args.index("--out") + 1]).read())


def test_cli_mmlu_limit_20_scores_one_letter_each_with_the_plain_5_shot_prompt(lettered, tmp_path):
    model = saved(lettered, tmp_path / "model")
    results = run_cli(["--model", model, "--target", "mmlu", "--limit", "20", "--out", str(tmp_path / "m.json")])
    assert results["protocol"] == "reference" and results["format_version"] == RESULTS_FORMAT == 2
    assert results["items"] == 20 and results["metrics"]["reference_tokens"] == 20
    assert 0.0 <= results["metrics"]["accuracy"] <= 1.0 and "5-shot raw text" in results["notes"][0]
    chat = run_cli(["--model", model, "--target", "mmlu", "--limit", "20", "--protocol", "chat", "--metrics", "loss",
                    "--out", str(tmp_path / "c.json")])
    assert chat["protocol"] == "chat" and "accuracy" not in chat["metrics"]          # --metrics loss: no accuracy
    assert chat["metrics"]["target_loss"] != results["metrics"]["target_loss"]


def test_cli_bbh_limit_27_runs_the_3_shot_chain_of_thought_and_reports_exact_match(lettered, tmp_path):
    model = saved(lettered, tmp_path / "model")
    results = run_cli(["--model", model, "--target", "bbh", "--limit", "27", "--max-new-tokens", "12",
                       "--out", str(tmp_path / "b.json")])
    assert results["protocol"] == "reference" and results["cot"] is True and results["items"] == 27
    assert results["primary_metric"] == "exact_match" and 0.0 <= results["metrics"]["exact_match"] <= 1.0
    assert results["answer_tokens"] == 12 and "3-shot chain of thought" in results["notes"][0]
    assert results["answer_stop"] == r"\n\n" and set(results["subtask_mean"]) == {"exact_match"}


def test_bbh_answers_up_to_the_references_512_tokens(lettered):
    results = evaluate(lettered, "bbh", limit=1, config=EvalSettings(progress=False))
    assert results["answer_tokens"] == BBH_ANSWER_TOKENS == 512
    assert results["settings"]["protocol"] == "reference"


def test_cli_tydiqa_asks_each_language_in_its_own_1_shot_template(lettered, tmp_path):
    model = saved(lettered, tmp_path / "model")
    results = run_cli(["--model", model, "--target", "tydiqa", "--out", str(tmp_path / "t.json")])
    assert results["protocol"] == "reference" and results["primary_metric"] == "f1"
    assert set(results["subtasks"]) == {"arabic", "finnish", "indonesian", "telugu"}
    assert {"exact_match", "f1"} <= set(results["metrics"]) and results["answer_tokens"] == 50
    prompts = {i.subtask: i.prompt for i in build_task("tydiqa").items}
    assert prompts["finnish"].startswith("Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.\n\n"
                                         "Kappale: ")


def test_cli_rejects_unknown_metrics_and_protocols_before_any_work(tmp_path):
    from influence.cli import main

    runner = CliRunner()
    unknown = "error: unknown metric(s) bleu; choose from loss, accuracy, em, f1"
    for args, message in ((["--metrics", "loss,bleu"], unknown), (["--protocol", "lm-eval"], "error: ")):
        result = runner.invoke(main, ["evaluate", "--target", "mmlu", "--model", str(tmp_path / "absent"), *args])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    help_text = runner.invoke(main, ["evaluate", "--help"]).output
    assert "a file: loss only" in help_text and "reference" in help_text and "chat" in help_text


def test_a_prefix_every_item_shares_runs_once_and_the_items_batch_across_subtasks(lettered, monkeypatch):
    # a chat template's system prompt: 40 tokens every item starts with, then nothing a subtask shares
    system = "You are a careful assistant. Answer briefly. "[:40]
    items = [EvalItem(subtask=f"app{i}", prompt=f"{system}{'abcdef'[i]} item {i}?", reference=f"answer {i}", chat=False)
             for i in range(6)]
    ids = [encode_item(item, lettered.tokenizer).input_ids for item in items]
    groups = scoring._subtask_groups(items)
    limits = [min(len(ids[r]) for r in group) - 2 for group in groups]
    shared, loose = scoring.plan_groups(ids, groups, limits, True)
    assert loose == [] and len(shared) == 1 and sorted(shared[0][0]) == list(range(6))
    assert shared[0][1] >= scoring.MIN_SHARED_PREFIX
    batches = []
    original = scoring._batch_logits
    monkeypatch.setattr(scoring, "_batch_logits", lambda model, rows, batch, *rest: (
        batches.append(sorted(batch)), original(model, rows, batch, *rest))[1])
    fast = scoring.reference_scores(lettered.model, lettered.tokenizer, items, max_length=4096, batch_size=3)
    assert len(batches) == 2                             # six one-item subtasks in two batches, not six
    slow = scoring.reference_scores(lettered.model, lettered.tokenizer, items, max_length=4096, batch_size=1,
                                    reuse_prefix=False)
    assert fast.nll == pytest.approx(slow.nll, rel=1e-4) and fast.tokens == slow.tokens
