"""Evaluation on a target's held-out items: target loss and the task metric (see evaluate.py).

    from influence.evaluation import EvalSettings, evaluate, format_table, write_results
    results = evaluate("runs/my-run", "mmlu", limit=200)     # the reference protocol by default
    print(format_table(results)); write_results(results, "mmlu.json")
"""

from influence.evaluation.evaluate import (RESULTS_FORMAT, EvalSettings, as_loaded_model, evaluate, format_table,
                                           write_results)
from influence.evaluation.metrics import accuracy, bbh_match, exact_match, extract_answer, normalize_answer, token_f1
from influence.evaluation.tasks import PROTOCOLS, EvalItem, EvalTask, build_task

__all__ = ["EvalSettings", "evaluate", "format_table", "write_results", "as_loaded_model", "EvalItem", "EvalTask",
           "build_task", "exact_match", "token_f1", "normalize_answer", "extract_answer", "bbh_match", "accuracy",
           "RESULTS_FORMAT", "PROTOCOLS"]
