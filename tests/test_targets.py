"""Targets: LESS's few-shot sets by subtask, held-out splits kept apart, custom files."""

from __future__ import annotations

import pytest

from influence.data import Example, load_heldout, load_target
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


def _rendered(example):
    """(prompt, scored response) through the tiny tokenizer's chat template, and the scored text."""
    from influence.data.formatting import IGNORE_INDEX, encode_example, prompt_text, response_text
    from influence.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    encoded = encode_example(example, tokenizer, max_length=100_000)
    scored = tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])
    return prompt_text(example, tokenizer), response_text(example, tokenizer), scored


def test_bbh_target_is_lesss_format_the_other_two_exemplars_then_the_question():
    example = next(e for e in load_target("bbh").examples if e.subtask == "sports_understanding"
                   and "Bam Adebayo" in e.instruction.rsplit("\n\nQ: ", 1)[1])
    query = (
        "Determine whether an artificially constructed sentence relating to sports is plausible or not.\n\n"
        "Q: Is the following sentence plausible? \"Santi Cazorla scored a touchdown.\"\n"
        "A: Let's think step by step. Santi Cazorla is a soccer player. Touchdown is part of American football "
        "and rugby. So the answer is no.\n\n"
        "Q: Is the following sentence plausible? \"DeMar DeRozan was called for the goal tend.\"\n"
        "A: Let's think step by step. DeMar DeRozan is an American basketball player. Goal tending is part of "
        "basketball. So the answer is yes.\n\n"
        "Q: Is the following sentence plausible? \"Bam Adebayo scored a reverse layup in the Western Conference "
        "Finals.\"")
    answer = (" Let's think step by step. Bam Adebayo is an American basketball player. Scoring a reverse layup "
              "in the Western Conference Finals is part of the NBA Finals. So the answer is yes.")
    assert (example.instruction, example.response_prefix, example.output) == (query, "A:", answer)
    prompt, response, scored = _rendered(example)
    assert prompt == f"<|user|>{query}<|end|><|assistant|>A:"
    assert response == scored == answer  # "A:" is read, not scored; no end-of-turn marker, as in LESS


def test_mmlu_target_is_lesss_zero_shot_format():
    example = next(e for e in load_target("mmlu").examples if e.subtask == "global_facts")
    query = ("The following are multiple choice questions (with answers) about  global facts.\n\n"
             "Which of the following pairs of statements are both true (as of 2019)?\n"
             "A. People tend to be optimistic about their own future and the future of their nation or the world.\n"
             "B. People tend to be optimistic about their own future but pessimistic about the future of their "
             "nation or the world.\n"
             "C. People tend to be pessimistic about their own future but optimistic about the future of their "
             "nation or the world.\n"
             "D. People tend to be pessimistic about their own future and the future of their nation or the world.\n"
             "Answer:")
    assert (example.instruction, example.response_prefix, example.output) == (query, "The answer is:", " B")
    prompt, response, scored = _rendered(example)
    assert prompt == f"<|user|>{query}<|end|><|assistant|>The answer is:"
    assert response == scored == " B"


def test_tydiqa_target_is_lesss_per_language_format():
    english = next(e for e in load_target("tydiqa").examples if e.subtask == "english")
    query = ("Answer the following question based on the information in the given passage.Passage: Home Box "
             "Office (HBO) is an American premium cable and satellite television network that is owned by the "
             "namesake unit Home Box Office, Inc., a division of AT&T's WarnerMedia. The program which featured on "
             "the network consists primarily of theatrically released motion pictures and original television "
             "shows, along with made-for-cable movies, documentaries and occasional comedy and concert specials.\n"
             "Question: Who owns HBO?")
    assert (english.instruction, english.response_prefix, english.output) == (query, "Answer:", " Home Box Office")
    prompt, response, scored = _rendered(english)
    assert prompt == f"<|user|>{query}<|end|><|assistant|>Answer:"
    assert response == scored == " Home Box Office"
    finnish = next(e for e in load_target("tydiqa").examples if e.subtask == "finnish")
    assert finnish.instruction.startswith("Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella."
                                          "Kappale: ")
    assert "\nKysymys: Mikä on Ruandan pääkaupunki?" in finnish.instruction
    assert (finnish.response_prefix, finnish.output) == ("Vastaus:", " Kigali")


def test_held_out_items_never_include_the_selection_examples():
    shots = {e.instruction.rsplit("\n\nQ: ", 1)[1] for e in load_target("bbh").examples}
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


def test_a_response_prefix_is_read_not_scored_and_ordinary_ids_do_not_change():
    from influence.data import Example
    from influence.data.formatting import IGNORE_INDEX, encode_example, prompt_text, response_text
    from influence.testing import tiny_tokenizer

    # ids of examples without a prefix are what they always were (values from before prefixes existed)
    assert Example("What is 2+2?", "", "4").id == "63afddb8985d47d7"
    assert Example.from_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                  {"role": "assistant", "content": "Hello."}]).id == "76fd4977b2dc3c31"
    prefixed = Example("What is 2+2?", "", " 4", response_prefix="A:")
    assert prefixed.chat()[-1] == {"role": "assistant", "content": "A: 4"}
    assert prefixed.id != Example("What is 2+2?", "", "A: 4").id  # same text, other loss: another example
    assert prefixed.to_record("alpaca")["response_prefix"] == "A:"
    plain = tiny_tokenizer(chat_template=False)
    assert prompt_text(prefixed, plain) == "<|user|>\nWhat is 2+2?\n<|assistant|>\nA:"
    assert response_text(prefixed, plain) == " 4</s>\n"
    encoded = encode_example(prefixed, plain)
    scored = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert plain.decode(scored) == " 4</s>\n"


@pytest.mark.parametrize("fmt", ["alpaca", "messages"])
def test_a_target_file_can_give_a_response_prefix_and_round_trips(tmp_path, fmt):
    from influence.data import Example

    example = Example("What is 2+2?", "", " 4", subtask="sums", response_prefix="The answer is:")
    path = write_jsonl(tmp_path / "t.jsonl", [example.to_record(fmt)])
    read = load_target(str(path)).examples[0]
    assert (read.id, read.response_prefix, read.output, read.chat()) == (
        example.id, "The answer is:", " 4", example.chat())
    broken = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
              "response_prefix": "A:"}
    with pytest.raises(DataError, match="does not start with its response prefix"):
        load_target(str(write_jsonl(tmp_path / "b.jsonl", [broken])))


def test_an_open_turn_is_scored_without_the_end_of_turn_marker_and_has_its_own_id():
    from influence.data.formatting import response_text
    from influence.testing import tiny_tokenizer

    closed = Example("2+2?", "", " 4", response_prefix="A:")
    open_turn = Example("2+2?", "", " 4", response_prefix="A:", closes_turn=False)
    tokenizer = tiny_tokenizer()
    assert response_text(closed, tokenizer) == " 4<|end|>"
    assert response_text(open_turn, tokenizer) == " 4"
    assert open_turn.id != closed.id
    assert all(not e.closes_turn for name in ("bbh", "mmlu", "tydiqa") for e in load_target(name).examples)
