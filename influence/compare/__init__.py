"""Compare selectors: select, train and evaluate each row on every target; then tables, a plot, overlaps.

One module per part: `settings` (rows, measures, CompareSettings), `row_selector` (a row's selector and
top-k walk), `cells` (one evaluation's record), `run` (compare(): the cached run; pending_work(): what it
would still do; regenerate(): the reports again from saved evaluations), `estimate` (the dry run),
`paired` (paired differences and their bootstrap intervals), `summary` (the numbers), `reports` and `plot`
(the files). The settings load no torch, so the CLI reads their fields at start-up; every other name loads
its module when first used.
"""

from importlib import import_module
from typing import Any

from influence.compare.settings import (BASE, BASELINE, GENERATION_METRICS, METRICS, RECIPES, CompareSettings,
                                        Recipe, SelectorRow, parse_rows)

# name -> the module that defines it, imported on first use: the run and the dry run load torch
_LAZY = {
    "Cell": "cells", "selected_ids": "cells",
    "make_row_selector": "row_selector", "row_diversity": "row_selector",
    "compare": "run", "regenerate": "run", "pending_work": "run", "Pending": "run",
    "PairedDifference": "paired", "paired_difference": "paired", "bootstrap_interval": "paired",
    "CompareEstimate": "estimate", "estimate_compare": "estimate",
    "summarize": "summary", "spread_kind": "summary", "source_shares": "summary", "overlaps": "summary",
    "length_stats": "summary", "phase_seconds": "summary", "comparison_summary": "summary",
    "markdown": "reports", "write_reports": "reports", "differences": "reports",
    "plot_png": "plot",
}

__all__ = ["BASE", "BASELINE", "GENERATION_METRICS", "METRICS", "RECIPES", "CompareSettings", "Recipe", "SelectorRow",
           "parse_rows",
           *_LAZY]


def __getattr__(name: str) -> Any:
    """The run's, the dry run's and the reports' names, imported on first use."""
    if name in _LAZY:
        return getattr(import_module(f"influence.compare.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
