"""LESS end to end: warmup LoRA, gradient features at each checkpoint, influence scores.

The orchestration layer: it owns directories under `indexes/<name>/`, reuse and resume;
the math lives in `influence.features`, `influence.index` and `influence.scoring`.
"""

from influence.less.pipeline import (LessRun, build_features, dry_run, featurize_examples, less_run,
                                     print_estimate, run_warmup, score_features)
from influence.less.settings import LessSettings

__all__ = ["LessSettings", "LessRun", "less_run", "build_features", "score_features", "run_warmup",
           "featurize_examples", "dry_run",
           "print_estimate"]
