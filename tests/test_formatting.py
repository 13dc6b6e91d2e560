"""How examples become token ids and labels: special tokens once, LESS's Tulu format for a model
without a chat template, and which assistant turns of a chat carry the loss."""

from __future__ import annotations

import pytest

from influence.constants import DEFAULT_LABEL_TURNS
from influence.data import Example
from influence.data.formatting import IGNORE_INDEX, encode_example, encode_prompt, prompt_text, response_text
from influence.testing import tiny_tokenizer

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Add 2 and 3."},
        {"role": "assistant", "content": "5"}]


def labelled_text(tokenizer, encoded) -> str:
    return tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])


def test_a_chat_template_that_opens_with_bos_gives_one_bos():
    tokenizer = tiny_tokenizer(adds_bos=True)
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id  # the tokenizer would add one on its own
    example = Example("Name a colour.", "", "Blue.")
    encoded = encode_example(example, tokenizer)
    assert encoded.input_ids.count(tokenizer.bos_token_id) == 1
    assert encoded.input_ids[0] == tokenizer.bos_token_id
    assert encode_prompt(example, tokenizer).count(tokenizer.bos_token_id) == 1
    assert labelled_text(tokenizer, encoded) == "Blue.<|end|>"


def test_without_a_chat_template_the_tulu_format_of_less_is_used_with_the_tokenizers_bos():
    tokenizer = tiny_tokenizer(chat_template=False, adds_bos=True)
    example = Example("Add the numbers.", "2 and 3", " 5 ")
    assert prompt_text(example, tokenizer) == "<|user|>\nAdd the numbers.\n\n2 and 3\n<|assistant|>\n"
    assert response_text(example, tokenizer) == "5</s>\n"  # contents stripped, EOS then newline, as LESS
    encoded = encode_example(example, tokenizer)
    assert encoded.input_ids.count(tokenizer.bos_token_id) == 1 and encoded.input_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(encoded.input_ids) == "<s><|user|>\nAdd the numbers.\n\n2 and 3\n<|assistant|>\n5</s>\n"
    assert labelled_text(tokenizer, encoded) == "5</s>\n"


def test_the_tulu_format_matches_open_instructs_concat_messages_for_a_chat():
    tokenizer = tiny_tokenizer(chat_template=False)
    example = Example.from_messages(CHAT)
    text = tokenizer.decode(encode_example(example, tokenizer).input_ids)
    assert text == ("<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello.</s>\n"
                    "<|user|>\nAdd 2 and 3.\n<|assistant|>\n5</s>\n")


@pytest.mark.parametrize("chat_template", [True, False])
def test_every_assistant_turn_is_trained_on_by_default_and_only_the_last_when_asked(chat_template):
    tokenizer = tiny_tokenizer(chat_template=chat_template)
    example = Example.from_messages(CHAT)
    closing = "<|end|>" if chat_template else "</s>\n"
    every = encode_example(example, tokenizer)
    assert DEFAULT_LABEL_TURNS == "all"
    assert labelled_text(tokenizer, every) == f"Hello.{closing}5{closing}"
    last = encode_example(example, tokenizer, label_turns="last")
    assert labelled_text(tokenizer, last) == f"5{closing}"
    assert every.input_ids == last.input_ids  # the same text: only the labels differ


def test_a_single_turn_example_is_labelled_the_same_under_both_settings():
    tokenizer = tiny_tokenizer()
    example = Example("Name a colour.", "", "Blue.")
    assert encode_example(example, tokenizer, label_turns="all") == encode_example(example, tokenizer,
                                                                                 label_turns="last")


def test_an_unknown_label_turns_setting_is_refused():
    with pytest.raises(ValueError, match="label_turns"):
        encode_example(Example("a", "", "b"), tiny_tokenizer(), label_turns="first")


def test_the_formatting_identity_tells_a_template_from_tulu_and_the_turns_labelled():
    from influence.data.formatting import formatting_identity

    templated, plain = tiny_tokenizer(), tiny_tokenizer(chat_template=False)
    assert formatting_identity(plain)["format"] == "tulu"
    assert formatting_identity(templated) != formatting_identity(tiny_tokenizer(adds_bos=True))  # other template
    assert formatting_identity(templated, "all") != formatting_identity(templated, "last")


def test_ifd_scores_only_the_last_response_of_a_chat():
    from influence.features.difficulty import ifd_pair

    tokenizer = tiny_tokenizer()
    conditioned, alone = ifd_pair(Example.from_messages(CHAT), tokenizer, 2048)
    assert labelled_text(tokenizer, conditioned) == "5<|end|>"
    assert labelled_text(tokenizer, alone) == "5<|end|>"
