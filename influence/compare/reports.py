"""A comparison's report files: results.md (the tables), results.csv (every run), results.json (the
summary, strict JSON) and plot.png, each written atomically."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from influence.compare.plot import plot_png
from influence.compare.settings import BASE, BASELINE, SelectorRow
from influence.compare.summary import measure_label
from influence.io import write_bytes, write_json, write_text


def _phase_lines(phases: dict[str, Any]) -> list[str]:
    lines = ["## Wall time per phase", "", "| phase | count | total s | mean s |", "|---|---|---|---|"]

    def line(name: str, entry: dict[str, float]) -> None:
        lines.append(f"| {name} | {entry['count']} | {entry['total']:.1f} | {entry['mean']:.1f} |")

    line("selection", phases["selection"])
    if "less" in phases:
        line("of which LESS warmup", phases["less"]["warmup"])
        lines.append(f"| of which LESS pool features | — | {phases['less']['pool_features_seconds']:.1f} | — |")
        lines.append(f"| of which LESS target features | — | {phases['less']['target_features_seconds']:.1f} | — |")
    line("training", phases["training"])
    for target, entry in phases["evaluation"].items():
        line(f"evaluation on {target}", entry)
    return lines + [""]


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "—"
    return "—" if value is None else str(value)



def markdown(summary: dict[str, Any]) -> str:
    """The comparison as markdown: per target the rows' means ± their spread, the verdicts, the picks' sources."""
    measures = summary["measures"]
    lines = _settings_lines(summary)
    for target in summary["targets"]:
        rows = summary["selectors"][target]
        present = [m for m in measures if any(m in e for e in rows.values())]
        items = summary.get("items", {}).get(target)
        lines += [f"## {target}" + (f" ({items} held-out items, the same for every row)" if items else ""), ""]
        header = ["row", "runs"] + [f"{measure_label(m)} (mean ± sd)" for m in present]
        if BASE in rows:
            header.append("vs base (target loss)")
        if BASELINE in rows:
            header += [f"vs random ({measure_label(m)})" for m in present]
        header.append("± is the spread over")
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, entry in rows.items():
            cells = [name, str(entry["runs"])]
            cells += [("—" if m not in entry else f"{entry[m]:.4f}" if entry["runs"] == 1
                       else f"{entry[m]:.4f} ± {entry[f'{m}_std']:.4f}") for m in present]
            if BASE in rows:
                cells.append(_versus(entry, "target_loss", BASE))
            if BASELINE in rows:
                cells += [_versus(entry, m, BASELINE) for m in present]
            cells.append(entry["spread"])
            lines.append("| " + " | ".join(cells) + " |")
        still = [n for n, e in rows.items() if e.get(f"target_loss_{BASE}_beyond_spread") is False]
        if still:
            lines += ["", f"Training did not move the target loss beyond the seed spread for: {', '.join(still)} "
                          "(their difference to the untrained model is within one standard deviation)."]
        guard = summary.get("contamination", {}).get(target)
        if guard:
            lines += ["", f"Contamination guard: {guard['found']:,} pool example(s) share a {guard['ngram_words']}-gram "
                          f"with {target}'s held-out items ({guard['action']}; every row's pool is cleared of every "
                          "target's)."]
        sources = summary.get("sources", {}).get(target)
        if sources:
            families = sorted({f for shares in sources.values() for f in shares})
            lines += ["", "| picks by source | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
            lines += [f"| {name} | " + " | ".join(f"{shares.get(f, 0.0):.0%}" for f in families) + " |"
                      for name, shares in sources.items()]
        overlap = summary.get("overlap", {}).get(target)
        if overlap:
            lines += ["", "| selections | Jaccard overlap |", "|---|---|"]
            lines += [f"| {pair.replace('|', ' vs ')} | {value:.3f} |" for pair, value in overlap.items()]
        length = summary.get("lengths", {}).get(target)
        if length:
            lines += ["", "| selection | mean response chars | median | max |", "|---|---|---|---|"]
            lines += [f"| {name} | {s['mean']:.0f} | {s['median']:.0f} | {s['max']:.0f} |"
                      for name, s in length.items()]
        lines.append("")
    if summary.get("phases"):
        lines += _phase_lines(summary["phases"])
    extra = [m for m in measures if m != "target_loss"]
    lines += ["## Every run", "", "| target | row | selection seed | training seed | target loss | "
              + "".join(f"{measure_label(m)} | " for m in extra) + "selection s | training s | evaluation s |",
              "|" + "---|" * (8 + len(extra))]
    for row in summary["rows"]:
        lines.append(f"| {row['target']} | {row['selector']} | {_fmt(row['selection_seed'])} | {_fmt(row['seed'])} | "
                     f"{_fmt(row['target_loss'])} | " + "".join(f"{_fmt(row.get(m))} | " for m in extra)
                     + f"{_fmt(row['selection_seconds'], 1)} | {_fmt(row['training_seconds'], 1)} | "
                       f"{_fmt(row['evaluation_seconds'], 1)} |")
    return "\n".join(lines) + "\n"


def _settings_lines(summary: dict[str, Any]) -> list[str]:
    """What was compared, in a few lines: the pool, the seeds, the training recipe, LESS's warmup."""
    config, pool = summary.get("config"), summary.get("pool")
    if not config or not pool:
        return []
    train, less = config["train"], config["less"]
    lines = ["# Comparison", "", f"- pool: {pool['size']:,} examples; k={config['k']:,}"]
    lines += [f"  - {line}" for line in pool["sources"]]
    lines += [f"- model: {train['model'] or 'bundled SmolLM2-135M-Instruct'}; training: {train['method']} "
              f"(LoRA r={train['lora']['r']}), {train['epochs']} epochs, lr {train['learning_rate']:g}, batch "
              f"{train['batch_size']}",
              f"- seeds: {config['seeds']} training, {config['selection_seeds']} selection; drawn again for every "
              f"training seed: {', '.join(config['redraw']) or 'none'}",
              f"- measures: {', '.join(config['metrics'])}; held-out items per target: "
              f"{config['limit'] or 'all'} (the same for every row)"]
    if any(SelectorRow.parse(spec).name == "less" for spec in config["selectors"]):
        lines.append(f"- LESS: {less['warmup_epochs']} warmup epochs (a checkpoint each; one at learning rate 0 is "
                     f"skipped) on {less['warmup_fraction']:.0%} of the pool, LoRA r={less['lora']['r']}, "
                     f"{less['dims']} dims, projector {less['projector'] or 'default'}")
    return lines + [""]


def _versus(entry: dict[str, Any], what: str, reference: str) -> str:
    if f"{what}_vs_{reference}" not in entry:
        return "—"
    beyond = entry[f"{what}_{reference}_beyond_spread"]
    note = "beyond seed spread" if beyond else "within seed spread" if beyond is False else "no spread"
    return f"{entry[f'{what}_vs_{reference}']:+.4f} ({note})"


def write_reports(summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """results.md, results.csv, results.json and plot.png under `out`, each written atomically."""
    paths = {"markdown": out / "results.md", "csv": out / "results.csv", "json": out / "results.json",
             "plot": out / "plot.png"}
    write_text(paths["markdown"], markdown(summary))
    buffer = io.StringIO()
    fields = list(dict.fromkeys(key for row in summary["rows"] for key in row))
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(summary["rows"])
    write_text(paths["csv"], buffer.getvalue())
    write_json(paths["json"], _finite(summary))
    write_bytes(paths["plot"], plot_png(summary))
    return paths


def _finite(value: Any) -> Any:
    """NaN and infinities as null, so results.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
