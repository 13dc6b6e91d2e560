"""lm-evaluation-harness on our MMLU items: an outside check of the reference protocol's letter choices.

lm-eval (the optional extra `harness`: pip install 'influence[harness]') runs its own
few-shot prompt building, tokenisation and log-likelihood scoring. Its stock MMLU task
differs from open-instruct's prompt in two places (the subject written with one space, not
"about  college biology"; the question stripped), so `mmlu_task_configs` writes local tasks,
one per subject over our bundled CSV rows, whose prompt is open-instruct's: lm-eval then
builds, character for character, the text our reference protocol sends, and any disagreement
left is in the scoring. No dataset is downloaded: the rows go to JSONL files that `datasets`
reads locally.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from influence.data import load_heldout
from influence.data.targets import MMLU_CHOICES, mmlu_dev
from influence.errors import EvaluationError
from influence.evaluation.reference import MMLU_HEADER, mmlu_subject
from influence.evaluation.tasks import build_task

HARNESS_VERSION = "0.4.13"
INSTALL_HINT = f"lm-eval is not installed; pip install 'influence[harness]' (lm-eval=={HARNESS_VERSION})"
# open-instruct's question block (eval/mmlu/run_eval.py's format_example), as lm-eval's Jinja
DOC_TO_TEXT = "{{question}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:"


@dataclass(frozen=True)
class HarnessChoice:
    """lm-eval's reading of one item: the letter it chose, its log-likelihoods and the prompt it built."""

    subject: str
    letter: str
    loglik: tuple[float, ...]
    context: str


def require_harness() -> Any:
    """The lm_eval module; EvaluationError with the install line when it is missing."""
    try:
        import lm_eval  # heavy, optional: imported on use
    except ImportError:
        raise EvaluationError(INSTALL_HINT) from None
    return lm_eval


def mmlu_rows(limit: int | None, seed: int) -> list[tuple[str, list[str]]]:
    """(subject, [question, A, B, C, D, letter]) of the items `evaluate(model, "mmlu", limit=limit, seed=seed)`
    scores, in its order."""
    indices = build_task("mmlu").subset_indices(limit, seed)
    held = load_heldout("mmlu")
    return [(held[i].subtask, [held[i].question, *held[i].choices, held[i].answer]) for i in indices]


def mmlu_task_configs(rows: list[tuple[str, list[str]]], directory: Path, *, shots: int = 5) -> list[dict[str, Any]]:
    """lm-eval task configurations (dicts, as its TaskManager takes them) for `rows`, one per subject.

    Each reads its subject's items and dev rows from JSONL files written under `directory`, takes
    the first `shots` dev rows as its shots, and writes open-instruct's header and question block.
    """
    directory.mkdir(parents=True, exist_ok=True)
    dev = mmlu_dev()
    by_subject: dict[str, list[list[str]]] = {}
    for subject, row in rows:
        by_subject.setdefault(subject, []).append(row)
    configs = []
    for subject, subject_rows in by_subject.items():
        files = {}
        for split, split_rows in (("test", subject_rows), ("dev", dev.get(subject, [])[:shots])):
            files[split] = str(directory / f"{subject}-{split}.jsonl")
            Path(files[split]).write_text("".join(json.dumps(_doc(r)) + "\n" for r in split_rows), encoding="utf-8")
        configs.append({
            "task": f"influence_mmlu_{subject}", "dataset_path": "json", "dataset_kwargs": {"data_files": files},
            "test_split": "test", "fewshot_split": "dev", "fewshot_config": {"sampler": "first_n"},
            "num_fewshot": shots, "output_type": "multiple_choice",
            "description": MMLU_HEADER.format(mmlu_subject(subject)), "doc_to_text": DOC_TO_TEXT,
            "doc_to_choice": list(MMLU_CHOICES), "doc_to_target": "answer", "target_delimiter": " ",
            "fewshot_delimiter": "\n\n", "metric_list": [{"metric": "acc", "aggregation": "mean",
                                                           "higher_is_better": True}],
            "metadata": {"version": 1.0}})
    return configs


def _doc(row: list[str]) -> dict[str, Any]:
    return {"question": row[0], "choices": row[1:5], "answer": MMLU_CHOICES.index(row[5].strip())}


def harness_mmlu_choices(model: Any, tokenizer: Any, rows: list[tuple[str, list[str]]], directory: Path, *,
                         shots: int = 5, batch_size: int = 8, max_length: int = 4096) -> list[HarnessChoice]:
    """lm-eval's HF model on `rows` under our local tasks: one HarnessChoice per row, in the rows' order.

    Raises:
        EvaluationError: lm-eval is not installed.
    """
    require_harness()
    # heavy, optional: imported on use
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    configs = mmlu_task_configs(rows, directory, shots=shots)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
              device=str(next(model.parameters()).device))
    # only our tasks: indexing lm-eval's thousands of bundled task files takes minutes on a small machine
    output = simple_evaluate(model=lm, tasks=configs, log_samples=True, verbosity="ERROR",
                             task_manager=TaskManager(include_defaults=False, verbosity="ERROR"))
    samples = {name: sorted(found, key=lambda s: s["doc_id"]) for name, found in output["samples"].items()}
    position: dict[str, int] = {}
    choices = []
    for subject, _ in rows:
        sample = samples[f"influence_mmlu_{subject}"][position.get(subject, 0)]
        position[subject] = position.get(subject, 0) + 1
        loglik = tuple(float(response[0]) for response in sample["filtered_resps"])
        best = max(range(len(loglik)), key=lambda i: (loglik[i], -i))
        choices.append(HarnessChoice(subject=subject, letter=MMLU_CHOICES[best], loglik=loglik,
                                     context=sample["arguments"][0][0]))
    return choices
