"""Compare selectors: for each selector and seed, select, train, evaluate; then tables, a plot, overlaps.

Every step is cached under the output directory by a hash of what decides it, so a rerun
does only what is missing and an interrupted comparison resumes where it stopped:

    <out>/selections/<selector>-s<seed>-<key>.jsonl (+ .manifest.json)
    <out>/runs/<selector>-s<seed>-<key>/             the training run (resumes by itself)
    <out>/evals/<selector>-s<seed>-<key>.json        the evaluation results
    <out>/results.{md,csv,json}, <out>/plot.png      the comparison
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from influence.constants import manifest_path
from influence.data.contamination import Contamination
from influence.data.pools import Pool, load_pool
from influence.data.targets import load_target
from influence.errors import ConfigError, require_positive_ints
from influence import evaluation, training
from influence.evaluation import EvalSettings
from influence.io import sha256_json, write_bytes, write_json, write_text
from influence.less.settings import LessSettings
from influence.selection import decontaminate, select, write_selection
from influence.selectors import SELECTORS, make_selector
from influence.selectors.dsir import SAMPLING as DSIR_SAMPLING
from influence.training.settings import TrainSettings

log = logging.getLogger(__name__)
BASELINE = "random"


@dataclass
class CompareSettings:
    """What to compare and how to train and evaluate each selection."""

    pools: list[str] = field(metadata={"help": "Pool specs, as for select."})
    target: str = field(metadata={"help": "Target name or file: selection target and evaluation."})
    k: int = field(default=1000, metadata={"help": "Examples per selection."})
    selectors: list[str] = field(default_factory=lambda: ["less", "longest", "random"],
                                 metadata={"help": "Selectors to compare."})
    seeds: int = field(default=3, metadata={"help": "Seeds 0..seeds-1 for each selector."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate on a seeded subset of held-out items."})
    train: TrainSettings = field(default_factory=TrainSettings, metadata={"help": "Training settings."})
    less: LessSettings = field(default_factory=LessSettings, metadata={"help": "LESS selector settings."})
    eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size."})
    eval_max_length: int = field(default=2048, metadata={"help": "Evaluation token budget per sequence."})
    dsir_sampling: str = field(default="gumbel", metadata={
        "help": "dsir: gumbel (seeded importance resampling, as DSIR) or none (rank by the log weight)."})
    keep_contaminated: bool = field(default=False, metadata={
        "help": "Keep pool examples that overlap the target's held-out items (dropped before selection by default)."})

    def __post_init__(self) -> None:
        if not self.pools:
            raise ConfigError("compare needs at least one --pool")
        unknown = [s for s in self.selectors if s not in SELECTORS]
        if unknown:
            raise ConfigError(f"unknown selector(s) {', '.join(unknown)}; choose from {', '.join(sorted(SELECTORS))}")
        if not self.selectors:
            raise ConfigError("compare needs at least one selector")
        require_positive_ints(self, "k", "seeds")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"limit must be positive, got {self.limit}")
        if self.dsir_sampling not in DSIR_SAMPLING:
            raise ConfigError(f"dsir_sampling must be one of {', '.join(DSIR_SAMPLING)}, got {self.dsir_sampling!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["train"], data["less"] = self.train.to_dict(), self.less.to_dict()
        return data


@dataclass
class Cell:
    """One selector at one seed: where its pieces are and what they measured."""

    selector: str
    seed: int
    selection: Path
    run: Path
    eval: Path
    target_loss: float = float("nan")
    metric: float = float("nan")
    metric_name: str = ""
    selection_seconds: float = 0.0
    training_seconds: float = 0.0
    cached: dict[str, bool] = field(default_factory=dict)


def _selection_key(pool: Pool, target_fp: str, name: str, selector: Any, seed: int, k: int,
                   contamination: Contamination | None) -> str:
    guard = None if contamination is None else {"target": contamination.target, "ids": contamination.ids,
                                                 "kept": contamination.kept}
    return sha256_json({"pool": pool.fingerprint, "target": target_fp if selector.requires_target else None,
                        "selector": name, "params": selector.params(), "seed": seed, "k": k,
                        "contamination": guard})[:10]


def _selector_options(name: str, config: CompareSettings) -> dict[str, Any]:
    return {"less": {"settings": config.less}, "dsir": {"sampling": config.dsir_sampling}}.get(name, {})


def compare(config: CompareSettings, out: str | Path, *, on_cell: Callable[[Cell], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the comparison and write its tables and plot under `out`."""
    out = Path(out)
    pool = load_pool(config.pools)
    target = load_target(config.target)
    target_fp = sha256_json([e.id for e in target.examples])
    # once for every cell, so that no selector (targeted or not) trains on the target's test items
    scored_pool, contamination = decontaminate(pool, target, keep=config.keep_contaminated)
    if contamination is not None and contamination.ids:
        log.warning("%s", contamination.describe())
    eval_config = EvalSettings(batch_size=config.eval_batch_size, max_length=config.eval_max_length,
                             keep_predictions=False, progress=config.train.progress)
    cells: list[Cell] = []
    for name, seed in itertools.product(config.selectors, range(config.seeds)):
        selector = make_selector(name, **_selector_options(name, config))
        key = _selection_key(pool, target_fp, name, selector, seed, config.k, contamination)
        stem = f"{name}-s{seed}-{key}"
        train_key = sha256_json({"selection": key, "train": config.train.identity()})[:10]
        # every cell is evaluated on the same held-out items (the --limit subset drawn with seed 0),
        # so differences between seeds and selectors come from the selections and training alone
        eval_key = sha256_json({"run": train_key, "target": config.target, "limit": config.limit, "seed": 0,
                                "eval": eval_config.to_dict()})[:10]
        cell = Cell(name, seed, out / "selections" / f"{stem}.jsonl", out / "runs" / f"{name}-s{seed}-{train_key}",
                    out / "evals" / f"{name}-s{seed}-{eval_key}.json")
        # ---- select
        cell.cached["selection"] = cell.selection.exists() and manifest_path(cell.selection).exists()
        if not cell.cached["selection"]:
            selection = select(scored_pool, config.k, selector, target=target, seed=seed,
                               contamination=contamination)
            write_selection(selection, cell.selection, overwrite=True)
        cell.selection_seconds = json.loads(manifest_path(cell.selection).read_text())["selection_seconds"]
        # ---- train
        result = training.train(str(cell.selection), config.train.with_(seed=seed), cell.run)
        cell.cached["training"] = result.reused
        cell.training_seconds = float(result.manifest["seconds"])
        # ---- evaluate
        cell.cached["evaluation"] = cell.eval.exists()
        if cell.cached["evaluation"]:
            results = json.loads(cell.eval.read_text())
        else:
            results = evaluation.evaluate(cell.run, config.target, limit=config.limit, seed=0, config=eval_config)
            evaluation.write_results(results, cell.eval)
        cell.metric_name = results["primary_metric"]
        cell.target_loss = float(results["metrics"]["target_loss"])
        cell.metric = float(results["metrics"][cell.metric_name])
        cells.append(cell)
        if on_cell:
            on_cell(cell)
    summary = summarize(cells)
    summary["overlap"] = overlaps(cells)
    summary["lengths"] = length_stats(cells, pool)
    summary["contamination"] = None if contamination is None else contamination.manifest()
    summary["config"] = config.to_dict()
    write_reports(summary, out)
    return summary


# ------------------------------------------------------------------ the reports
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(cells: list[Cell]) -> dict[str, Any]:
    """Per-cell rows, and per selector the mean and spread, with the difference to random."""
    rows = [{"selector": c.selector, "seed": c.seed, "target_loss": c.target_loss, "metric": c.metric,
             "metric_name": c.metric_name, "selection_seconds": c.selection_seconds,
             "training_seconds": c.training_seconds} for c in cells]
    selectors: dict[str, Any] = {}
    for name in dict.fromkeys(c.selector for c in cells):
        mine = [c for c in cells if c.selector == name]
        loss, loss_std = _mean_std([c.target_loss for c in mine])
        metric, metric_std = _mean_std([c.metric for c in mine])
        selectors[name] = {"seeds": len(mine), "target_loss": loss, "target_loss_std": loss_std,
                           "metric": metric, "metric_std": metric_std}
    if BASELINE in selectors:
        base = selectors[BASELINE]
        for name, entry in selectors.items():
            if name == BASELINE:
                continue
            for what in ("target_loss", "metric"):
                delta = entry[what] - base[what]
                spread = entry[f"{what}_std"] + base[f"{what}_std"]
                entry[f"{what}_vs_random"] = delta
                # a difference counts only when it is larger than the two selectors' seed spreads together
                entry[f"{what}_beyond_spread"] = bool(abs(delta) > spread) if spread > 0 else None
    return {"rows": rows, "selectors": selectors, "metric_name": cells[0].metric_name if cells else ""}


def _ids(path: Path) -> set[str]:
    return {json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def overlaps(cells: list[Cell]) -> dict[str, float]:
    """Pairwise Jaccard of the selections, averaged over seeds."""
    by_selector: dict[str, list[set[str]]] = {}
    for cell in cells:
        by_selector.setdefault(cell.selector, []).append(_ids(cell.selection))
    out = {}
    for a, b in itertools.combinations(by_selector, 2):
        pairs = list(zip(by_selector[a], by_selector[b]))
        out[f"{a}|{b}"] = statistics.fmean(len(x & y) / len(x | y) for x, y in pairs)
    return out


def length_stats(cells: list[Cell], pool: Pool) -> dict[str, dict[str, float]]:
    """Response length (characters) of each selector's selections, and of the pool."""
    lengths = {e.id: len(e.response) for e in pool.examples}
    stats = {"pool": _length_summary(list(lengths.values()))}
    for name in dict.fromkeys(c.selector for c in cells):
        values = [lengths[i] for c in cells if c.selector == name for i in _ids(c.selection) if i in lengths]
        stats[name] = _length_summary(values)
    return stats


def _length_summary(values: list[int]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "median": float(statistics.median(values)), "max": float(max(values))}


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "" if value is None else str(value)


def markdown(summary: dict[str, Any]) -> str:
    metric = summary["metric_name"]
    lines = [f"| selector | seed | target loss | {metric} | selection s | training s |", "|---|---|---|---|---|---|"]
    for row in summary["rows"]:
        lines.append(f"| {row['selector']} | {row['seed']} | {_fmt(row['target_loss'])} | {_fmt(row['metric'])} | "
                     f"{_fmt(row['selection_seconds'], 1)} | {_fmt(row['training_seconds'], 1)} |")
    lines += ["", f"| selector | seeds | target loss (mean ± sd) | {metric} (mean ± sd) | loss vs random | "
                  f"{metric} vs random |", "|---|---|---|---|---|---|"]
    for name, entry in summary["selectors"].items():
        def versus(what: str) -> str:
            if f"{what}_vs_random" not in entry:
                return "—"
            beyond = entry[f"{what}_beyond_spread"]
            note = "beyond seed spread" if beyond else "within seed spread" if beyond is False else "no spread"
            return f"{entry[f'{what}_vs_random']:+.4f} ({note})"

        lines.append(f"| {name} | {entry['seeds']} | {entry['target_loss']:.4f} ± {entry['target_loss_std']:.4f} | "
                     f"{entry['metric']:.4f} ± {entry['metric_std']:.4f} | {versus('target_loss')} | "
                     f"{versus('metric')} |")
    if summary.get("overlap"):
        lines += ["", "| selections | Jaccard overlap |", "|---|---|"]
        lines += [f"| {pair.replace('|', ' vs ')} | {value:.3f} |" for pair, value in summary["overlap"].items()]
    guard = summary.get("contamination")
    if guard:
        lines += ["", f"Contamination guard: {guard['found']:,} pool example(s) share a {guard['ngram_words']}-gram "
                      f"with {guard['target']}'s held-out items ({guard['action']})."]
    if summary.get("lengths"):
        lines += ["", "| selection | mean response chars | median | max |", "|---|---|---|---|"]
        lines += [f"| {name} | {s['mean']:.0f} | {s['median']:.0f} | {s['max']:.0f} |"
                  for name, s in summary["lengths"].items()]
    return "\n".join(lines) + "\n"


def write_reports(summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """results.md, results.csv, results.json and plot.png under `out`, each written atomically."""
    paths = {"markdown": out / "results.md", "csv": out / "results.csv", "json": out / "results.json",
             "plot": out / "plot.png"}
    write_text(paths["markdown"], markdown(summary))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(summary["rows"][0]))
    writer.writeheader()
    writer.writerows(summary["rows"])
    write_text(paths["csv"], buffer.getvalue())
    write_json(paths["json"], summary)
    write_bytes(paths["plot"], plot_png(summary))
    return paths


def plot_png(summary: dict[str, Any]) -> bytes:
    """Target loss and the task metric per selector, mean with seed-spread error bars."""
    # optional and heavy: imported on use
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the file-only backend

    names = list(summary["selectors"])
    entries = [summary["selectors"][n] for n in names]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for axis, what, label in ((axes[0], "target_loss", "target loss (lower is better)"),
                              (axes[1], "metric", f"{summary['metric_name']} (higher is better)")):
        axis.bar(names, [e[what] for e in entries], yerr=[e[f"{what}_std"] for e in entries], capsize=6,
                 color=["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"][: len(names)])
        for index, name in enumerate(names):
            seeds = [r[what] for r in summary["rows"] if r["selector"] == name]
            axis.scatter([index] * len(seeds), seeds, color="black", s=10, zorder=3)
        axis.set_title(label)
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()
