"""A comparison's numbers from its cells: per target and row the mean and spread of each measure and the
paired differences to random and to the untrained model, with bootstrap intervals; the picks' sources, overlaps and lengths; wall times."""

from __future__ import annotations

import collections
import itertools
import json
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from influence.compare.cells import Cell, selected_ids
from influence.compare.paired import (BOOTSTRAP_SEED, LEVEL, RESAMPLES, SHARED_REFERENCE, lower_is_better,
                                       paired_difference)
from influence.compare.settings import BASE, BASELINE, METRICS
from influence.constants import manifest_path
from influence.data.pools import Pool


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def spread_kind(cells: list[Cell]) -> str:
    """What the ± of a row is a spread over, in words, from the cells themselves."""
    if cells[0].seed is None:
        return "none (one evaluation of the untrained model)"
    selections = {c.selection for c in cells}
    if len(cells) == 1:
        return "none (one run)"
    if len(selections) == 1:
        return f"{len(cells)} training seeds, one selection"
    if len(selections) == len(cells) and all(c.selection_seed == c.seed for c in cells):
        drawn = f"{len(cells)} seeds, each a new draw and its own training seed"
        return f"{drawn} (every draw picked the same examples)" if _same_picks(cells) else drawn
    return f"{len(selections)} selection seeds x {len({c.seed for c in cells})} training seeds"


def _same_picks(cells: list[Cell]) -> bool:
    """Whether the cells' selection files, all readable, hold one set of examples (a draw whose weights
    are so peaked that every seed picks alike: its ± is then a spread over training seeds only)."""
    paths = [c.selection for c in cells]
    if not all(p is not None and p.is_file() for p in paths):
        return False
    return len({frozenset(selected_ids(p)) for p in paths}) == 1


def summarize(cells: list[Cell], metrics: Sequence[str] = (), *, resamples: int = RESAMPLES,
              bootstrap_seed: int = BOOTSTRAP_SEED, root: Path | None = None,
              versus: Sequence[str] = ()) -> dict[str, Any]:
    """Per target and row: mean and spread of each measure over the row's runs, and the paired difference
    to random, to base and to each row of `versus` with its bootstrap interval and verdict (see `paired`);
    a difference already made the other way round (less against random, then random against less) is not
    made again.

    `root`: the comparison's directory, which the records' file paths are relative to. Runs pair by
    (selection seed, training seed) where the reference has that run, else by training seed
    where the reference has one run of it; against base, every run pairs with its one evaluation.
    """
    measures = ["target_loss", *[m for m in metrics if any(m in c.metrics for c in cells)]]
    per_target: dict[str, dict[str, Any]] = {}
    references = (BASELINE, BASE, *versus)
    for target in dict.fromkeys(c.target for c in cells):
        mine = [c for c in cells if c.target == target]
        groups = {name: [c for c in mine if c.selector == name] for name in dict.fromkeys(c.selector for c in mine)}
        rows: dict[str, Any] = {}
        for name, group in groups.items():
            entry: dict[str, Any] = {"runs": len(group), "selections": len({c.selection for c in group}),
                                     "spread": spread_kind(group)}
            for what in measures:
                values = [_value(c, what) for c in group]
                if all(math.isfinite(v) for v in values):
                    entry[what], entry[f"{what}_std"] = _mean_std(values)
            rows[name] = entry
        for n, reference in enumerate(references):
            if reference not in groups:
                continue
            skip = {reference, BASE, *(references[:n] if reference != BASE else ())}
            for name, group in groups.items():
                if name in skip:
                    continue
                for what in measures:
                    found = paired_difference(*_paired_values(group, groups[reference], what),
                                              lower_better=lower_is_better(what), resamples=resamples,
                                              seed=bootstrap_seed)
                    if found is not None:
                        rows[name][f"{what}_vs_{reference}"] = found.to_dict()
        per_target[target] = rows
    return {"rows": [c.row(root) for c in cells], "selectors": per_target, "measures": measures,
            "references": list(references),
            "targets": list(per_target), "bootstrap": {"resamples": resamples, "seed": bootstrap_seed,
                                                       "level": LEVEL}}


def _paired_values(row: list[Cell], reference: list[Cell], what: str) -> tuple[dict, dict]:
    """The row's and the reference's per-item values of `what`, keyed so that paired runs share a key."""
    values = {(c.selection_seed, c.seed): c.per_item.get(what, {}) for c in row}
    if len(reference) == 1 and reference[0].seed is None:  # the untrained model: one evaluation for every run
        return values, {SHARED_REFERENCE: reference[0].per_item.get(what, {})}
    exact = {(c.selection_seed, c.seed): c.per_item.get(what, {}) for c in reference}
    by_seed: dict[Any, list[dict[str, float]]] = {}
    for c in reference:
        by_seed.setdefault(c.seed, []).append(c.per_item.get(what, {}))
    partners = {key: exact[key] if key in exact else by_seed[key[1]][0]
                for key in values if key in exact or len(by_seed.get(key[1], ())) == 1}
    return values, partners


def _value(cell: Cell, what: str) -> float:
    return cell.target_loss if what == "target_loss" else cell.metrics.get(what, float("nan"))


def _trained(cells: list[Cell]) -> list[Cell]:
    return [c for c in cells if c.selection is not None]


def _by_target_row(cells: list[Cell]) -> dict[str, dict[str, list[Cell]]]:
    out: dict[str, dict[str, list[Cell]]] = {}
    for cell in _trained(cells):
        out.setdefault(cell.target, {}).setdefault(cell.selector, []).append(cell)
    return out


def _selections(cells: list[Cell]) -> list[Path]:
    return list(dict.fromkeys(c.selection for c in cells))


def source_shares(cells: list[Cell], pool: Pool) -> dict[str, dict[str, dict[str, float]]]:
    """Per target and row, the share of picks from each pool source family (alpaca, flan_cot, ...),
    pooled over the row's selections; `pool` is the pool's own mix. A pool source named as the target
    (flan_cot/strategyqa for flan_cot:strategyqa) counts apart from the rest of its family: what each
    selector believes is relevant."""
    sources = {e.id: e.source or "unknown" for e in pool.examples}

    def label(source: str, own: str) -> str:
        family = source.split("/")[0]
        if source == own:
            return f"{own} (the target's)"
        return f"{family}, other sources" if own.startswith(family + "/") else family

    def shares(ids: list[str], own: str) -> dict[str, float]:
        counts = collections.Counter(label(sources.get(i, "unknown"), own) for i in ids)
        return {name: counts[name] / len(ids) for name in sorted(counts)}

    out: dict[str, dict[str, dict[str, float]]] = {}
    for target, rows in _by_target_row(cells).items():
        own = target.replace(":", "/")  # flan_cot:strategyqa's rows come from the pool source flan_cot/strategyqa
        out[target] = {"pool": shares(list(sources), own)}
        for name, group in rows.items():
            out[target][name] = shares([i for path in _selections(group) for i in selected_ids(path)], own)
    return out


def overlaps(cells: list[Cell]) -> dict[str, dict[str, float]]:
    """Per target, pairwise Jaccard of the rows' selections, averaged over pairs taken in seed order."""
    out: dict[str, dict[str, float]] = {}
    for target, rows in _by_target_row(cells).items():
        sets = {name: [set(selected_ids(p)) for p in _selections(group)] for name, group in rows.items()}
        out[target] = {f"{a}|{b}": statistics.fmean(len(x & y) / len(x | y) for x, y in zip(sets[a], sets[b]))
                       for a, b in itertools.combinations(sets, 2)}
    return out


def length_stats(cells: list[Cell], pool: Pool) -> dict[str, dict[str, dict[str, float]]]:
    """Per target, response length (characters) of each row's selections, and of the pool."""
    lengths = {e.id: len(e.response) for e in pool.examples}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for target, rows in _by_target_row(cells).items():
        out[target] = {"pool": _length_summary(list(lengths.values()))}
        for name, group in rows.items():
            out[target][name] = _length_summary([lengths[i] for p in _selections(group) for i in selected_ids(p)
                                                 if i in lengths])
    return out


def _length_summary(values: list[int]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "median": float(statistics.median(values)), "max": float(max(values))}


def phase_seconds(cells: list[Cell]) -> dict[str, Any]:
    """Measured wall time of each phase, to hold against the dry run: per selection, per training run,
    per evaluation; for LESS also its warmups and the features it computed. Cached work counts at the
    time it first took."""
    selections = {c.selection: c.selection_seconds for c in cells if c.selection is not None}
    runs = {c.run: c.training_seconds for c in cells if c.run is not None}
    evals = {c.eval: (c.target, c.evaluation_seconds) for c in cells}

    def stats(values: list[float]) -> dict[str, float]:
        return {"count": len(values), "total": sum(values), "mean": statistics.fmean(values) if values else 0.0}

    warmups: dict[str, float] = {}
    features = {"pool": 0.0, "target": 0.0}
    for path in selections:
        store = json.loads(manifest_path(path).read_text()).get("datastore")
        if not store:
            continue
        if "warmup" in store:  # recorded in the selection's manifest: no datastore needed on this machine
            warmups[store["warmup"]["dir"]] = float(store["warmup"]["seconds"])
        else:  # selections made before the manifest recorded it: the datastore's own warmup manifest, if here
            warmup = Path(store["workdir"]) / "warmup" / "manifest.json"
            if warmup.exists():
                warmups[str(warmup.parent)] = float(json.loads(warmup.read_text()).get("seconds", 0.0))
        for role, done in store.get("featurized", {}).items():
            features[role] = features.get(role, 0.0) + done.get("gradient_seconds", 0.0) \
                + done.get("projection_seconds", 0.0)
    out: dict[str, Any] = {"selection": stats(list(selections.values())), "training": stats(list(runs.values())),
                           "evaluation": {target: stats([s for t, s in evals.values() if t == target])
                                          for target in dict.fromkeys(t for t, _ in evals.values())}}
    if warmups:
        out["less"] = {"warmup": stats(list(warmups.values())), "pool_features_seconds": features["pool"],
                       "target_features_seconds": features["target"]}
    return out




def comparison_summary(cells: list[Cell], config: dict[str, Any], pool: Pool, contamination: dict[str, Any],
                       root: Path) -> dict[str, Any]:
    """Everything the reports show, from the cells alone (and the pool they were picked from), so that
    a comparison's tables can be redone from its saved evaluation files; `root` is its directory."""
    metrics = [METRICS[m] for m in config["metrics"] if m != "loss"]
    summary = summarize(cells, metrics, resamples=config.get("bootstrap_resamples", RESAMPLES),
                        bootstrap_seed=config.get("bootstrap_seed", BOOTSTRAP_SEED), root=root,
                        versus=config.get("versus", ()))
    summary["sources"] = source_shares(cells, pool)
    summary["overlap"] = overlaps(cells)
    summary["lengths"] = length_stats(cells, pool)
    summary["phases"] = phase_seconds(cells)
    summary["items"] = {c.target: c.items for c in cells}
    summary["pool"] = {"size": len(pool), "fingerprint": pool.fingerprint, "sources": pool.describe()}
    summary["contamination"] = contamination
    summary["config"] = config
    return summary


def measure_label(what: str) -> str:
    """A measure's name as tables and plots write it."""
    return {"target_loss": "target loss", "exact_match": "exact match"}.get(what, what)
