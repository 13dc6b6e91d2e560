"""Evaluate a model on a target's held-out items: target loss and the task metric.

    from influence.evaluation import evaluate, format_table
    results = evaluate("runs/my-run", "bbh", limit=200)     # a training output, a model id or a LoadedModel
    print(format_table(results))

Target loss is the mean NLL per token of the reference answers (token-weighted over all
items; the answer's own tokens only), given the task's prompt: the sensitive metric at small
model sizes. The task metric is MMLU accuracy by option log-likelihood, BBH exact match, TyDi
QA F1 and exact match, or exact match for an instruction/output file; for user_oriented and
flan_cot:<source> (exact match of the chain of thought's final answer) it is measured only when
asked for. Named targets are asked under the reference protocol by default (see
`influence.evaluation.reference`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from influence.errors import ConfigError, EvaluationError, require_positive_ints
from influence.evaluation import metrics
from influence.evaluation.model_outputs import ReferenceScores, generate_answers, reference_scores
from influence.evaluation.tasks import NAMED_TARGETS, PROTOCOLS, EvalItem, EvalTask, build_task
from influence.io import write_json
from influence.models import LoadedModel, load_model
from influence.provenance import envelope
from influence.training import is_training_output, load_trained

RESULTS_ARTIFACT = "influence.eval-results"
RESULTS_FORMAT = 2   # 2: protocols (reference prompts by default), answer-only target loss (1 scored the end-of-turn marker)
# each task kind's metrics beside the target loss; all but MMLU's accuracy need generation
TASK_METRICS = {"choice": ("accuracy",), "bbh": ("exact_match",), "qa": ("exact_match", "f1"),
                "generation": ("exact_match",), "cot": ("exact_match",)}
METRICS = ("accuracy", "exact_match", "f1")


@dataclass
class EvalSettings:
    """Evaluation settings."""

    protocol: str = field(default="reference", metadata={
        "help": "reference: the named targets as LESS's evaluation scripts ask them (MMLU 5-shot and BBH 3-shot "
                "chain of thought as raw text, TyDi QA 1-shot per language as a chat turn); chat: every prompt as "
                "a user turn in the model's format, as results before format 2 were measured.",
        "choices": PROTOCOLS})
    batch_size: int = field(default=8, metadata={"help": "Sequences per forward pass or generation batch."})
    max_length: int = field(default=2048, metadata={
        "help": "Token budget per sequence; longer prompts lose their oldest few-shot tokens."})
    max_new_tokens: int = field(default=32, metadata={
        "help": "chat protocol: greedy answer length without chain of thought (at most each subtask's longest "
                "answer + 16)."})
    cot_max_new_tokens: int = field(default=256, metadata={
        "help": "chat protocol: greedy answer length with chain of thought (the reasoning comes first)."})
    answer_tokens: int | None = field(default=None, metadata={
        "help": "reference protocol: greedy answer length [default: the reference's, BBH 512, TyDi QA 50]."})
    mmlu_shots: int = field(default=5, metadata={"help": "MMLU dev examples before each question (0-5)."})
    reuse_prefix: bool = field(default=True, metadata={
        "help": "Run the prompt tokens a subtask's items share (the few-shot context) once per subtask and "
                "model, then only each item's own tokens: the same numbers to float precision, faster."})
    keep_predictions: bool = field(default=True, metadata={"help": "Keep each item's answer in the results."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars on stderr."})

    def __post_init__(self) -> None:
        require_positive_ints(self, "batch_size", "max_length", "max_new_tokens", "cot_max_new_tokens")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.answer_tokens is not None and (isinstance(self.answer_tokens, bool) or self.answer_tokens <= 0):
            raise ConfigError(f"answer_tokens must be a positive integer, got {self.answer_tokens!r}")
        if not 0 <= self.mmlu_shots <= 5:
            raise ConfigError(f"mmlu_shots must be 0 to 5 (MMLU has 5 dev examples per subject), got {self.mmlu_shots}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def for_tests(cls, **changes: Any) -> "EvalSettings":
        return cls(**{"batch_size": 4, "max_length": 512, "max_new_tokens": 8, "cot_max_new_tokens": 16,
                      "progress": False, **changes})


def as_loaded_model(model: Any) -> Any:
    """A LoadedModel from a LoadedModel, a training output directory, or a model spec."""
    if isinstance(model, LoadedModel):
        return model
    if model is None or isinstance(model, (str, os.PathLike)):
        if model is not None and is_training_output(model):
            return load_trained(model)
        return load_model(None if model is None else str(model))
    raise EvaluationError(f"expected a model spec, a training output directory or a LoadedModel, "
                          f"got {type(model).__name__}")


def evaluate(model: Any, target: str, *, limit: int | None = None, seed: int = 0, cot: bool = False,
             config: EvalSettings | None = None, metrics: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate `model` on the held-out items of `target`.

    Args:
        model: a LoadedModel, a directory written by `influence train`, a model id/directory/.gguf, or None
            for the bundled default model.
        target: bbh, mmlu, tydiqa, user_oriented[:validation], flan_cot:<source>[:validation], or a file
            (question/answers records are scored as QA; instruction/output records by target loss and exact match).
        limit: evaluate a seeded random subset of this many items.
        seed: picks the subset.
        cot: chat protocol: BBH with its 3-shot chain-of-thought prompt (the reference protocol always is).
        config: protocol, batch size, lengths, shots; None for the defaults.
        metrics: the task metrics wanted besides the target loss (from `METRICS`); None for a named target's
            default (its own; none for user_oriented and flan_cot, whose generation is opt-in), and none for a
            file (its loss only: exact match needs generation). A task whose metrics are not wanted skips
            them, and with them its generation.

    Returns:
        The results: metrics overall and per subtask, notes, settings, and per-item predictions.

    Raises:
        EvaluationError, UnknownNameError, DataError, ModelError: bad target, file or model.
    """
    config = config or EvalSettings()
    unknown = sorted(set(metrics or ()) - set(METRICS))
    if unknown:
        raise ConfigError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    started = time.perf_counter()
    task = build_task(target, protocol=config.protocol, cot=cot, mmlu_shots=config.mmlu_shots)
    if metrics is None and task.default_metrics is not None:
        metrics = task.default_metrics  # () for a target whose generation is opt-in
    items = task.subset(limit, seed)
    if not items:
        raise EvaluationError(f"target {target} has no held-out items to evaluate")
    if metrics is None:
        metrics = TASK_METRICS[task.kind] if target in NAMED_TARGETS else ()
    loaded = as_loaded_model(model)
    loaded.model.eval()
    items = task.fitted(items, loaded.tokenizer, config.max_length)
    common = {"max_length": config.max_length, "batch_size": config.batch_size, "progress": config.progress,
              "reuse_prefix": config.reuse_prefix}
    scores = reference_scores(loaded.model, loaded.tokenizer, items, **common)
    if set(metrics) & set(TASK_METRICS[task.kind]):
        predictions, per_item = _task_metric(task, items, scores, loaded, config, cot, common)
    else:
        predictions, per_item = [""] * len(items), {}

    results: dict[str, Any] = {
        **envelope(RESULTS_ARTIFACT, RESULTS_FORMAT, config.to_dict()),
        "target": task.name,
        "kind": task.kind,
        "model": {"spec": loaded.spec, "weights_sha256": loaded.weights_sha256},
        "items": len(items),
        "available": len(task.items),
        "limit": limit,
        "seed": seed,
        "protocol": task.protocol,
        "cot": cot or (task.protocol == "reference" and task.kind == "bbh"),
        "metrics": _aggregate(items, scores, per_item),
        "subtasks": {name: _aggregate([items[i] for i in idx], _pick(scores, idx), {k: [v[i] for i in idx]
                                      for k, v in per_item.items()})
                     for name, idx in _by_subtask(items).items()},
        "notes": list(task.notes),
        "truncated_prompts": scores.truncated,
        "answer_stop": task.stop if task.kind != "choice" else None,
        **({"split": task.split} if task.split is not None else {}),
        "answer_tokens": answer_budget(task, config, cot) if per_item and task.kind != "choice" else None,
        "seconds": round(time.perf_counter() - started, 2),
    }
    results["primary_metric"] = _PRIMARY[task.kind] if per_item else "target_loss"
    # the reference scripts average their metric over subtasks (tasks, languages); here beside the item mean
    results["subtask_mean"] = {name: sum(s[name] for s in results["subtasks"].values()) / len(results["subtasks"])
                               for name in per_item}
    if len(items) < len(task.items):
        per = f", at most {task.per_subtask} per subtask" if limit is None else ""
        results["notes"].append(f"a seeded subset: {len(items)} of {len(task.items)} items{per} (seed {seed})")
    if scores.truncated:
        results["notes"].append(f"{scores.truncated} prompts were longer than max_length={config.max_length} "
                                "and lost their oldest tokens")
    if config.keep_predictions:
        results["predictions"] = [
            {"subtask": item.subtask, "reference": item.reference, "prediction": predictions[i],
             "target_loss": scores.nll[i] / max(scores.tokens[i], 1), **{k: v[i] for k, v in per_item.items()},
             **({"option_loglik": scores.option_loglik[i]} if scores.option_loglik and per_item else {})}
            for i, item in enumerate(items)]
    return results


_PRIMARY = {"choice": "accuracy", "bbh": "exact_match", "qa": "f1", "generation": "exact_match", "cot": "exact_match"}


def _task_metric(task: EvalTask, items: list[EvalItem], scores: Any, loaded: Any, config: EvalSettings, cot: bool,
                 common: dict[str, Any]) -> tuple[list[str], dict[str, list[float]]]:
    """Each item's prediction and its per-item metric values."""
    if task.kind == "choice":
        chosen = [metrics.choose_option(loglik, item.options) for loglik, item in zip(scores.option_loglik, items)]
        return chosen, {"accuracy": [float(c == item.reference) for c, item in zip(chosen, items)]}
    if task.protocol == "reference" and task.kind in ("bbh", "qa"):
        return _reference_metric(task, items, loaded, config, common)
    if task.kind == "generation":
        budget: int | list[int] = [min(_tokens(loaded.tokenizer, item.reference) + REFERENCE_MARGIN,
                                       config.cot_max_new_tokens)
                                   for item in items]
    elif cot or task.kind == "cot":
        budget = config.cot_max_new_tokens
    else:
        caps = answer_caps(task, loaded.tokenizer, config.max_new_tokens)
        budget = [caps[item.subtask] for item in items]
    raw = generate_answers(loaded.model, loaded.tokenizer, items, max_new_tokens=budget, stop=task.stop, **common)
    if task.kind == "bbh":
        answers = [metrics.extract_answer(text) for text in raw]
        return answers, {"exact_match": [metrics.bbh_match(a, item.reference) for a, item in zip(answers, items)]}
    if task.kind == "cot":
        answers = [metrics.extract_answer(text) for text in raw]
        return answers, {"exact_match": [metrics.cot_answer_match(a, item.answers[0])
                                         for a, item in zip(answers, items)]}
    if task.kind == "qa":
        answers = [metrics.extract_answer(text) for text in raw]
        return answers, {"exact_match": [metrics.exact_match(a, item.answers) for a, item in zip(answers, items)],
                         "f1": [metrics.token_f1(a, item.answers) for a, item in zip(answers, items)]}
    answers = [text.strip() for text in raw]
    return answers, {"exact_match": [metrics.exact_match(a, item.answers) for a, item in zip(answers, items)]}


def _reference_metric(task: EvalTask, items: list[EvalItem], loaded: Any, config: EvalSettings,
                      common: dict[str, Any]) -> tuple[list[str], dict[str, list[float]]]:
    """BBH and TyDi QA as the reference scripts read and score a greedy answer."""
    budget = answer_budget(task, config, cot=True)
    raw = generate_answers(loaded.model, loaded.tokenizer, items, max_new_tokens=budget, stop=task.stop, **common)
    if task.kind == "bbh":
        answers = [metrics.bbh_reference_answer(text) for text in raw]
        return answers, {"exact_match": [metrics.bbh_reference_match(a, item.reference)
                                         for a, item in zip(answers, items)]}
    answers = [text.strip() for text in raw]
    pairs = list(zip(answers, items))
    return answers, {"exact_match": [metrics.exact_match(a, item.answers, squad=True) for a, item in pairs],
                     "f1": [metrics.token_f1(a, item.answers, squad=True) for a, item in pairs]}


def expected_answer_tokens(task: EvalTask, config: EvalSettings, reference_tokens: float) -> float:
    """About how many new tokens a greedy answer runs, for pricing: a chain of thought (`cot` and `generation`
    targets) about as long as its references (`reference_tokens`, their mean) within its budget, since it
    stops at its answer; any other answer its whole budget."""
    if task.kind in ("cot", "generation"):
        return min(reference_tokens + REFERENCE_MARGIN, config.cot_max_new_tokens)
    return answer_budget(task, config, cot=False)


REFERENCE_MARGIN = 8  # new tokens a `generation` answer may take beyond its reference


def answer_budget(task: EvalTask, config: EvalSettings, cot: bool) -> int:
    """The most new tokens a greedy answer may take: the reference protocol's own (or answer_tokens), else the
    chat protocol's settings (a direct answer is further capped per subtask, see `answer_caps`)."""
    if task.protocol == "reference" and task.answer_tokens is not None:
        return config.answer_tokens or task.answer_tokens
    return config.cot_max_new_tokens if cot or task.kind == "generation" else config.max_new_tokens


ANSWER_MARGIN = 16  # new tokens allowed beyond a subtask's longest reference answer (a lead-in, a period)


def answer_caps(task: EvalTask, tokenizer: Any, limit: int) -> dict[str, int]:
    """Per subtask, the new tokens a direct answer may take: its longest accepted answer over all the task's
    held-out items, plus ANSWER_MARGIN, at most `limit` (a property of the task, not of the item asked)."""
    longest: dict[str, int] = {}
    for item in task.items:
        size = max(_tokens(tokenizer, answer) for answer in (item.answers or (item.reference,)))
        longest[item.subtask] = max(longest.get(item.subtask, 0), size)
    return {name: min(limit, size + ANSWER_MARGIN) for name, size in longest.items()}


def _tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _by_subtask(items: list[EvalItem]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(item.subtask, []).append(index)
    return dict(sorted(groups.items()))


def _pick(scores: Any, indices: list[int]) -> Any:
    return ReferenceScores(nll=[scores.nll[i] for i in indices], tokens=[scores.tokens[i] for i in indices],
                           option_loglik=None, truncated=0)


def _aggregate(items: list[EvalItem], scores: Any, per_item: dict[str, list[float]]) -> dict[str, Any]:
    tokens = sum(scores.tokens)
    out: dict[str, Any] = {"n": len(items), "target_loss": sum(scores.nll) / tokens if tokens else math.nan,
                           "reference_tokens": tokens}
    for name, values in per_item.items():
        out[name] = sum(values) / len(values) if values else math.nan
    return out


# ------------------------------------------------------------------ output
def write_results(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the results as JSON (atomically)."""
    return write_json(path, _finite(results))


def _finite(value: Any) -> Any:
    """NaN is not JSON: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def format_table(results: dict[str, Any], *, max_rows: int = 15) -> str:
    """A one-screen summary: the overall metrics, then the subtasks (the worst first past max_rows)."""
    names = ["target_loss"] + [k for k in ("accuracy", "exact_match", "f1") if k in results["metrics"]]
    width = max([len("overall")] + [len(s) for s in results["subtasks"]][:200]) + 2
    width = min(width, 40)
    lines = [f"{results['target']} ({results['kind']}, {results.get('protocol', 'chat')} protocol): {results['items']} "
             f"of {results['available']} held-out items, model {results['model']['spec']}",
             f"{'subtask':<{width}}{'n':>6}" + "".join(f"{name:>13}" for name in names)]

    def row(label: str, values: dict[str, Any]) -> str:
        cells = "".join(f"{_number(values.get(name)):>13}" for name in names)
        return f"{label[:width - 1]:<{width}}{values['n']:>6}" + cells

    lines.append(row("overall", results["metrics"]))
    subtasks = results["subtasks"]
    if len(subtasks) > 1:
        shown = list(subtasks.items())
        if len(shown) > max_rows:
            key = results["primary_metric"]
            sign = -1 if key == "target_loss" else 1  # the worst: the highest loss, the lowest of a metric
            shown = sorted(shown, key=lambda kv: sign * (kv[1].get(key) if kv[1].get(key) is not None
                                                         else -sign * math.inf))[:max_rows]
            worst = "highest" if sign < 0 else "lowest"
            lines.append(f"(the {max_rows} subtasks with the {worst} {key} of {len(subtasks)}; all are in the JSON)")
        lines += [row(name, values) for name, values in shown]
    lines += [f"note: {note}" for note in results.get("notes", [])]
    return "\n".join(lines)


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.4f}"
