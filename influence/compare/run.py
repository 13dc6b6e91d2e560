"""Compare selectors: select, train and evaluate each on every target; then tables, a plot, overlaps.

A row is a registered selector with its own options (`less`, `less:scoring=exact`,
`longest:unit=words`). Seeds come in two kinds: selection seeds decide what a costly
selection draws (LESS's warmup sample, adapter init and projection), training seeds decide
the training run (adapter init, data order, dropout). One selection serves every training
seed, so a LESS datastore is built once per selection seed, not once per run. Selectors
listed in `redraw` (by default `random`) draw again for every training seed instead: their
draw is the training seed. An untargeted selection is made and trained once and evaluated
on every target; a targeted one is made per target, and LESS reuses the pool's gradient
features (they do not depend on the target) across targets.

Every step is cached under the output directory by a hash of what decides it, so a rerun
does only what is missing and an interrupted comparison resumes where it stopped:

    <out>/selections/<row>-<target>-s<selection seed>-<key>.jsonl (+ its hidden .manifest.json)
    <out>/runs/<row>-s<selection seed>-t<training seed>-<key>/    training (keyed by the picked ids)
    <out>/evals/<target>/<run or base>-<key>.json                 evaluation results
    <out>/results.{md,csv,json}, <out>/plot.png                   the comparison
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from influence import evaluation, training
from influence.compare.cells import ITEM_KEY, Cell, selected_ids
from influence.compare.reports import write_reports
from influence.algorithms import TopK
from influence.compare.row_selector import make_row_selector, row_algorithm, row_diversity, row_prefilter
from influence.compare.settings import BASE, BASELINE, METRICS, CompareSettings, SelectorRow
from influence.compare.summary import comparison_summary
from influence.constants import manifest_path, safe_name
from influence.data.contamination import Contamination
from influence.data.pools import Pool, load_pool
from influence.data.targets import load_target
from influence.evaluation import EvalSettings
from influence.errors import ConfigError, EvaluationError, OutputError
from influence.io import check_output_dir, sha256_json
from influence.selection import check_algorithm, decontaminate, select, write_selection

log = logging.getLogger(__name__)


def _safe(text: str) -> str:
    text = Path(text).stem if Path(text).suffix and Path(text).exists() else text
    return safe_name(text, keep_suffix=True, keep="=") or "x"



@dataclass(frozen=True)
class Pending:
    """A step of a comparison that nothing under its output directory holds yet: what a dry run prices."""

    step: str               # "select", "train" or "evaluate"
    row: str                # the row's label; BASE for the untrained model
    target: str | None      # None: an untargeted selection or its training run, which serve every target
    seed: int | None        # the training seed (the selection seed for "select"); None for the base row


def compare(config: CompareSettings, out: str | Path, *,
            on_cell: Callable[[Cell], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the comparison and write its tables and plot under `out`."""
    out = Path(out)
    check_output_dir(out)  # before any selection, training or evaluation
    return _walk(config, out, on_cell=on_cell)


def pending_work(config: CompareSettings, out: str | Path) -> list[Pending]:
    """The selections, training runs and evaluations `compare(config, out)` would make, given what `out`
    already holds (this sitting's seeds only); selects, trains, evaluates and writes nothing."""
    pending: list[Pending] = []
    _walk(config, Path(out), pending=pending)
    return pending


def _walk(config: CompareSettings, out: Path, *, on_cell: Callable[[Cell], None] | None = None,
          pending: list[Pending] | None = None) -> dict[str, Any]:
    """compare()'s walk over every cell; with `pending`, each step it would take is listed there instead."""
    pool = load_pool(config.pools)
    targets = {spec: load_target(spec) for spec in config.targets}
    selectors = {row.label: make_row_selector(row, config) for row in config.rows()}  # bad options fail here
    diversities = {row.label: row_diversity(row, config) for row in config.rows()}
    algorithms = {row.label: row_algorithm(row) for row in config.rows()}
    for row in config.rows():  # an algorithm the row's selector cannot serve fails before any work
        check_algorithm(selectors[row.label], algorithms[row.label], diversity=diversities[row.label])
    prefilters = {row.label: row_prefilter(row, config) for row in config.rows()}
    # the contamination guard, once for every row: the pool less what overlaps any target's held-out items,
    # so an untargeted selection (evaluated on every target) never trains on a test item, and every
    # targeted row scores the same pool (one LESS warmup and datastore serve all targets)
    guards = {spec: decontaminate(pool, target, keep=config.keep_contaminated)[1] for spec, target in targets.items()}
    for found in guards.values():
        if found is not None and found.ids:
            log.warning("%s", found.describe())
    present = [g for g in guards.values() if g is not None]
    guard = present[0] if len(present) == 1 else _merged(present, pool, config.keep_contaminated)
    scored_pool = pool.without(guard.indices) if guard is not None and guard.ids and not guard.kept else pool
    for prefilter in filter(None, prefilters.values()):
        prefilter.check_pool(len(scored_pool))  # before any selection, training or evaluation
    cleared = {"ids": guard.ids if guard is not None else [], "kept": config.keep_contaminated}
    # per-item records kept: the paired differences match items by their id
    eval_config = EvalSettings(batch_size=config.eval_batch_size, max_length=config.eval_max_length,
                               keep_predictions=True, progress=config.train.progress)
    wanted = config.eval_metrics()
    item_ids = {spec: _item_ids(spec, config.limit, eval_config) for spec in config.targets}

    def eval_key(target: str, model_key: str) -> str:
        # every cell of a target is evaluated on the same held-out items (the --limit subset drawn
        # with seed 0), so differences between rows and seeds come from the selections and training
        return sha256_json({"model": model_key, "target": target, "limit": config.limit, "seed": 0,
                            "eval": eval_config.to_dict(), "metrics": wanted,
                            "format": evaluation.RESULTS_FORMAT})[:10]

    def saved_evaluation(target: str, model_key: str) -> Path | None:
        """A training run's evaluation on `target` already under `out` (named `<run>-<key>.json`), if any."""
        found = sorted((out / "evals" / _safe(target)).glob(f"*-{model_key}-{eval_key(target, model_key)}.json"))
        return found[0] if found else None

    seconds_before = _training_seconds(out)

    def eval_path(target: str, run: Path | None, model_key: str) -> Path:
        stem = run.name if run is not None else BASE
        return out / "evals" / _safe(target) / f"{stem}-{eval_key(target, model_key)}.json"

    def evaluate_cell(cell: Cell, model: Any, model_key: str) -> None:
        cell.eval = eval_path(cell.target, cell.run, model_key)
        cell.cached["evaluation"] = cell.eval.exists()
        if cell.cached["evaluation"]:
            results = json.loads(cell.eval.read_text())
        else:
            results = evaluation.evaluate(model, cell.target, limit=config.limit, seed=0, config=eval_config,
                                          metrics=wanted)
            _name_items(results, item_ids[cell.target])
            evaluation.write_results(results, cell.eval)
        cell.measure(results, wanted)

    cells: list[Cell] = []

    def finish(cell: Cell) -> None:
        cells.append(cell)
        if on_cell:
            on_cell(cell)

    if config.base:
        for spec in config.targets:
            base_key = sha256_json({"base": config.train_model})
            if pending is not None:
                if not eval_path(spec, None, base_key).exists():
                    pending.append(Pending("evaluate", BASE, spec, None))
                continue
            cell = Cell(BASE, spec, None)
            evaluate_cell(cell, config.train_model, base_key)
            finish(cell)
    for row in config.rows():
        selector = selectors[row.label]
        prefilter = prefilters[row.label]
        targeted = selector.requires_target or (prefilter is not None and prefilter.targeted)
        row_targets = list(targets) if targeted else [None]
        for target_spec in row_targets:
            target = targets[target_spec] if target_spec is not None else None
            target_fp = sha256_json([e.id for e in target.examples]) if target is not None else None
            seen: set[tuple[str, int]] = set()
            ours = set(config.seed_pairs(row))
            for selection_seed, seed in config.seed_pairs(row, every_seed=True):
                # a seed left to another process or sitting (`only_seeds`) is reported once its evaluations are
                # saved, and never selected, trained or evaluated here
                runs_here = (selection_seed, seed) in ours
                diversity, algorithm = diversities[row.label], algorithms[row.label]
                chosen_by = {} if algorithm.name == TopK().name else {"algorithm": algorithm.to_dict()}
                key = sha256_json({"pool": pool.fingerprint, "target": target_fp, "selector": row.name,
                                   "params": selector.params(), "seed": selection_seed, "k": config.k,
                                   "contamination": cleared,
                                   **({"diversity": diversity.to_dict()} if diversity else {}), **chosen_by,
                                   **({"prefilter": prefilter.to_dict()} if prefilter else {})})[:10]
                where = _safe(target_spec) if target_spec is not None else "any"
                selection = out / "selections" / f"{_safe(row.label)}-{where}-s{selection_seed}-{key}.jsonl"
                cached = selection.exists() and manifest_path(selection).exists()
                if not cached and not runs_here:
                    continue
                evaluated_on = config.targets if target_spec is None else [target_spec]
                if not cached and pending is not None:  # one selection serves every training seed
                    drawn = Pending("select", row.label, target_spec, selection_seed)
                    pending += [*([] if drawn in pending else [drawn]), Pending("train", row.label, target_spec, seed),
                                *(Pending("evaluate", row.label, spec, seed) for spec in evaluated_on)]
                    continue
                if not cached:
                    made = select(scored_pool, config.k, selector, target=target, seed=selection_seed,
                                  contamination=guard, diversity=diversity, algorithm=algorithm,
                                  prefilter=prefilter)
                    write_selection(made, selection, overwrite=True)
                ids = selected_ids(selection)
                picked = sha256_json(ids)
                if (picked, seed) in seen:  # another selection seed picked the very same examples
                    continue
                seen.add((picked, seed))
                train_key = sha256_json({"ids": picked, "train": config.train.identity(), "seed": seed})[:10]
                # a row that picked the very same examples as another shares its training run
                existing = sorted((out / "runs").glob(f"*-t{seed}-{train_key}"))
                run = existing[0] if existing else \
                    out / "runs" / f"{_safe(row.label)}-s{selection_seed}-t{seed}-{train_key}"
                saved = {spec: saved_evaluation(spec, train_key) for spec in evaluated_on}
                if (not existing or not runs_here) and all(saved.values()) and pending is not None:
                    continue
                if (not existing or not runs_here) and all(saved.values()):
                    # a later sitting, perhaps on another machine: the run's evaluations are kept, its weights
                    # (never committed) need not be, so it is not trained again
                    trained = run / "manifest.json"
                    for spec in evaluated_on:
                        cell = Cell(row.label, spec, seed, selection_seed, selection, run, saved[spec])
                        cell.cached.update(selection=cached, training=True, evaluation=True)
                        cell.selection_seconds = json.loads(manifest_path(selection).read_text())["selection_seconds"]
                        cell.training_seconds = (float(json.loads(trained.read_text())["seconds"]) if trained.exists()
                                                 else seconds_before.get(saved[spec].name, 0.0))
                        cell.measure(json.loads(saved[spec].read_text()), wanted)
                        finish(cell)
                    continue
                if not runs_here:  # another process's seed, not yet evaluated
                    continue
                if pending is not None:  # a run trained before (its manifest written last) is reused
                    if not (run / "manifest.json").exists():
                        pending.append(Pending("train", row.label, target_spec, seed))
                    pending += [Pending("evaluate", row.label, spec, seed) for spec in evaluated_on
                                if not eval_path(spec, run, train_key).exists()]
                    continue
                result = training.train(str(selection), config.train.with_(seed=seed), run)
                for spec in evaluated_on:
                    cell = Cell(row.label, spec, seed, selection_seed, selection, run)
                    cell.cached.update(selection=cached, training=result.reused)
                    cell.selection_seconds = json.loads(manifest_path(selection).read_text())["selection_seconds"]
                    cell.training_seconds = float(result.manifest["seconds"])
                    evaluate_cell(cell, run, train_key)
                    finish(cell)
    if pending is not None:
        return {}
    contamination = {spec: found.manifest() for spec, found in guards.items() if found is not None}
    summary = comparison_summary(cells, config.to_dict(), pool, contamination, out)
    write_reports(summary, out)
    return summary


def _training_seconds(out: Path) -> dict[str, float]:
    """Evaluation file name -> the training seconds an earlier report of `out` recorded for its run."""
    saved = out / "results.json"
    if not saved.exists():
        return {}
    rows = json.loads(saved.read_text(encoding="utf-8")).get("rows", [])
    return {Path(row["eval"]).name: float(row.get("training_seconds") or 0.0) for row in rows if row.get("eval")}


def regenerate(out: str | Path, *, versus: list[str] | None = None) -> dict[str, Any]:
    """Redo a comparison's tables and plot from the evaluation files its results.json names, without
    selecting, training or evaluating anything; rewrites the reports under `out`. `versus`, when
    given, replaces the saved rows every other is also paired against.

    Raises:
        OutputError: `out` holds no results.json.
        ConfigError: a `versus` name is none of the saved rows (or is random or base, always compared).
    """
    out = Path(out)
    saved = out / "results.json"
    if not saved.exists():
        raise OutputError(f"{out} holds no results.json: run the comparison first")
    previous = json.loads(saved.read_text(encoding="utf-8"))
    config = previous["config"]
    if versus is not None:
        labels = list(dict.fromkeys(row["selector"] for row in previous["rows"] if row["selector"] != BASE))
        unknown = [v for v in versus if v not in labels or v == BASELINE]
        if unknown:
            raise ConfigError(f"versus names no other row of {out}: {', '.join(unknown)}; choose from "
                              f"{', '.join(x for x in labels if x != BASELINE)}")
        config = {**config, "versus": list(versus)}
    metrics = [METRICS[m] for m in config["metrics"] if m != "loss"]
    cells = [Cell.from_row(row, metrics, out) for row in previous["rows"]]
    summary = comparison_summary(cells, config, load_pool(config["pools"]), previous.get("contamination", {}), out)
    write_reports(summary, out)
    return summary


def _item_ids(spec: str, limit: int | None, config: EvalSettings) -> list[tuple[str, str, str]]:
    """Each held-out item of the evaluation, in its order: (id, subtask, reference); the id is a hash of
    the item's subtask, prompt and reference, the same in every evaluation of the comparison."""
    items = evaluation.build_task(spec, protocol=config.protocol, mmlu_shots=config.mmlu_shots).subset(limit, 0)
    return [(sha256_json([i.subtask, i.prompt, i.reference])[:16], i.subtask, i.reference) for i in items]


def _name_items(results: dict[str, Any], items: list[tuple[str, str, str]]) -> None:
    """Write each item's id into its record of the results, checking that the records are those items.

    Raises:
        EvaluationError: the results' items are not the ones the comparison drew.
    """
    if "predictions" not in results:  # results without per-item records: no paired difference to make
        return
    records = results["predictions"]
    if len(records) != len(items) or any((r["subtask"], r["reference"]) != (subtask, reference)
                                         for r, (_, subtask, reference) in zip(records, items)):
        raise EvaluationError(f"the evaluation of {results.get('target')} did not return the held-out items the "
                              "comparison drew, one record each in their order: its items cannot be paired")
    for record, (item, _, _) in zip(records, items):
        record[ITEM_KEY] = item


def _merged(guards: list[Contamination], pool: Pool, kept: bool) -> Contamination | None:
    """Several targets' guards as one record: what an untargeted selection was cleared of."""
    if not guards:
        return None
    ids = list(dict.fromkeys(i for g in guards for i in g.ids))
    found = set(ids)
    return Contamination(target="+".join(g.target for g in guards),
                         heldout_items=sum(g.heldout_items for g in guards),
                         heldout_skipped=sum(g.heldout_skipped for g in guards),
                         indices=[n for n, i in enumerate(pool.ids) if i in found], ids=ids, kept=kept,
                         n=guards[0].n, min_words=guards[0].min_words, seconds=sum(g.seconds for g in guards),
                         pool_fingerprint=pool.fingerprint)
