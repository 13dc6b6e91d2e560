"""plot.png of a comparison: per target and measure, each row's mean, spread and runs, and the untrained model."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from influence.compare.settings import BASE
from influence.compare.summary import measure_label

COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


def plot_png(summary: dict[str, Any]) -> bytes:
    """One panel per target and measure: each trained row's mean with its spread as an error bar, its
    runs as small dots beside it, and the untrained model as a dashed line."""
    # optional and heavy: imported on use
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the file-only backend

    targets = summary["targets"]
    columns = [m for m in summary["measures"]
               if any(m in e for rows in summary["selectors"].values() for e in rows.values())]
    figure, axes = plt.subplots(len(targets), len(columns), figsize=(4.8 * len(columns), 3.4 * len(targets)),
                                squeeze=False)
    for r, target in enumerate(targets):
        rows = summary["selectors"][target]
        names = [n for n in rows if n != BASE]
        for c, what in enumerate(columns):
            axis = axes[r][c]
            shown = [n for n in names if what in rows[n]]
            if not shown:
                axis.set_visible(False)
                continue
            for index, name in enumerate(shown):
                colour = COLOURS[index % len(COLOURS)]
                axis.errorbar([index], [rows[name][what]], yerr=[rows[name][f"{what}_std"]], fmt="o", color=colour,
                              capsize=5, markersize=7)
                runs = [row[what] for row in summary["rows"] if row["target"] == target and row["selector"] == name
                        and row.get(what) is not None]
                axis.scatter([index + 0.15] * len(runs), runs, color=colour, s=10, alpha=0.6)
            if what in rows.get(BASE, {}):
                axis.axhline(rows[BASE][what], color="black", linestyle="--", linewidth=1, label="untrained")
                axis.legend(loc="best", fontsize=7)
            values = [rows[n][what] + sign * rows[n][f"{what}_std"] for n in shown for sign in (-1, 1)]
            values += [row[what] for row in summary["rows"] if row["target"] == target and row.get(what) is not None]
            low, high = min(values), max(values)
            pad = max(high - low, 1e-3) * 0.1
            axis.set_ylim(low - pad, high + pad)
            axis.set_xlim(-0.5, len(shown) - 0.5)
            axis.set_xticks(range(len(shown)), shown, rotation=20, ha="right", fontsize=8)
            better = "lower" if what == "target_loss" else "higher"
            axis.set_title(f"{Path(target).name}: {measure_label(what)} ({better} is better)", fontsize=9)
            axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()
