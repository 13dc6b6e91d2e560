"""Evaluation tasks: each target's held-out questions, with its few-shot prompt, as prompt/reference pairs.

Two protocols (`PROTOCOLS`):
- reference (the default): the named targets as LESS's released evaluation scripts ask them
  (`influence.evaluation.reference`): MMLU 5-shot raw text, BBH 3-shot chain of thought as raw
  text, TyDi QA 1-shot in the language's template as a chat turn;
- chat: every prompt as one user turn in the model's own format, as in training
  (`influence.data.formatting`): what results before the reference protocols measured, and a
  way to ask a chat model the way it was tuned.
The few examples a targeted selector scores against are never evaluated on: named targets
use `load_heldout`, which keeps them apart.

Task kinds decide the metric:
- choice (MMLU): accuracy, by the log-likelihood of each option letter;
- bbh: exact match of the greedy answer (the text after "So the answer is");
- qa (TyDi QA, or a question/answers file): SQuAD token F1 and exact match of the greedy answer;
- generation (any instruction/output file): exact match of the whole greedy answer; for
  `user_oriented` the target loss alone unless a metric is asked for;
- cot (`flan_cot:<source>`): the target loss on rationale and answer; asked for, exact match
  of the final answer of a greedy chain of thought (`metrics.cot_answer_match`).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from influence.data import load_heldout, load_target
from influence.data.flan_cot_targets import flan_cot_target_names
from influence.data.heldout import VALIDATION
from influence.data.targets import (MMLU_CHOICES, TARGETS, TYDIQA_TEMPLATES, bbh_cot_prompts, mmlu_dev, mmlu_question,
                                    split_record, target_part, tydiqa_prompt)
from influence.errors import EvaluationError, UnknownNameError
from influence.evaluation import reference
from influence.evaluation.items import KINDS, PROTOCOLS, EvalItem, EvalTask

__all__ = ["KINDS", "PROTOCOLS", "EvalItem", "EvalTask", "build_task", "ANSWER_LINE", "COT_ANSWER"]

# Where a greedy answer ends under the chat protocol (regular expressions, case-insensitive;
# generation stops at the first match and keeps the text up to its end). A direct answer is its
# first non-empty line, unless that line only leads in ("The answer is:"); a chain of thought ends
# with the line that gives the answer, or where the model starts a new exemplar ("Q:").
ANSWER_IS_LINE = r"the answer is\s*:?\s*\S[^\n]*\n"
ANSWER_LINE = ANSWER_IS_LINE + r"|^\s*(?![^\n]*answer is\s*:?\s*\n)\S[^\n]*\n"
COT_ANSWER = ANSWER_IS_LINE + r"|\n\s*\nQ:"
TYDIQA_NOTE = ("TyDi QA: only {n} held-out items ship with this package (the official tiny dev sample's "
               "items that have a minimal answer), too few for a verdict; pass the GoldP dev file "
               "(SQuAD-format JSON, or JSONL with question/context/answers) as --target FILE for a real evaluation")


# ------------------------------------------------------------------ named targets
def chat_mmlu_task(shots: int = 5) -> EvalTask:
    """MMLU test items as a chat turn, each after `shots` dev examples of its subject."""
    dev = mmlu_dev()
    items = []
    for item in load_heldout("mmlu"):
        context = "".join(mmlu_question(item.subtask, row, with_header=i == 0) + f" {row[5].strip()}\n\n"
                          for i, row in enumerate(dev.get(item.subtask, [])[:shots]))
        question = mmlu_question(item.subtask, [item.question, *item.choices], with_header=not context)
        items.append(EvalItem(subtask=item.subtask, prompt=context + question, reference=item.answer,
                              answers=(item.answer,), options=MMLU_CHOICES))
    return EvalTask("mmlu", "choice", items, [f"MMLU: {shots}-shot prompts from the subject's dev examples"])


def chat_bbh_task(cot: bool = False) -> EvalTask:
    """BBH task items as a chat turn: the task description and question; with cot, after its 3 worked exemplars."""
    prompts = bbh_cot_prompts()
    items = []
    for item in load_heldout("bbh"):
        prompt = prompts[item.subtask]
        context = prompt if cot else prompt.split("\n\nQ: ", 1)[0]
        items.append(EvalItem(subtask=item.subtask, prompt=f"{context}\n\nQ: {item.question}",
                              reference=item.answer, answers=(item.answer,)))
    note = ("BBH: 3-shot chain-of-thought prompts" if cot else
            "BBH: task description and question, no exemplars (pass cot for the 3-shot chain-of-thought prompt)")
    return EvalTask("bbh", "bbh", items, [note], stop=COT_ANSWER if cot else ANSWER_LINE)


def chat_tydiqa_task() -> EvalTask:
    items = [EvalItem(subtask=item.subtask, prompt=tydiqa_prompt(item.context, item.question),
                      reference=item.answers[0] if item.answers else item.answer,
                      answers=item.answers or (item.answer,))
             for item in load_heldout("tydiqa")]
    return EvalTask("tydiqa", "qa", items, [TYDIQA_NOTE.format(n=len(items))], stop=ANSWER_LINE)


def user_oriented_task(name: str = "user_oriented") -> EvalTask:
    """Self-Instruct's user-oriented instructions (held out, or `user_oriented:validation`): the target loss
    on the experts' responses; exact match of a greedy answer only when asked for."""
    return _split_task(name, "generation", note="answer-only loss on the experts' responses; exact match of "
                                                "the greedy answer is opt-in (open-ended answers rarely match)")


def flan_cot_task(name: str) -> EvalTask:
    """A FLAN v2 CoT source's held-out (or `:validation`) questions: the target loss on the reference rationale
    and answer; exact match of the final answer of a greedy chain of thought only when asked for."""
    return _split_task(name, "cot", stop=COT_ANSWER,
                       note="answer-only loss on the reference rationale and 'So the answer is ...'; exact match "
                            "of the answer after 'So the answer is' in a greedy chain of thought is opt-in")


def _split_task(name: str, kind: str, *, note: str, stop: str | None = None) -> EvalTask:
    """A split target's items: the prompt as one user turn, the whole reference response scored."""
    items = [EvalItem(subtask=item.subtask, prompt=item.question, reference=item.response or item.answer,
                      answers=(item.answer,)) for item in load_heldout(name)]
    split = split_record(name)
    part = target_part(name)[1]
    seed = f"split seed {split['seed']}" if split else ""
    notes = [f"{name}: the {'validation' if part == VALIDATION else 'held-out'} part, {len(items)} items ({seed}); "
             f"{note}"]
    return EvalTask(name, kind, items, notes, stop=stop, default_metrics=(), split=split)


# split targets -> their task builder, registered for NAME (held out) and NAME:validation
SPLIT_TASKS = {"user_oriented": user_oriented_task, **{name: flan_cot_task for name in flan_cot_target_names()}}
SPLIT_TARGETS = {spec: functools.partial(task, spec) for name, task in SPLIT_TASKS.items()
                 for spec in (name, f"{name}:{VALIDATION}")}
NAMED_TARGETS = ("bbh", "mmlu", "tydiqa")


def build_task(target: str, *, protocol: str = "reference", cot: bool = False, mmlu_shots: int = 5) -> EvalTask:
    """The evaluation task of a named target, or of a file, under `protocol`.

    A file is read as question answering when its records carry `question` and `answers`
    (JSONL, a JSON list, or SQuAD/TyDi GoldP JSON with data/paragraphs/qas), else as
    instruction/output records (with an optional `subtask`) scored by exact match. Under the
    reference protocol, a QA file's items in a TyDi QA language take that language's template.
    `cot` (chat protocol) asks BBH with its chain-of-thought prompt; the reference protocol always does.

    Raises:
        UnknownNameError: neither a named target nor an existing file.
        ConfigError: `NAME:validation` of a target without a validation split.
        EvaluationError, DataError: the file has no usable item, or a setting is out of range.
    """
    if protocol not in PROTOCOLS:
        raise EvaluationError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if not 0 <= mmlu_shots <= 5:
        raise EvaluationError(f"MMLU has 5 dev examples per subject; choose 0 to 5 shots, not {mmlu_shots}")
    target_part(target)  # `NAME:validation` of a target without that split is refused with the targets that have it
    if target in SPLIT_TARGETS:  # one user turn under either protocol, as the pool's examples are trained
        return SPLIT_TARGETS[target]()
    if target in NAMED_TARGETS:
        if protocol == "chat":
            return {"bbh": lambda: chat_bbh_task(cot), "mmlu": lambda: chat_mmlu_task(mmlu_shots),
                    "tydiqa": chat_tydiqa_task}[target]()
        if target == "tydiqa":
            return reference.tydiqa_task(notes=[TYDIQA_NOTE.format(n=len(load_heldout("tydiqa")))])
        return reference.mmlu_task(mmlu_shots) if target == "mmlu" else reference.bbh_task()
    path = Path(target)
    if not path.exists():
        raise UnknownNameError("evaluation target (or file)", target, list(TARGETS))  # split ones: also :validation
    qa = _qa_records(path)
    if qa is not None:
        if not qa:
            raise EvaluationError(f"{path}: no question with an answer found")
        note = f"question answering from {path}: {len(qa)} items"
        if protocol == "reference" and all(language in TYDIQA_TEMPLATES for language, *_ in qa):
            return reference.tydiqa_task(qa, name=str(path), notes=[note])
        items = [EvalItem(subtask=subtask, prompt=tydiqa_prompt(context, question) if context else question.strip(),
                          reference=answers[0], answers=answers) for subtask, context, question, answers in qa]
        return EvalTask(str(path), "qa", items, [note], stop=ANSWER_LINE)   # a chat turn under either protocol

    examples = load_target(str(path)).examples
    items = [EvalItem(subtask=e.subtask or "default", prompt=e.prompt, reference=e.output, answers=(e.output,))
             for e in examples]
    return EvalTask(str(path), "generation", items, [f"instruction/output records from {path}: {len(items)} items"])


# ------------------------------------------------------------------ question-answering files
def _qa_records(path: Path) -> list[tuple[str, str, str, tuple[str, ...]]] | None:
    """(subtask, passage, question, answers) from a JSON/JSONL file shaped like SQuAD or question/answers
    records; None if not that shape. The subtask is the record's, its language, or its id's first part."""
    name = path.name.lower()
    if not name.endswith((".json", ".jsonl")):
        return None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"{path}: cannot read as UTF-8 text ({exc})") from None
    records = _json_records(path, text)
    if records is None:
        return None
    rows = []
    for record in records:
        question, answers = record.get("question"), _answer_texts(record.get("answers"))
        if not isinstance(question, str) or not question.strip() or not answers:
            continue
        context = record.get("context") if isinstance(record.get("context"), str) else ""
        subtask = record.get("subtask") or record.get("language") or str(record.get("id", "")).split("-")[0] or "default"
        rows.append((str(subtask), context, question, tuple(answers)))
    return rows


def _json_records(path: Path, text: str) -> list[dict[str, Any]] | None:
    try:
        if path.name.lower().endswith(".jsonl"):
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise EvaluationError(f"{path}: malformed JSON ({exc})") from None
    if isinstance(rows, dict) and isinstance(rows.get("data"), list):   # SQuAD / TyDi GoldP layout
        flat = []
        for article in rows["data"]:
            for paragraph in (article.get("paragraphs") or []) if isinstance(article, dict) else []:
                for qa in (paragraph.get("qas") or []) if isinstance(paragraph, dict) else []:
                    if isinstance(qa, dict):
                        flat.append({**qa, "context": paragraph.get("context", "")})
        return flat
    if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows) \
            and any("question" in r and "answers" in r for r in rows):
        return rows
    return None


def _answer_texts(answers: Any) -> list[str]:
    if isinstance(answers, str):
        answers = [answers]
    if isinstance(answers, dict) and isinstance(answers.get("text"), list):   # datasets' SQuAD columns
        answers = answers["text"]
    if not isinstance(answers, list):
        return []
    texts = [a.get("text") if isinstance(a, dict) else a for a in answers]
    return list(dict.fromkeys(t.strip() for t in texts if isinstance(t, str) and t.strip()))
