"""A comparison's report files: results.md (the tables), results.csv (every run), differences.csv (the
paired differences and their intervals), results.json (the summary, strict JSON) and plot.png, each
written atomically."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from influence.compare.plot import plot_png
from influence.compare.paired import NO_DIFFERENCE
from influence.compare.settings import BASE, BASELINE, RECIPES, SelectorRow
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


def _references(summary: dict[str, Any]) -> list[str]:
    """The rows each row is compared with: random, base and any named by --versus."""
    return summary.get("references", [BASELINE, BASE])


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "—"
    return "—" if value is None else str(value)



def markdown(summary: dict[str, Any]) -> str:
    """The comparison as markdown: per target the rows' means ± their spread, the paired differences with their
    intervals and verdicts, the picks' sources, overlaps and lengths."""
    measures = summary["measures"]
    lines = _settings_lines(summary)
    for target in summary["targets"]:
        rows = summary["selectors"][target]
        present = [m for m in measures if any(m in e for e in rows.values())]
        items = summary.get("items", {}).get(target)
        lines += [f"## {target}" + (f" ({items} held-out items, the same for every row)" if items else ""), ""]
        header = ["row", "runs"] + [f"{measure_label(m)} (mean ± sd)" for m in present]
        references = [r for r in _references(summary) if r in rows]
        header += [f"vs {reference} ({measure_label(m)})" for reference in references for m in present]
        header.append("± is the spread over")
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, entry in rows.items():
            cells = [name, str(entry["runs"])]
            cells += [("—" if m not in entry else f"{entry[m]:.4f}" if entry["runs"] == 1
                       else f"{entry[m]:.4f} ± {entry[f'{m}_std']:.4f}") for m in present]
            cells += [_versus(entry.get(f"{m}_vs_{reference}")) for reference in references for m in present]
            cells.append(entry["spread"])
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", _interval_note(summary)]
        left_out = [_left_out(name, reference, found, rows[reference]["runs"]) for name, entry in rows.items()
                    for reference in references if (found := entry.get(f"target_loss_vs_{reference}"))]
        if any(left_out):
            lines.append("Runs without a partner of the same training seed are left out of the paired difference: "
                         + "; ".join(filter(None, left_out)) + ".")
        missing = [n for n, e in rows.items() if n not in (BASELINE, BASE) and references
                   and not any(k.startswith("target_loss_vs_") for k in e)]
        if missing:
            lines.append(f"No paired difference for {', '.join(missing)}: its evaluations keep no per-item results "
                         "(written by an older version; delete them to evaluate again).")
        still = [n for n, e in rows.items() if (e.get(f"target_loss_vs_{BASE}") or {}).get("verdict") == NO_DIFFERENCE]
        if still:
            lines += ["", f"Training did not move the target loss measurably for: {', '.join(still)} "
                          f"(the interval of its difference to the untrained model holds zero)."]
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
    lines += [f"- models: selectors {_model_name(less['model'])}; training, evaluation and the base row "
              f"{_model_name(config.get('train_model', train['model']))}",
              f"- training: {train['method']} (LoRA r={train['lora']['r']}), {train['epochs']} epochs, lr "
              f"{train['learning_rate']:g}, batch {train['batch_size']}" + _recipe_text(config),
              f"- seeds: {config['seeds']} training, {config['selection_seeds']} selection; drawn again for every "
              f"training seed: {', '.join(config['redraw']) or 'none'}",
              f"- measures: {', '.join(config['metrics'])}; held-out items per target: "
              f"{config['limit'] or 'all'} (the same for every row)"]
    if any(SelectorRow.parse(spec).name == "less" for spec in config["selectors"]):
        lines.append(f"- LESS: {less['warmup_epochs']} warmup epochs (a checkpoint each; one at learning rate 0 is "
                     f"skipped) on {less['warmup_fraction']:.0%} of the pool, LoRA r={less['lora']['r']}, "
                     f"{less['dims']} dims, projector {less['projector'] or 'default'}")
    return lines + [""]


def _model_name(spec: str | None) -> str:
    return spec or "bundled SmolLM2-135M-Instruct"


def _recipe_text(config: dict[str, Any]) -> str:
    """`; recipe small-k (its provenance)`, and which of its numbers the comparison changed."""
    name = config.get("recipe")
    if not name or name not in RECIPES:
        return ""
    recipe = RECIPES[name]
    changed = recipe.changed(config["train"])
    return f"; recipe {name}: {recipe.provenance}" + (f" (changed here: {', '.join(changed)})" if changed else "")


def _versus(found: dict[str, Any] | None) -> str:
    """`-0.0123 [-0.0200, -0.0050] better`: the paired difference, its interval and the verdict."""
    if not found:
        return "—"
    return f"{found['difference']:+.4f} [{found['low']:+.4f}, {found['high']:+.4f}] {found['verdict']}"


def _interval_note(summary: dict[str, Any]) -> str:
    boot = summary["bootstrap"]
    return (f"vs columns: the row minus the reference, paired by item and training seed, averaged over items and "
            f"seeds, with its {boot['level']:.0%} bootstrap interval ({boot['resamples']:,} resamples of seeds, "
            f"then items; bootstrap seed {boot['seed']}); the verdict says whether the interval excludes zero. "
            "Target loss is each item's mean token NLL, averaged over items.")


def _left_out(name: str, reference: str, found: dict[str, Any], reference_runs: int) -> str:
    """`less vs random: 2 of random's 3 runs paired; left out: ...`, or '' when every run paired."""
    unused = reference_runs - found["seeds"] if reference != BASE else 0
    if not unused and not found["unpaired"]:
        return ""
    text = f"{name} vs {reference}: {found['seeds']} run(s) paired"
    if unused > 0:
        text += f", {unused} of {reference}'s {reference_runs} unused"
    if found["unpaired"]:
        text += f", {name}'s " + ", ".join(_run_name(r) for r in found["unpaired"]) + " left out"
    return text


def _run_name(key: Any) -> str:
    return f"selection seed {key[0]}, training seed {key[1]}" if isinstance(key, (list, tuple)) else str(key)


def differences(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Every paired difference of the comparison as one flat record (differences.csv)."""
    out = []
    for target, rows in summary["selectors"].items():
        for name, entry in rows.items():
            for reference in _references(summary):
                for what in summary["measures"]:
                    found = entry.get(f"{what}_vs_{reference}")
                    if found:
                        out.append({"target": target, "row": name, "measure": what, "reference": reference,
                                    **{k: v for k, v in found.items() if k != "unpaired"},
                                    "unpaired": ";".join(_run_name(r) for r in found["unpaired"])})
    return out


def write_reports(summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """results.md, results.csv (every run), differences.csv (every paired difference), results.json and plot.png
    under `out`, each written atomically."""
    paths = {"markdown": out / "results.md", "csv": out / "results.csv", "differences": out / "differences.csv",
             "json": out / "results.json", "plot": out / "plot.png"}
    write_text(paths["markdown"], markdown(summary))
    write_text(paths["csv"], _csv(summary["rows"]))
    write_text(paths["differences"], _csv(differences(summary)))
    write_json(paths["json"], _finite(summary))
    write_bytes(paths["plot"], plot_png(summary))
    return paths


def _csv(records: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(key for record in records for key in record)))
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def _finite(value: Any) -> Any:
    """NaN and infinities as null, so results.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
