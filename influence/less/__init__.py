"""LESS end to end: warmup LoRA, gradient features at each checkpoint, influence scores.

The orchestration layer: it owns directories under `indexes/<name>/`, reuse and resume;
the math lives in `influence.features`, `influence.index` and `influence.scoring`.
`LessSettings` loads no torch, so the CLI reads its fields at start-up; the pipeline's
names load `influence.less.pipeline` (and torch) when first used.
"""

from importlib import import_module
from typing import Any

from influence.less.settings import LessSettings

_PIPELINE = ("LessRun", "less_run", "build_features", "score_features", "run_warmup",
             "featurize_examples", "dry_run", "print_estimate")

__all__ = ["LessSettings", *_PIPELINE]


def __getattr__(name: str) -> Any:
    """The pipeline's names, imported on first use: the pipeline loads torch."""
    if name in _PIPELINE:
        return getattr(import_module("influence.less.pipeline"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
