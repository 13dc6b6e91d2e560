"""Task metrics on strings and choices: exact match, SQuAD-style token F1, answer extraction, accuracy.

Answer normalisation follows the SQuAD evaluation script's convention (lower case, drop
punctuation and the articles a/an/the, collapse whitespace), which TyDi QA GoldP reuses; with
`squad=True` exactly as the SQuAD v1.1 script does it (ASCII punctuation only, and an empty answer
scores F1 0), as the reference protocols' TyDi QA metric computes it. `METRIC_OPTIONS` names the
metrics on the command line.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Sequence

# --metrics names -> the results' metric names; the target loss is always measured
METRIC_OPTIONS = {"loss": "target_loss", "accuracy": "accuracy", "em": "exact_match", "f1": "f1"}
GENERATION_OPTIONS = ("em", "f1")

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_ANSWER_IS = re.compile(r"the answer is\s*:?\s*(.+)", re.IGNORECASE | re.DOTALL)


def _is_punctuation(char: str) -> bool:
    return char in string.punctuation or unicodedata.category(char).startswith("P")


def normalize_answer(text: str, *, squad: bool = False) -> str:
    """Lower-case, remove punctuation (any script; ASCII only with `squad`) and English articles, collapse
    whitespace."""
    text = text.lower()
    if squad:
        text = "".join(c for c in text if c not in _ASCII_PUNCTUATION)
    else:
        text = "".join(" " if _is_punctuation(c) else c for c in text)
    return " ".join(_ARTICLES.sub(" ", text).split())


_ASCII_PUNCTUATION = frozenset(string.punctuation)


def exact_match(prediction: str, references: str | Sequence[str], *, squad: bool = False) -> float:
    """1.0 when the normalised prediction equals any normalised reference, else 0.0."""
    references = [references] if isinstance(references, str) else list(references)
    return float(any(normalize_answer(prediction, squad=squad) == normalize_answer(r, squad=squad)
                     for r in references))


def token_f1(prediction: str, references: str | Sequence[str], *, squad: bool = False) -> float:
    """SQuAD token F1 of the normalised strings, the best over the references."""
    references = [references] if isinstance(references, str) else list(references)
    return max((_f1(normalize_answer(prediction, squad=squad).split(), normalize_answer(r, squad=squad).split(),
                    squad=squad) for r in references), default=0.0)


def _f1(predicted: list[str], reference: list[str], *, squad: bool = False) -> float:
    if not predicted or not reference:
        return 0.0 if squad else float(predicted == reference)
    common = sum((Counter(predicted) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def extract_answer(generation: str) -> str:
    """The final answer in a generation: what follows "the answer is" (up to the line's end), else the first line.

    Chain-of-thought exemplars end with "So the answer is X."; a direct answer is its first line.
    """
    text = generation.strip()
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        text = matches[-1].group(1)
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line[:-1].strip() if line.endswith(".") else line


_SO_THE_ANSWER_IS = re.compile(r"So the answer is (.*?)\.")


def bbh_reference_answer(generation: str) -> str:
    """The answer as the reference BBH script reads it: the text between the first "So the answer is "
    and the next period; without one, the generation up to its first blank line."""
    found = _SO_THE_ANSWER_IS.search(generation)
    if found:
        return found.group(1).strip()
    return generation.strip().split("\n\n")[0].strip()


def bbh_reference_match(prediction: str, reference: str) -> float:
    """Exact match ignoring case and ASCII punctuation, nothing else (the `evaluate` library's exact_match
    with ignore_case and ignore_punctuation, as the reference BBH script calls it)."""
    def clean(text: str) -> str:
        return "".join(c for c in text.lower() if c not in _ASCII_PUNCTUATION)

    return float(clean(prediction) == clean(reference))


_OPTION = re.compile(r"\([A-R]\)")


def bbh_match(prediction: str, reference: str) -> float:
    """BBH exact match after light normalisation (case, surrounding space, a final period).

    For multiple-choice tasks, whose references are option labels such as "(B)", the first
    label in the prediction is compared, so "(B) the option's text" counts as "(B)".
    """
    if _OPTION.fullmatch(reference.strip()):
        found = _OPTION.search(prediction)
        return float(found is not None and found.group(0) == reference.strip())

    def clean(text: str) -> str:
        text = " ".join(text.strip().split()).lower()
        return text[:-1].rstrip() if text.endswith(".") else text

    return float(clean(prediction) == clean(reference))


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def cot_answer_match(prediction: str, reference: str) -> float:
    """Whether a chain of thought's final answer (see `extract_answer`) is the reference, FLAN CoT style.

    An option label ("(C)") is compared with the first label in the prediction (a bare "C" counts);
    a number with the first number in the prediction, after dropping "$" and thousands commas
    ("1,000.0" counts as "1000"); anything else ("yes", "Sentence A", "bloody mess") by
    `normalize_answer` equality.
    """
    reference = reference.strip()
    if _OPTION.fullmatch(reference):
        found = _OPTION.search(prediction)
        label = found.group(0) if found else f"({normalize_answer(prediction).upper()})"
        return float(label == reference)
    if _NUMBER.fullmatch(reference.replace(",", "")):
        found = _NUMBER.search(re.sub(r"(?<=\d),(?=\d{3})", "", prediction.replace("$", "")))
        return float(found is not None and float(found.group(0)) == float(reference.replace(",", "")))
    return exact_match(prediction, reference)


def accuracy(predicted: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of equal pairs (e.g. MMLU option letters)."""
    if len(predicted) != len(references):
        raise ValueError(f"{len(predicted)} predictions for {len(references)} references")
    return sum(p == r for p, r in zip(predicted, references)) / len(references) if references else float("nan")


def choose_option(log_likelihoods: Sequence[float], options: Sequence[str]) -> str:
    """The option with the highest log-likelihood (the first on ties)."""
    best = max(range(len(options)), key=lambda i: (log_likelihoods[i], -i))
    return options[best]
