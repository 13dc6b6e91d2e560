"""Cell: one evaluation of a comparison, what the run records and the reports read.

A cell's target loss is the mean over its items of each item's loss (the mean NLL of the item's
reference tokens), so every item weighs the same, as in accuracy, and the row's loss is the very
statistic whose paired differences and intervals the comparison reports. The evaluation's own
token-weighted loss is kept beside it as `target_loss_tokens`.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

ITEM_KEY = "item"  # the field of an evaluation's per-item record that holds the item's id


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
    target_loss: float = float("nan")  # the mean over items of each item's loss (see the module docstring)
    metrics: dict[str, float] = field(default_factory=dict)
    selection_seconds: float = 0.0
    training_seconds: float = 0.0
    evaluation_seconds: float = 0.0
    items: int = 0                     # held-out items evaluated
    target_loss_tokens: float = float("nan")  # the evaluation's loss, every reference token weighing the same
    per_item: dict[str, dict[str, float]] = field(default_factory=dict)  # measure -> item id -> value
    cached: dict[str, bool] = field(default_factory=dict)

    def row(self, root: Path | None = None) -> dict[str, Any]:
        """The cell as a record of results.json and results.csv; its files relative to `root` (the
        comparison's directory) where they lie inside it, so the directory can move."""
        return {"target": self.target, "selector": self.selector, "selection_seed": self.selection_seed,
                "seed": self.seed, "target_loss": self.target_loss, **self.metrics,
                "target_loss_tokens": self.target_loss_tokens, "selection_seconds": self.selection_seconds,
                "training_seconds": self.training_seconds, "evaluation_seconds": self.evaluation_seconds,
                **{name: _text(getattr(self, name), root) for name in ("selection", "run", "eval")}}

    @classmethod
    def from_row(cls, row: dict[str, Any], metrics: Sequence[str], root: Path) -> "Cell":
        """A cell again from its row in results.json (under `root`), its measures read back from its
        evaluation file."""
        cell = cls(row["selector"], row["target"], row["seed"], row["selection_seed"],
                   *(root / row[k] if row.get(k) else None for k in ("selection", "run", "eval")),
                   selection_seconds=row["selection_seconds"], training_seconds=row["training_seconds"])
        cell.measure(json.loads(cell.eval.read_text(encoding="utf-8")), metrics)
        return cell

    def measure(self, results: dict[str, Any], metrics: Sequence[str]) -> None:
        """Take the cell's measures from an evaluation's results: overall, and per item where the results
        keep their items (records with an `item` id); `metrics` are the wanted ones besides the loss."""
        self.target_loss_tokens = _number(results["metrics"]["target_loss"])
        self.metrics = {m: _number(results["metrics"][m]) for m in metrics if m in results["metrics"]}
        self.evaluation_seconds = float(results.get("seconds", 0.0))
        self.items = int(results["items"])
        records = [p for p in results.get("predictions", []) if ITEM_KEY in p]
        self.per_item = {what: {p[ITEM_KEY]: _number(p[what]) for p in records if what in p}
                         for what in ("target_loss", *self.metrics)} if records else {}
        losses = list(self.per_item.get("target_loss", {}).values())
        # without per-item records (results written without them) the token-weighted loss stands in
        self.target_loss = statistics.fmean(losses) if losses else self.target_loss_tokens


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _text(path: Path | None, root: Path | None) -> str | None:
    if path is None:
        return None
    return str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)


def selected_ids(path: Path) -> list[str]:
    """The ids of a selection file, in its order."""
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
