"""Targets: a few examples of the wanted capability, grouped by subtask.

The named targets are the few-shot sets LESS selects against, built from the bundled
real data: BBH (3 chain-of-thought exemplars per task), MMLU (the 5 dev examples per
subject), TyDi QA (one example per language). Each is worded exactly as LESS's released
code words its validation examples (`get_validation_dataset.py`): the user turn is LESS's
query, the response turn opens with LESS's answer prefix ("A:", "The answer is:", the
language's "Answer:"), which the model reads but is not scored on. Their held-out splits,
for evaluation, are kept apart in `load_heldout` and never mixed into the selection target.

Targets split from one dataset (`user_oriented`, `flan_cot:<source>`) carry a third part, for choosing a
training recipe: `NAME:validation` selects against the same examples as NAME but is
evaluated on the validation items (`target_part`). Their split's seed and sizes go into
every manifest that names the target (`split_record`).
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
from dataclasses import dataclass
from typing import Callable

from influence.data.example import Example
from influence.data.flan_cot_targets import (FLAN_COT_SPLIT, flan_cot_heldout, flan_cot_questions, flan_cot_row_ids,
                                             flan_cot_target, flan_cot_target_names, flan_cot_validation)
from influence.data.heldout import HELDOUT, SELECTION, VALIDATION, HeldOutItem, TargetSplit
from influence.data.pools import FLAN_COT_SOURCES, read_pool_spec
from influence.data.readers import path_exists
from influence.data.user_oriented import (USER_ORIENTED_SPLIT, user_oriented_heldout, user_oriented_target,
                                          user_oriented_validation)
from influence.data.vendored import bundle, bundle_files
from influence.errors import ConfigError, DataError, UnknownNameError

DEFAULT_SUBTASK = "default"
MMLU_CHOICES = ("A", "B", "C", "D")


@dataclass
class Target:
    """The examples a targeted selector scores the pool against."""

    name: str
    examples: list[Example]

    def __len__(self) -> int:
        return len(self.examples)

    def subtasks(self) -> dict[str, list[int]]:
        """Subtask name -> indices of its examples, in first-seen order."""
        groups: dict[str, list[int]] = {}
        for index, example in enumerate(self.examples):
            groups.setdefault(example.subtask or DEFAULT_SUBTASK, []).append(index)
        return groups


# ---------------------------------------------------------------- BBH
def bbh_cot_prompts() -> dict[str, str]:
    """Task -> its 3-shot chain-of-thought prompt, without the canary header."""
    prompts = {}
    for task, data in bundle_files("bbh", "targets/bbh/cot-prompts/", ".txt").items():
        text = data.decode("utf-8")
        prompts[task] = text.split("-----\n", 1)[1].strip() if "-----\n" in text else text.strip()
    return prompts


def _bbh_exemplars(prompt: str) -> tuple[str, list[tuple[str, str]]]:
    """Split a CoT prompt into its task description and (question, worked answer) pairs."""
    description, *shots = prompt.split("\n\nQ: ")
    pairs = []
    for shot in shots:
        question, _, answer = shot.partition("\nA: ")
        pairs.append((question.strip(), answer.strip()))
    return description.strip(), pairs


BBH_ANSWER_PREFIX = "A:"


def _bbh_target() -> list[Example]:
    """LESS's BBH examples: the task prompt, the other two exemplars in full, the question; "A:" opens
    the answer. Read from LESS's own `bbh-three-shot.json`, split as LESS splits it."""
    examples = []
    for task, text in json.loads(bundle("bbh")["targets/bbh/less/bbh-three-shot.json"]).items():
        blocks = text.split("\n\n")
        description, shots = "\n\n".join(blocks[:-3]).strip(), blocks[-3:]
        pairs = [shot.split("\n" + BBH_ANSWER_PREFIX) for shot in shots]
        if any(len(pair) != 2 for pair in pairs):
            raise DataError(f"LESS's BBH prompt for {task!r} does not end in three 'Q: ... \\nA: ...' exemplars")
        for index, (question, answer) in enumerate(pairs):
            others = "".join(f"{q}\n{BBH_ANSWER_PREFIX}{a}\n\n" for j, (q, a) in enumerate(pairs) if j != index)
            examples.append(Example(instruction=f"{description}\n\n{others}{question}", input="", output=answer,
                                    subtask=task, source="bbh", response_prefix=BBH_ANSWER_PREFIX,
                                    closes_turn=False))
    return examples


def _bbh_heldout() -> list[HeldOutItem]:
    shot_questions = {q for p in bbh_cot_prompts().values() for q, _ in _bbh_exemplars(p)[1]}
    items = []
    for task, data in bundle_files("bbh", "targets/bbh/bbh/", ".json").items():
        for record in json.loads(data)["examples"]:
            if record["input"].strip() not in shot_questions:
                items.append(HeldOutItem(subtask=task, question=record["input"], answer=record["target"]))
    return items


# ---------------------------------------------------------------- MMLU
def _mmlu_rows(split: str) -> dict[str, list[list[str]]]:
    suffix = f"_{split}.csv"
    return {subject: list(csv.reader(io.StringIO(data.decode("utf-8"))))
            for subject, data in bundle_files("mmlu", f"targets/mmlu/{split}/", suffix).items()}


MMLU_HEADER = "The following are multiple choice questions (with answers) about {}.\n\n"
MMLU_ANSWER_PREFIX = "The answer is:"


def _mmlu_body(question: str, options: list[str]) -> str:
    return question + "".join(f"\n{letter}. {option}" for letter, option in zip(MMLU_CHOICES, options)) + "\nAnswer:"


def mmlu_question(subject: str, row: list[str], *, with_header: bool = True) -> str:
    """One MMLU item as a prompt ending in 'Answer:'; the header names the subject."""
    question, *options = row[:5]
    header = MMLU_HEADER.format(subject.replace("_", " "))
    return (header if with_header else "") + _mmlu_body(question.strip(), options)


def mmlu_dev() -> dict[str, list[list[str]]]:
    """Subject -> its 5 dev rows (question, A, B, C, D, answer letter): the few-shot examples."""
    return _mmlu_rows("dev")


def _mmlu_target() -> list[Example]:
    """LESS's MMLU examples: zero-shot, its subject header (each word of the subject after a space,
    hence two spaces after "about"), question, options, "Answer:"; the response turn opens with
    "The answer is:" and the scored answer is " X"."""
    return [Example(instruction=MMLU_HEADER.format("".join(f" {word}" for word in subject.split("_")))
                    + _mmlu_body(row[0], row[1:5]), input="", output=" " + row[5],
                    subtask=subject, source="mmlu", response_prefix=MMLU_ANSWER_PREFIX, closes_turn=False)
            for subject, rows in mmlu_dev().items() for row in rows]


def _mmlu_heldout() -> list[HeldOutItem]:
    return [HeldOutItem(subtask=subject, question=row[0], answer=row[5].strip(), choices=tuple(row[1:5]))
            for subject, rows in _mmlu_rows("test").items() for row in rows]


# ---------------------------------------------------------------- TyDi QA
TYDIQA_INSTRUCTION = "Answer the following question based on the information in the given passage."


def tydiqa_prompt(context: str, question: str) -> str:
    return f"{TYDIQA_INSTRUCTION}\n\nPassage: {context.strip()}\nQuestion: {question.strip()}\nAnswer:"


# LESS's per-language wording: (instruction, passage label, question label, answer label).
TYDIQA_TEMPLATES: dict[str, tuple[str, str, str, str]] = {
    "english": ("Answer the following question based on the information in the given passage.",
                "Passage:", "Question:", "Answer:"),
    "arabic": ("أجب على السؤال التالي بناءً على المعلومات في المقطع المعطى.",
               "المقطع:", "السؤال:", "الإجابة:"),
    "bengali": ("প্রদত্ত অধ্যায়ের তথ্যের উপর ভিত্তি করে নিম্নলিখিত প্রশ্নের উত্তর দিন।",
                "অধ্যায়:", "প্রশ্ন:", "উত্তর:"),
    "finnish": ("Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.",
                "Kappale:", "Kysymys:", "Vastaus:"),
    "indonesian": ("Jawab pertanyaan berikut berdasarkan informasi di bagian yang diberikan.",
                   "Bagian:", "Pertanyaan:", "Jawaban:"),
    "korean": ("주어진 문단의 정보에 기반하여 다음 질문에 답하십시오.",
               "문단:", "질문:", "답변:"),
    "russian": ("Ответьте на следующий вопрос на основе информации в данном отрывке.",
                "Отрывок:", "Вопрос:", "Ответ:"),
    "swahili": ("Jibu swali lifuatalo kulingana na habari kwenye kifungu kilichotolewa.",
                "Kifungu:", "Swali:", "Jibu:"),
    "telugu": ("ఇచ్చిన పేరాలోని సమాచారం ఆధారంగా కింది ప్రశ్నకు సమాధానం ఇవ్వండి.",
               "పేరా:", "ప్రశ్న:", "సమాధానం:"),
}


def _tydiqa_target() -> list[Example]:
    """LESS's TyDi QA examples in the language's own wording: instruction, then (with no separator,
    as LESS joins them) the passage and the question; the answer label opens the response turn and
    the scored answer is " <answer>"."""
    data = json.loads(bundle("tydiqa")["targets/tydiqa/tydiqa-one-shot.json"])
    examples = []
    for language, items in data.items():
        if language not in TYDIQA_TEMPLATES:
            raise DataError(f"LESS has no TyDi QA template for language {language!r}")
        instruction, passage, question, answer = TYDIQA_TEMPLATES[language]
        item = items[0]  # LESS takes the first example of each language
        examples.append(Example(
            instruction=f"{instruction}{passage} {item['context']}\n{question} {item['question']}", input="",
            output=" " + item["answers"][0]["text"], subtask=language, source="tydiqa", response_prefix=answer,
            closes_turn=False))
    return examples


def _tydiqa_heldout() -> list[HeldOutItem]:
    """The official primary-task tiny dev sample, reduced to items that have a minimal answer.

    The full GoldP dev set is not bundled; pass a file of your own for a real evaluation.
    """
    items = []
    raw = gzip.decompress(bundle("tydiqa")["targets/tydiqa/tiny_dev.jsonl.gz"]).decode("utf-8")
    for line in raw.splitlines():
        record = json.loads(line)
        text = record["document_plaintext"].encode("utf-8")
        answers, passage = [], None
        for annotation in record["annotations"]:
            span = annotation["minimal_answer"]
            index = annotation["passage_answer"]["candidate_index"]
            if span["plaintext_start_byte"] < 0 or index < 0:
                continue
            answers.append(text[span["plaintext_start_byte"]: span["plaintext_end_byte"]].decode("utf-8", "ignore"))
            candidate = record["passage_answer_candidates"][index]
            passage = text[candidate["plaintext_start_byte"]: candidate["plaintext_end_byte"]].decode("utf-8", "ignore")
        if answers and passage:
            items.append(HeldOutItem(subtask=record["language"], question=record["question_text"],
                                     answer=answers[0], answers=tuple(dict.fromkeys(answers)), context=passage))
    return items


@dataclass(frozen=True)
class NamedTarget:
    """A registered target: its selection examples, its held-out items and, for a split dataset, its
    validation items (for choosing a training recipe) and the split that made the three parts."""

    description: str
    load: Callable[[], list[Example]]
    heldout: Callable[[], list[HeldOutItem]]
    validation: Callable[[], list[HeldOutItem]] | None = None
    split: TargetSplit | None = None
    pool_rows: Callable[[], frozenset[str]] | None = None  # ids of pool examples that are the target's own rows
    templates: Callable[[], list[str]] | None = None  # the texts of the dataset it was split from (for the guard)


TARGETS: dict[str, NamedTarget] = {
    "bbh": NamedTarget("BIG-Bench Hard: 3 chain-of-thought exemplars for each of 27 tasks (held out: task data)",
                       _bbh_target, _bbh_heldout),
    "mmlu": NamedTarget("MMLU: 5 dev examples for each of 57 subjects (held out: 14,042 test items)",
                        _mmlu_target, _mmlu_heldout),
    "tydiqa": NamedTarget("TyDi QA GoldP: one example per language, 9 languages (held out: tiny dev sample)",
                          _tydiqa_target, _tydiqa_heldout),
    "user_oriented": NamedTarget("Self-Instruct's expert-written user-oriented instructions, subtask = the "
                                 "motivating app; answer-only loss on the experts' responses",
                                 user_oriented_target, user_oriented_heldout, user_oriented_validation,
                                 USER_ORIENTED_SPLIT),
    **{name: NamedTarget(f"FLAN v2 CoT {source}, worded as the flan_cot pool (whose copies of these rows any "
                         "pool loses); answer-only loss on rationale and answer",
                         functools.partial(flan_cot_target, source), functools.partial(flan_cot_heldout, source),
                         functools.partial(flan_cot_validation, source), FLAN_COT_SPLIT,
                         functools.partial(flan_cot_row_ids, source), functools.partial(flan_cot_questions, source))
       for source, name in zip(FLAN_COT_SOURCES, flan_cot_target_names())},
}


def target_part(spec: str) -> tuple[str, str]:
    """(registered name, the part evaluated) of a target spec: `NAME` evaluates on the held-out items,
    `NAME:validation` on the validation items; selection scores against NAME's examples either way.
    A spec that names no registered target comes back whole, with the held-out part.

    Raises:
        ConfigError: `:validation` of a registered target that has no validation split.
    """
    base, sep, part = spec.rpartition(":")
    if sep and part == VALIDATION and base in TARGETS:
        if TARGETS[base].validation is None:
            with_split = ", ".join(f"{name}:{VALIDATION}" for name, t in TARGETS.items() if t.validation)
            raise ConfigError(f"target {base} has no validation split; targets with one: {with_split}")
        return base, VALIDATION
    return spec, HELDOUT


def registered_target(spec: str) -> str | None:
    """The registered target a spec names (`NAME` or `NAME:validation`), or None for a file."""
    base, _ = target_part(spec)
    return base if base in TARGETS else None


def load_target(spec: str) -> Target:
    """A registered target name (optionally `:validation`, which changes only what is evaluated), or a
    data file whose records may carry a `subtask`.

    Raises:
        UnknownNameError: neither a registered target nor an existing file.
        ConfigError: `:validation` of a target without a validation split.
        DataError: the file is unreadable or has no usable example.
    """
    base = registered_target(spec)
    if base is not None:
        examples = TARGETS[base].load()
    elif path_exists(spec) or spec.startswith("hf:"):
        examples = read_pool_spec(spec)[0].examples
    else:
        raise UnknownNameError("target", spec, list(TARGETS))
    if not examples:
        raise DataError(f"target {spec} has no usable examples")
    return Target(name=spec, examples=examples)


def load_heldout(name: str) -> list[HeldOutItem]:
    """The evaluation items of a registered target: its held-out items, or with `NAME:validation` its
    validation items."""
    base, part = target_part(name)
    if base not in TARGETS:
        raise UnknownNameError("target", name, list(TARGETS))
    target = TARGETS[base]
    return target.validation() if part == VALIDATION and target.validation else target.heldout()


def guarded_items(name: str) -> list[HeldOutItem]:
    """Every item a registered target is evaluated on (held out and validation): what no pool may hold."""
    target = TARGETS[target_part(name)[0]]
    return target.heldout() + (target.validation() if target.validation else [])


def target_row_ids(name: str) -> frozenset[str]:
    """Ids of pool examples that are a registered target's own rows (every part): removed from any pool by id."""
    target = TARGETS[target_part(name)[0]]
    return target.pool_rows() if target.pool_rows else frozenset()


def target_templates(name: str) -> list[str]:
    """The texts of the dataset a registered target was split from, whose shared n-grams are its template."""
    target = TARGETS[target_part(name)[0]]
    return target.templates() if target.templates else []


def split_record(name: str) -> dict | None:
    """A split target's split seed, key, method and part sizes, for manifests; None for other targets."""
    base = registered_target(name)
    target = TARGETS[base] if base is not None else None
    if target is None or target.split is None:
        return None
    sizes = {SELECTION: len(target.load()), VALIDATION: len(target.validation() if target.validation else []),
             HELDOUT: len(target.heldout())}
    return target.split.record(sizes)
