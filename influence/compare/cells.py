"""Cell: one evaluation of a comparison, what the run records and the reports read."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Cell:
    """One evaluation: a row's training run (or the untrained model) measured on one target."""

    selector: str                      # the row's label
    target: str
    seed: int | None                   # the training seed; None for the base row
    selection_seed: int | None = None  # the seed the selection was made with; None for the base row
    selection: Path | None = None
    run: Path | None = None
    eval: Path | None = None
    target_loss: float = float("nan")
    metrics: dict[str, float] = field(default_factory=dict)
    selection_seconds: float = 0.0
    training_seconds: float = 0.0
    evaluation_seconds: float = 0.0
    items: int = 0                     # held-out items evaluated
    cached: dict[str, bool] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {"target": self.target, "selector": self.selector, "selection_seed": self.selection_seed,
                "seed": self.seed, "target_loss": self.target_loss, **self.metrics,
                "selection_seconds": self.selection_seconds, "training_seconds": self.training_seconds,
                "evaluation_seconds": self.evaluation_seconds}


def selected_ids(path: Path) -> list[str]:
    """The ids of a selection file, in its order."""
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
