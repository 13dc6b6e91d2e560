"""The reference protocols: prompts and length handling as LESS's released evaluation scripts build them.

LESS evaluates with open-instruct's eval/{mmlu,bbh,tydiqa}/run_eval.py, run by eval_mmlu.sh,
eval_bbh.sh and eval_tydiqa.sh:
- MMLU: 5-shot raw text (no chat format), the letter chosen by the next-token probability of
  " A".." D"; shots are dropped while a prompt is longer than the token budget.
- BBH: the task's 3-shot chain-of-thought prompt as raw text (eval_bbh.sh passes no
  --use_chat_format), "So the answer is X." read off a greedy answer of at most 512 tokens that
  stops at a blank line; 40 items per task.
- TyDi QA: 1-shot in each language's own wording, in the chat format (eval_tydiqa.sh passes
  --use_chat_format), passages cut to 512 tokens, a greedy answer of at most 50 tokens that stops
  at a newline; 200 items per language.
The target loss counts the answer's tokens only: MMLU's " X" after "Answer:", TyDi QA's " answer"
after the answer label, BBH's " X" after the prompt's "A:" and " So the answer is" (read, not scored).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from influence.data import load_heldout
from influence.data.targets import MMLU_CHOICES, TYDIQA_TEMPLATES, bbh_cot_prompts, mmlu_dev
from influence.data.vendored import bundle
from influence.evaluation.encoding import encode_item
from influence.evaluation.items import EvalItem, EvalTask

MMLU_HEADER = "The following are multiple choice questions (with answers) about {}.\n\n"
BBH_PER_TASK = 40              # eval_bbh.sh: --max_num_examples_per_task 40
BBH_ANSWER_TOKENS = 512        # eval/bbh/run_eval.py: max_new_tokens
BBH_STOP = r"\n\n"
BBH_LOSS_PREFIX = " So the answer is"   # how every exemplar's answer ends; read before the scored answer
TYDIQA_PER_LANGUAGE = 200      # eval_tydiqa.sh: --max_num_examples_per_lang 200
TYDIQA_CONTEXT_TOKENS = 512    # eval_tydiqa.sh: --max_context_length 512
TYDIQA_ANSWER_TOKENS = 50      # eval/tydiqa/run_eval.py: max_new_tokens
TYDIQA_STOP = r"\n"


# ------------------------------------------------------------------ MMLU
def mmlu_subject(subject: str) -> str:
    """The subject as the reference's header spells it: each word after a space ("about  college biology")."""
    return "".join(" " + word for word in subject.split("_"))


def mmlu_block(row: list[str], *, with_answer: bool) -> str:
    """One question with its lettered options and "Answer:"; a shot adds " X" and a blank line."""
    text = row[0] + "".join(f"\n{letter}. {option}" for letter, option in zip(MMLU_CHOICES, row[1:5])) + "\nAnswer:"
    return text + (f" {row[5]}\n\n" if with_answer else "")


def mmlu_prompt(subject: str, shots: list[list[str]], row: list[str]) -> str:
    return (MMLU_HEADER.format(mmlu_subject(subject)) + "".join(mmlu_block(s, with_answer=True) for s in shots)
            + mmlu_block(row, with_answer=False))


def mmlu_task(shots: int = 5) -> EvalTask:
    """MMLU test items after `shots` dev examples of their subject, as raw text; see the module docstring."""
    dev = mmlu_dev()
    items, rows = [], {}   # an item's subject and row, to build it again with fewer shots (equal items, equal rows)
    for held in load_heldout("mmlu"):
        row = [held.question, *held.choices, held.answer]
        item = EvalItem(subtask=held.subtask, prompt=mmlu_prompt(held.subtask, dev.get(held.subtask, [])[:shots], row),
                        reference=held.answer, answers=(held.answer,), options=MMLU_CHOICES, chat=False,
                        answer_lead=" ")
        items.append(item)
        rows[item] = (held.subtask, row)

    def fit(items: list[EvalItem], tokenizer: Any, max_length: int) -> list[EvalItem]:
        """Each item with as many of its shots as fit `max_length` with its answer (the reference drops
        shots until the prompt fits 2048 tokens)."""
        fitted = []
        for item in items:
            subject, row = rows[item]
            for count in range(shots, -1, -1):
                candidate = item if count == shots else _replace_prompt(
                    item, mmlu_prompt(subject, dev.get(subject, [])[:count], row))
                if count == 0 or len(encode_item(candidate, tokenizer).input_ids) <= max_length:
                    break
            fitted.append(candidate)
        return fitted

    notes = [f"MMLU, reference protocol: {shots}-shot raw text, the letter by next-token likelihood of ' A'-' D'; "
             "shots dropped while a prompt does not fit"]
    return EvalTask("mmlu", "choice", items, notes, protocol="reference", fit=fit)


def _replace_prompt(item: EvalItem, prompt: str) -> EvalItem:
    return replace(item, prompt=prompt)


# ------------------------------------------------------------------ BBH
def bbh_prompt(cot_prompt: str, question: str) -> str:
    """The task's chain-of-thought prompt, the question and "A:" (eval/bbh/run_eval.py without chat format)."""
    return cot_prompt.strip() + "\n\nQ: " + question + "\nA:"


def bbh_task() -> EvalTask:
    """BBH items after their task's 3-shot chain-of-thought prompt, as raw text; see the module docstring."""
    prompts = bbh_cot_prompts()
    items = [EvalItem(subtask=held.subtask, prompt=bbh_prompt(prompts[held.subtask], held.question),
                      reference=held.answer, answers=(held.answer,), chat=False, loss_prefix=BBH_LOSS_PREFIX,
                      answer_lead=" ")
             for held in load_heldout("bbh")]
    notes = [f"BBH, reference protocol: 3-shot chain of thought as raw text, exact match of the text after "
             f"'So the answer is'; at most {BBH_PER_TASK} items per task without --limit; target loss: the "
             f"answer after the prompt's 'A:{BBH_LOSS_PREFIX}'"]
    return EvalTask("bbh", "bbh", items, notes, stop=BBH_STOP, protocol="reference", per_subtask=BBH_PER_TASK,
                    answer_tokens=BBH_ANSWER_TOKENS)


# ------------------------------------------------------------------ TyDi QA
def tydiqa_one_shot() -> dict[str, tuple[str, str, str]]:
    """Language -> (passage, question, answer) of LESS's one-shot example (the first of each language)."""
    data = json.loads(bundle("tydiqa")["targets/tydiqa/tydiqa-one-shot.json"])
    return {language: (rows[0]["context"], rows[0]["question"], rows[0]["answers"][0]["text"])
            for language, rows in data.items()}


def tydiqa_prompt(language: str, shot: tuple[str, str, str], context: str, question: str) -> str:
    """The user turn: the language's instruction, its one-shot example and the passage and question."""
    instruction, passage, asked, answer = TYDIQA_TEMPLATES[language]
    demo = f"{passage} {shot[0]}\n{asked} {shot[1]}\n{answer} {shot[2]}"
    return f"{instruction}\n\n{demo}\n\n{passage} {context}\n{asked} {question}\n"


def tydiqa_items(records: list[tuple[str, str, str, tuple[str, ...]]]) -> tuple[list[EvalItem], Any]:
    """Items from (language, passage, question, answers) records of languages with a template, and their fit."""
    shots = tydiqa_one_shot()
    items, parts = [], {}   # an item's passage and question, to build it again with the passages cut
    for language, context, question, answers in records:
        item = EvalItem(subtask=language, prompt=tydiqa_prompt(language, shots[language], context, question),
                        reference=answers[0], answers=answers, answer_prefix=TYDIQA_TEMPLATES[language][3],
                        answer_lead=" ")
        items.append(item)
        parts[item] = (language, context, question)

    def fit(items: list[EvalItem], tokenizer: Any, max_length: int) -> list[EvalItem]:
        """Passages (the item's and its shot's) cut to their first TYDIQA_CONTEXT_TOKENS tokens."""
        def cut(text: str) -> str:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            return tokenizer.decode(ids[:TYDIQA_CONTEXT_TOKENS]) if len(ids) > TYDIQA_CONTEXT_TOKENS else text

        fitted = []
        for item in items:
            if item not in parts:
                fitted.append(item)
                continue
            language, context, question = parts[item]
            passage, asked, answer = shots[language]
            fitted.append(_replace_prompt(item, tydiqa_prompt(language, (cut(passage), asked, answer), cut(context),
                                                              question)))
        return fitted

    return items, fit


def tydiqa_task(records: list[tuple[str, str, str, tuple[str, ...]]] | None = None, name: str = "tydiqa",
                notes: list[str] | None = None) -> EvalTask:
    """TyDi QA items in their language's 1-shot template, as a chat turn; see the module docstring."""
    if records is None:
        records = [(held.subtask, held.context, held.question, held.answers or (held.answer,))
                   for held in load_heldout("tydiqa")]
    items, fit = tydiqa_items([r for r in records if r[0] in TYDIQA_TEMPLATES])
    notes = [*(notes or []), "TyDi QA, reference protocol: 1-shot in the language's own template as a chat turn, "
             f"passages cut to {TYDIQA_CONTEXT_TOKENS} tokens, SQuAD F1 and exact match"]
    return EvalTask(name, "qa", items, notes, stop=TYDIQA_STOP, protocol="reference",
                    per_subtask=TYDIQA_PER_LANGUAGE, fit=fit, answer_tokens=TYDIQA_ANSWER_TOKENS)
