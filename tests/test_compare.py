"""`influence compare` on a tiny model and pool: several targets, seeds of two kinds, rows with options,
the base row, sources of the picks, the dry run; tables, plot, and a rerun that trains nothing."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from influence.cli import main
from influence.compare import (RECIPES, Cell, CompareSettings as CompareConfig, SelectorRow, estimate_compare, parse_rows,
                               spread_kind, summarize)
from influence.errors import ConfigError, SelectionError
from influence.less import LessSettings
from influence.lora import LoraSettings
from tests.conftest import write_jsonl


def _files(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", [
        {"instruction": f"What is {a} plus {a}?", "output": f"{a} plus {a} is {2 * a}."} for a in range(8)] + [
        {"instruction": f"Describe colour {c}.", "output": f"The colour {c} is a colour I like a lot."}
        for c in ("red", "blue", "green", "pink", "grey", "gold")])
    target = write_jsonl(tmp_path / "target.jsonl", [
        {"instruction": "What is 20 plus 20?", "output": "20 plus 20 is 40.", "subtask": "sums"},
        {"instruction": "What is 30 plus 30?", "output": "30 plus 30 is 60.", "subtask": "sums"}])
    return pool, target


def _colour_target(tmp_path):
    return write_jsonl(tmp_path / "colours.jsonl", [
        {"instruction": "Describe colour teal.", "output": "The colour teal is a colour I like a lot."},
        {"instruction": "Describe colour plum.", "output": "The colour plum is a colour I like a lot."}])


def _train_args(model) -> list[str]:
    return ["--epochs", "1", "--lr", "0.01", "--train-batch-size", "2", "--train-max-length", "128",
            "--model", str(model), "--lora-r", "4", "--lora-alpha", "16", "--dims", "64", "--warmup-fraction", "0.5",
            "--warmup-epochs", "1", "--max-length", "128"]


def _stand_in_training(monkeypatch, loss=lambda model, index: 1.0) -> list[str]:
    """Replace training and evaluation with stand-ins that only record which selection files were
    trained on (the returned list): for tests about what compare selects, not what it trains. The
    stand-in evaluation scores every held-out item `loss(model, item index)` and writes its results."""
    from types import SimpleNamespace

    import influence.evaluation
    import influence.training
    from influence.evaluation import build_task

    trained: list[str] = []

    def evaluate(model, target, *, limit=None, seed=0, config=None, metrics=None):
        items = build_task(target).subset(limit, seed)
        losses = [float(loss(model, n)) for n in range(len(items))]
        return {"primary_metric": "target_loss", "metrics": {"target_loss": sum(losses) / len(losses)},
                "items": len(items), "seconds": 0.0, "target": target,
                "predictions": [{"subtask": i.subtask, "reference": i.reference, "prediction": "", "target_loss": v}
                                for i, v in zip(items, losses)]}

    monkeypatch.setattr(influence.training, "train", lambda data, config, out_dir: trained.append(data) or
                        SimpleNamespace(reused=False, manifest={"seconds": 0.0}))
    monkeypatch.setattr(influence.evaluation, "evaluate", evaluate)
    return trained


def _rows(out: Path) -> list[tuple]:
    return [(r["target"], r["selector"], r["selection_seed"], r["seed"])
            for r in json.loads((out / "results.json").read_text())["rows"]]


def test_two_targets_share_the_pool_features_untargeted_rows_train_once_and_a_rerun_reuses_everything(
        tmp_path, tiny_model_dir):
    pool, sums = _files(tmp_path)
    colours = _colour_target(tmp_path)
    out, indexes = tmp_path / "cmp", tmp_path / "indexes"
    args = ["compare", "--pool", str(pool), "--target", str(sums), "--target", str(colours), "--k", "4",
            "--selectors", "less,less:scoring=exact,longest,random", "--seeds", "2", *_train_args(tiny_model_dir),
            "--scoring", "faiss", "--index-root", str(indexes), "--out", str(out)]
    first = CliRunner().invoke(main, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    summary = json.loads((out / "results.json").read_text())
    s, c = str(sums), str(colours)
    assert _rows(out) == [(s, "base", None, None), (c, "base", None, None),
                          (s, "less", 0, 0), (s, "less", 0, 1), (c, "less", 0, 0), (c, "less", 0, 1),
                          (s, "less:scoring=exact", 0, 0), (s, "less:scoring=exact", 0, 1),
                          (c, "less:scoring=exact", 0, 0), (c, "less:scoring=exact", 0, 1),
                          (s, "longest", 0, 0), (c, "longest", 0, 0), (s, "longest", 0, 1), (c, "longest", 0, 1),
                          (s, "random", 0, 0), (c, "random", 0, 0), (s, "random", 1, 1), (c, "random", 1, 1)]
    # one warmup and one pool datastore serve both targets and both LESS rows; each target has its own features
    (workdir,) = list(indexes.iterdir())
    assert len(list(workdir.glob("features/epoch-*/pool-*"))) == 1
    assert len(list(workdir.glob("features/epoch-*/target-*"))) == 2
    # untargeted selections are trained once and evaluated on both targets
    assert len(list(out.glob("runs/longest-*"))) == 2 and len(list(out.glob("runs/random-*"))) == 2
    assert len(list(out.glob("runs/less-s*"))) == 4
    # exact scoring of the projected features picked what FAISS scoring picked: its row reuses those runs
    assert not list(out.glob("runs/less_scoring*"))
    exact = [r for r in summary["rows"] if r["selector"] == "less:scoring=exact"]
    assert [r["target_loss"] for r in exact] == [r["target_loss"] for r in summary["rows"] if r["selector"] == "less"]
    longest = [r for r in summary["rows"] if r["selector"] == "longest"]
    assert longest[0]["training_seconds"] == longest[1]["training_seconds"]
    # the verdicts and the kind of spread are in the tables
    rows = summary["selectors"][s]
    assert rows["less"]["spread"] == "2 training seeds, one selection"
    assert rows["random"]["spread"] == "2 seeds, each a new draw and its own training seed"
    assert rows["base"]["spread"].startswith("none")
    assert "target_loss_vs_random" in rows["longest"] and "target_loss_vs_base" in rows["longest"]
    assert summary["overlap"][s]["longest|random"] < 1.0
    assert summary["sources"][s]["pool"] == {"pool.jsonl": 1.0}
    text = (out / "results.md").read_text()
    assert f"## {s}" in text and f"## {c}" in text and "± is the spread over" in text
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "results.csv").read_text().startswith("target,selector,selection_seed,seed,target_loss")

    second = CliRunner().invoke(main, args, catch_exceptions=False)
    assert second.exit_code == 0, second.output
    assert second.output.count("(reused selection, training, evaluation)") == 16
    assert second.output.count("(reused evaluation)") == 2  # the base rows
    assert json.loads((out / "results.json").read_text())["rows"] == summary["rows"]

    # the wall-time table's LESS lines come from the selections' manifests: a report redone without the
    # datastore (a fresh machine, another working directory) still shows the warmup that was measured
    assert summary["phases"]["less"]["warmup"]["count"] == 1 and summary["phases"]["less"]["warmup"]["total"] > 0
    shutil.rmtree(indexes)
    redone = CliRunner().invoke(main, [*args, "--reports-only"], catch_exceptions=False)
    assert redone.exit_code == 0, redone.output
    assert json.loads((out / "results.json").read_text())["phases"]["less"] == summary["phases"]["less"]


def test_one_selection_serves_every_training_seed_and_selection_seeds_make_their_own_datastores(
        tmp_path, tiny_model_dir):
    pool, target = _files(tmp_path)
    out, indexes = tmp_path / "cmp", tmp_path / "indexes"
    args = ["compare", "--pool", str(pool), "--target", str(target), "--k", "4", "--selectors", "less,longest",
            "--seeds", "2", "--selection-seeds", "2", "--no-base", *_train_args(tiny_model_dir),
            "--index-root", str(indexes), "--out", str(out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len(list(indexes.iterdir())) == 2                     # one warmup + datastore per selection seed
    assert [r[1:] for r in _rows(out)] == [("less", 0, 0), ("less", 0, 1), ("less", 1, 0), ("less", 1, 1),
                                           ("longest", 0, 0), ("longest", 0, 1)]  # longest: seed 1 picked the same
    rows = json.loads((out / "results.json").read_text())["selectors"][str(target)]
    assert rows["less"]["spread"] == "2 selection seeds x 2 training seeds"
    assert rows["longest"]["spread"] == "2 training seeds, one selection"
    assert "base" not in rows


def test_the_picks_are_reported_by_source(tmp_path, tiny_model_dir):
    sums = write_jsonl(tmp_path / "sums.jsonl", [
        {"instruction": f"What is {a} plus {a}?", "output": f"{a} plus {a} is {2 * a}."} for a in range(6)])
    words = write_jsonl(tmp_path / "words.jsonl", [
        {"instruction": f"Say word {w}.", "output": f"Here is the word {w}, said at some length for you."}
        for w in ("one", "two", "three", "four", "five", "six")])
    target = _files(tmp_path)[1]
    out = tmp_path / "cmp"
    args = ["compare", "--pool", str(sums), "--pool", str(words), "--target", str(target), "--k", "4",
            "--selectors", "longest", "--seeds", "1", "--no-base", *_train_args(tiny_model_dir), "--out", str(out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    shares = json.loads((out / "results.json").read_text())["sources"][str(target)]
    assert shares["pool"] == {"sums.jsonl": 0.5, "words.jsonl": 0.5}
    assert shares["longest"] == {"words.jsonl": 1.0}  # the longer responses all come from one file
    assert "| picks by source | sums.jsonl | words.jsonl |" in (out / "results.md").read_text()


def test_picks_from_the_targets_own_source_count_apart_from_the_rest_of_its_family(tmp_path, monkeypatch):
    """On a mixed pool and a flan_cot:<source> target, each row's picks split three ways: the target's own
    source, the family's other sources, and the other families (what each selector believes relevant)."""
    from influence.compare import compare

    _stand_in_training(monkeypatch)
    summary = compare(CompareConfig(pools=["alpaca:sample=30", "flan_cot:sample=70,stratify=source"],
                                    targets=["flan_cot:strategyqa"], k=10, selectors=["bm25", "longest"], seeds=1,
                                    base=False), tmp_path / "cmp")
    shares = summary["sources"]["flan_cot:strategyqa"]
    own, others = "flan_cot/strategyqa (the target's)", "flan_cot, other sources"
    assert set(shares["pool"]) == {"alpaca", own, others}
    assert sum(shares["pool"].values()) == pytest.approx(1.0)
    assert 0 < shares["pool"][own] < shares["pool"][others]
    for row in ("bm25", "longest"):  # each row's shares are its picks' sources, so labelled
        (picked,) = (tmp_path / "cmp" / "selections").glob(f"{row}-*.jsonl")
        sources = [json.loads(line)["source"] for line in picked.read_text().splitlines()]
        expected = {own: sum(s == "flan_cot/strategyqa" for s in sources) / 10,
                    others: sum(s.startswith("flan_cot/") and s != "flan_cot/strategyqa" for s in sources) / 10,
                    "alpaca": sum(s == "alpaca" for s in sources) / 10}
        assert shares[row] == pytest.approx({k: v for k, v in expected.items() if v})
    assert f"| picks by source | alpaca | {others} | {own} |" in (tmp_path / "cmp" / "results.md").read_text()


def test_generation_metrics_are_opt_in(tmp_path, tiny_model_dir):
    pool, target = _files(tmp_path)
    runs = {}
    for metrics in ("loss", "loss,em"):
        out = tmp_path / metrics.replace(",", "-")
        result = CliRunner().invoke(main, ["compare", "--pool", str(pool), "--target", str(target), "--k", "4",
                                           "--selectors", "longest", "--seeds", "1", "--metrics", metrics,
                                           *_train_args(tiny_model_dir), "--out", str(out)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        runs[metrics] = json.loads((out / "results.json").read_text())
    assert "exact_match" not in runs["loss"]["rows"][0]
    assert runs["loss"]["measures"] == ["target_loss"]
    assert all("exact_match" in row for row in runs["loss,em"]["rows"])
    evals = list((tmp_path / "loss").glob("evals/*/*.json"))
    assert evals and all(json.loads(p.read_text())["primary_metric"] == "target_loss" for p in evals)
    assert [r["target_loss"] for r in runs["loss"]["rows"]] == [r["target_loss"] for r in runs["loss,em"]["rows"]]


def test_rows_are_selectors_with_options():
    assert parse_rows("less,less:scoring=exact,index=flat,longest") == [
        "less", "less:scoring=exact,index=flat", "longest"]
    row = SelectorRow.parse("less:scoring=exact,dims=256")
    assert row.name == "less" and dict(row.options) == {"scoring": "exact", "dims": 256}
    assert row.label == "less:scoring=exact,dims=256"
    with pytest.raises(ConfigError, match="key=value"):
        SelectorRow.parse("less:scoring")
    with pytest.raises(ConfigError, match="unknown selector"):
        CompareConfig(pools=["p"], targets=["t"], selectors=["lesss"])
    with pytest.raises(ConfigError, match="its own name"):
        CompareConfig(pools=["p"], targets=["t"], selectors=["longest,longest"])
    with pytest.raises(ConfigError, match="unknown metric"):
        CompareConfig(pools=["p"], targets=["t"], metrics=["bleu"])


def test_bad_rows_fail_before_any_work(tmp_path, tiny_model_dir):
    pool, target = _files(tmp_path)
    out = tmp_path / "cmp"
    for selectors, message in (("longest:colour=red", "longest:colour=red"), ("nope", "unknown selector")):
        result = CliRunner().invoke(main, ["compare", "--pool", str(pool), "--target", str(target), "--k", "4",
                                           "--selectors", selectors, "--model", str(tiny_model_dir), "--out",
                                           str(out)])
        assert result.exit_code == 2 and message in result.output
        assert not out.exists()


def test_the_dry_run_prices_each_phase_with_the_select_estimator_and_writes_nothing(tmp_path, tiny_model_dir):
    from influence.data import load_pool, load_target
    from influence.less.estimate import ModelShape, estimate_less
    from influence.models import load_model

    pool, sums = _files(tmp_path)
    colours = _colour_target(tmp_path)
    less = LessSettings.for_tests(model=str(tiny_model_dir), index_root=tmp_path / "indexes")
    config = CompareConfig(pools=[str(pool)], targets=[str(sums), str(colours)], k=4, selectors=["less,random"],
                           seeds=3, less=less)
    estimate = estimate_compare(config, flops_per_second=1e9)
    phases = {p["name"]: p for p in estimate.phases}
    loaded = load_model(str(tiny_model_dir))
    reference = estimate_less(load_pool([str(pool)]).examples, load_target(str(sums)).examples, less,
                              shape=ModelShape.from_model(loaded.model, less.lora), tokenizer=loaded.tokenizer,
                              flops_per_second=1e9)
    assert phases["LESS warmup"]["seconds"] == pytest.approx(reference.seconds["warmup"])
    per_checkpoint = phases["LESS pool features, per checkpoint"]
    assert per_checkpoint["count"] == less.warmup_epochs
    assert per_checkpoint["seconds"] == pytest.approx(reference.seconds["featurize_pool"])
    assert phases[f"LESS target features, {sums}"]["seconds"] == pytest.approx(reference.seconds["featurize_target"])
    assert phases["training, per run"]["count"] == 2 * 3 + 3       # less per target and seed; random per seed
    assert phases[f"evaluation on {sums}, per run"]["count"] == 1 + 3 + 3  # base, less, random
    assert estimate.total_seconds == pytest.approx(sum(p["seconds"] for p in estimate.phases))

    args = ["compare", "--pool", str(pool), "--target", str(sums), "--k", "4", "--selectors", "less,random",
            *_train_args(tiny_model_dir), "--index-root", str(tmp_path / "indexes"), "--out", str(tmp_path / "cmp"),
            "--dry-run"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for phase in ("LESS warmup", "LESS pool features, per checkpoint", "LESS target features", "training, per run",
                  "evaluation on", "total:"):
        assert phase in result.output
    assert not (tmp_path / "cmp").exists() and not (tmp_path / "indexes").exists()


def _cell(tmp_path, name, seed, loss, metric, selection=None):
    return Cell(name, "t", seed, seed, selection or tmp_path / f"{name}-{seed}", target_loss=loss,
                metrics={"accuracy": metric})


def _per_item(losses, accuracy):
    return {"target_loss": {f"i{n}": v for n, v in enumerate(losses)},
            "accuracy": {f"i{n}": v for n, v in enumerate(accuracy)}}


def _cell(tmp_path, name, seed, shift, hits):
    """A run whose item i has loss 1 + i/10 + shift (+ a seed wobble) and accuracy hits[i]."""
    losses = [1.0 + n / 10 + shift + 0.01 * (seed - 0.5) * (-1) ** n for n in range(40)]
    cell = Cell(name, "t", seed, seed, tmp_path / f"{name}-{seed}", target_loss=sum(losses) / 40,
                metrics={"accuracy": sum(hits) / 40})
    cell.per_item = _per_item(losses, hits)
    return cell


def test_a_redraw_whose_every_draw_picked_the_same_examples_says_so_in_its_spread(tmp_path):
    def drawn(seed, ids):
        path = tmp_path / f"dsir-s{seed}.jsonl"
        write_jsonl(path, [{"id": i, "instruction": i, "response": i} for i in ids])
        return Cell("dsir", "t", seed, seed, path)

    same = [drawn(seed, ["b", "a", "c"] if seed else ["a", "b", "c"]) for seed in range(3)]
    assert spread_kind(same) == "3 seeds, each a new draw and its own training seed (every draw picked the same examples)"
    differ = [*same[:2], drawn(2, ["a", "b", "d"])]
    assert spread_kind(differ) == "3 seeds, each a new draw and its own training seed"


def test_differences_to_random_and_to_base_are_paired_intervals_with_verdicts(tmp_path):
    base = Cell("base", "t", None, target_loss=1.5, metrics={"accuracy": 0.3})
    base.per_item = _per_item([1.0 + n / 10 + 0.3 for n in range(40)], [n % 2 for n in range(40)])
    half, more = [n % 2 for n in range(40)], [int(n % 2 or n < 10) for n in range(40)]
    summary = summarize([base, _cell(tmp_path, "random", 0, 0.0, half), _cell(tmp_path, "random", 1, 0.0, half),
                         _cell(tmp_path, "longest", 0, -0.2, more), _cell(tmp_path, "longest", 1, -0.2, more),
                         _cell(tmp_path, "less", 0, 0.3, half), _cell(tmp_path, "less", 1, 0.3, half)],
                        ["accuracy"], resamples=500, bootstrap_seed=3)
    rows = summary["selectors"]["t"]
    longest = rows["longest"]["target_loss_vs_random"]
    assert longest["difference"] == pytest.approx(-0.2) and longest["high"] < 0 and longest["verdict"] == "better"
    assert rows["longest"]["accuracy_vs_random"]["verdict"] == "better"      # 5 more hits of 40, by item
    assert rows["less"]["target_loss_vs_random"]["verdict"] == "worse"
    assert rows["less"]["accuracy_vs_random"]["verdict"] == "no difference at this size"  # the very same hits
    assert rows["less"]["target_loss_vs_base"]["verdict"] == "no difference at this size"  # the base's losses
    assert rows["less"]["target_loss_vs_base"]["seeds"] == 2                  # each run against the one base
    assert rows["longest"]["target_loss_vs_base"]["verdict"] == "better"
    assert "target_loss_vs_random" not in rows["base"] and "target_loss_vs_random" not in rows["random"]
    assert summary["bootstrap"] == {"resamples": 500, "seed": 3, "level": 0.95}
    from influence.compare import markdown
    from influence.compare.reports import differences

    text = markdown(summary)
    assert "-0.2000 [" in text and "] better" in text and "500 resamples" in text and "bootstrap seed 3" in text
    assert "Training did not move the target loss measurably for: less" in text
    records = differences(summary)
    assert {(r["row"], r["measure"], r["reference"]) for r in records} >= {
        ("longest", "target_loss", "random"), ("less", "accuracy", "base")}
    assert all(r["low"] <= r["difference"] <= r["high"] for r in records)


def test_a_summary_from_the_saved_evaluation_files_equals_the_one_in_memory(tmp_path, monkeypatch):
    """Reports are regenerable: the cells' measures are read back from their evaluation files, so a later
    sitting can add rows and redo the tables; the per-item target loss is the rows' loss."""
    import shutil
    import zlib

    from influence.compare import compare, regenerate

    pool, target = _files(tmp_path)
    _stand_in_training(monkeypatch, loss=lambda model, n: 1.0 + (zlib.crc32(f"{model}-{n}".encode()) % 100) / 100)
    out = tmp_path / "cmp"
    config = CompareConfig(pools=[str(pool)], targets=[str(target)], k=4, selectors=["longest", "random"], seeds=3,
                           bootstrap_resamples=300)
    memory = compare(config, out)
    written = json.loads((out / "results.json").read_text())
    moved = Path(shutil.copytree(out, tmp_path / "moved"))  # the directory may move: its records are relative
    (moved / "results.md").unlink()
    again = regenerate(moved)
    assert json.loads(json.dumps(again)) == json.loads(json.dumps(memory)) == written
    assert (moved / "results.md").read_text() == (out / "results.md").read_text()
    rows = again["selectors"][str(target)]
    assert rows["longest"]["target_loss_vs_random"]["seeds"] == 3
    assert rows["longest"]["target_loss_vs_random"]["items"] == 2 and rows["random"]["target_loss_vs_base"]["seeds"] == 3
    evals = list(out.glob("evals/*/*.json"))
    losses = [p["target_loss"] for p in json.loads(evals[0].read_text())["predictions"]]
    assert all(len(json.loads(p.read_text())["predictions"][0]["item"]) == 16 for p in evals)
    assert any(r["target_loss"] == pytest.approx(sum(losses) / len(losses)) for r in again["rows"])
    # each row's picks: their response lengths beside the pool's
    lengths = again["lengths"][str(target)]
    assert set(lengths) == {"pool", "longest", "random"} and lengths["longest"]["mean"] > lengths["pool"]["mean"]
    assert lengths["longest"]["median"] >= lengths["random"]["median"]
    assert f"| longest | {lengths['longest']['mean']:.0f} | {lengths['longest']['median']:.0f} |" in \
        (moved / "results.md").read_text()
    # the command redoes the reports from the saved evaluations, and says so when there are none
    (moved / "results.md").unlink()
    cli = ["compare", "--pool", str(pool), "--target", str(target), "--k", "4", "--reports-only"]
    result = CliRunner().invoke(main, [*cli, "--out", str(moved)])
    assert result.exit_code == 0 and (moved / "results.md").read_text() == (out / "results.md").read_text()
    result = CliRunner().invoke(main, [*cli, "--out", str(tmp_path / "nothing")])
    assert result.exit_code != 0 and "error: " in result.output and "holds no results.json" in result.output
    header = (out / "differences.csv").read_text().splitlines()[0]
    assert header.startswith("target,row,measure,reference,difference,low,high,verdict,seeds,items")
    # a later sitting adds a row: the earlier runs and evaluations are reused, the tables gain the row
    evaluated: set[str] = set()
    _stand_in_training(monkeypatch, loss=lambda model, n: evaluated.add(Path(str(model)).name) or 9.0)
    more = compare(CompareConfig(pools=[str(pool)], targets=[str(target)], k=4, selectors=["longest", "random", "bm25"],
                                 seeds=3, bootstrap_resamples=300), out)
    assert evaluated and all(name.startswith("bm25-") for name in evaluated)
    assert more["selectors"][str(target)]["longest"] == rows["longest"]
    assert more["selectors"][str(target)]["bm25"]["target_loss_vs_random"]["verdict"] == "worse"


def test_the_dry_run_prices_training_by_epochs_and_k_and_generation_only_when_asked(tmp_path, tiny_model_dir):
    from influence.training import TrainSettings as TrainConfig

    pool, target = _files(tmp_path)

    def phases(**changes):
        settings = {"pools": [str(pool)], "targets": [str(target)], "k": 4, "selectors": ["longest"],
                    "train": TrainConfig.for_tests(model=str(tiny_model_dir)), **changes}
        return {p["name"]: p["each"] for p in estimate_compare(CompareConfig(**settings), flops_per_second=1e9).phases}

    one = phases()
    assert phases(k=8)["training, per run"] == pytest.approx(2 * one["training, per run"])
    assert phases(train=TrainConfig.for_tests(model=str(tiny_model_dir), epochs=4))["training, per run"] \
        == pytest.approx(2 * one["training, per run"])
    evaluation = f"evaluation on {target}, per run"
    assert phases(metrics=["loss", "em"])[evaluation] > one[evaluation] == phases(metrics=["loss"])[evaluation]


def _evaluation_detail(tmp_path, model_dir, target: str) -> str:
    """The dry run's evaluation line for exact match on `target`, over the test pool."""
    from influence.training import TrainSettings as TrainConfig

    pool, _ = _files(tmp_path)
    config = CompareConfig(pools=[str(pool)], targets=[target], k=4, selectors=["longest"],
                           metrics=["loss", "em"], train=TrainConfig.for_tests(model=str(model_dir)))
    return next(p["detail"] for p in estimate_compare(config, flops_per_second=1e9).phases
                if p["name"].startswith("evaluation on"))


def _answers_of(tmp_path, words: int) -> str:
    """A target file whose references are about `words` words long."""
    return str(write_jsonl(tmp_path / f"target{words}.jsonl", [
        {"instruction": f"Explain sum {a}.", "output": " ".join(["step"] * words) + f" so {a}."} for a in range(3)]))


def test_the_dry_run_prices_a_generated_answer_at_about_its_references_length_within_the_budget(tmp_path,
                                                                                                 tiny_model_dir):
    """A chain of thought stops at its answer, so exact match is priced by the references' length, not a fixed
    budget; references longer than the budget are priced at the budget."""
    import re

    from influence.evaluation import EvalSettings

    def generated(words: int) -> int:
        detail = _evaluation_detail(tmp_path, tiny_model_dir, _answers_of(tmp_path, words))
        return int(re.search(r"about (\d+) generated tokens each", detail).group(1))

    short, longer, longest = generated(5), generated(20), generated(2000)
    assert short < longer < longest == EvalSettings().cot_max_new_tokens


def test_the_dry_run_prices_a_chain_of_thought_that_never_stops_at_the_whole_budget_beside(tmp_path, tiny_model_dir):
    """A model that has not learned to end a chain of thought with its answer line generates to the budget: the
    dry run says what that costs beside the references' price. A free-form answer's budget is its reference's
    length, so it has no such worst case and no such line."""
    import re

    from influence.evaluation import EvalSettings

    budget = EvalSettings().cot_max_new_tokens
    chain = _evaluation_detail(tmp_path, tiny_model_dir, "flan_cot:strategyqa")
    assert re.search(rf"never writes its answer line runs all {budget}: .+ a run", chain)
    assert "never writes" not in _evaluation_detail(tmp_path, tiny_model_dir, _answers_of(tmp_path, 5))


def test_the_dry_run_of_a_sitting_prices_only_its_seeds(tmp_path, tiny_model_dir):
    """--only-seeds limits the work, so it limits the estimate: one seed of three is a third of the runs."""
    from influence.training import TrainSettings as TrainConfig

    pool, target = _files(tmp_path)

    def counts(**changes):
        settings = {"pools": [str(pool)], "targets": [str(target)], "k": 4, "selectors": ["longest", "random"],
                    "seeds": 3, "train": TrainConfig.for_tests(model=str(tiny_model_dir)), **changes}
        estimate = estimate_compare(CompareConfig(**settings), flops_per_second=1e9)
        return {p["name"]: p["count"] for p in estimate.phases}, estimate.context

    every, _ = counts()
    sitting, context = counts(only_seeds=[1])
    assert every["training, per run"] == 6 and sitting["training, per run"] == 2
    evaluation = f"evaluation on {target}, per run"
    assert every[evaluation] == 7 and sitting[evaluation] == 3  # the base row is priced in either
    assert "3 training seed(s) (this sitting: 1)" in context[1]


def test_versus_pairs_every_row_with_the_named_row_too_without_mirrored_differences(tmp_path, monkeypatch):
    """--versus longest asks whether each other row beats longest: bm25 against longest is reported with its
    interval (here bm25 is 0.5 lower on every item), random against longest is not (longest against random is
    the same difference), and a name that is no row fails before any work."""
    from influence.compare import compare

    pool, target = _files(tmp_path)
    _stand_in_training(monkeypatch, loss=lambda model, n: (1.0 if "bm25" in str(model) else 1.5) + n / 10)
    out = tmp_path / "cmp"
    summary = compare(CompareConfig(pools=[str(pool)], targets=[str(target)], k=4, seeds=2, bootstrap_resamples=200,
                                    selectors=["random,longest,bm25"], versus=["longest"]), out)
    rows = summary["selectors"][str(target)]
    assert rows["bm25"]["target_loss_vs_longest"]["difference"] == pytest.approx(-0.5)
    assert rows["bm25"]["target_loss_vs_longest"]["verdict"] == "better"
    assert "target_loss_vs_longest" not in rows["random"] and "target_loss_vs_random" in rows["longest"]
    assert "vs longest (target loss)" in (out / "results.md").read_text()
    assert {(r["row"], r["reference"]) for r in csv.DictReader(io.StringIO((out / "differences.csv").read_text()))
            if r["reference"] == "longest"} == {("bm25", "longest")}
    with pytest.raises(ConfigError, match="versus names no other row: less"):
        CompareConfig(pools=[str(pool)], targets=[str(target)], selectors=["random,longest"], versus=["less"])


def test_reports_only_with_versus_pairs_the_saved_runs_against_the_named_row(tmp_path, monkeypatch):
    """A comparison run without --versus is re-reported against longest from its saved evaluations alone
    (nothing trained again); the choice is saved with the report, and a name that is no saved row fails."""
    from influence.compare import compare, regenerate

    pool, target = _files(tmp_path)
    _stand_in_training(monkeypatch, loss=lambda model, n: (1.0 if "bm25" in str(model) else 1.5) + n / 10)
    out = tmp_path / "cmp"
    compare(CompareConfig(pools=[str(pool)], targets=[str(target)], k=4, seeds=2, bootstrap_resamples=200,
                          selectors=["random,longest,bm25"]), out)
    assert "vs longest (target loss)" not in (out / "results.md").read_text()
    trained = _stand_in_training(monkeypatch)
    cli = ["compare", "--pool", str(pool), "--target", str(target), "--k", "4", "--selectors", "random,longest,bm25",
           "--reports-only", "--out", str(out)]
    result = CliRunner().invoke(main, [*cli, "--versus", "longest"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert not trained
    summary = json.loads((out / "results.json").read_text())
    rows = summary["selectors"][str(target)]
    assert rows["bm25"]["target_loss_vs_longest"]["difference"] == pytest.approx(-0.5)
    assert "vs longest (target loss)" in (out / "results.md").read_text()
    assert summary["config"]["versus"] == ["longest"] and regenerate(out)["config"]["versus"] == ["longest"]
    with pytest.raises(ConfigError, match="versus names no other row of .*: less"):
        regenerate(out, versus=["less"])


def test_a_full_row_trains_on_the_whole_pool_and_the_dry_run_prices_it_so(tmp_path, tiny_model_dir, monkeypatch):
    """`full` (LESS's Table 2 whole-pool row) trains once per seed on all 14 pool examples, whatever k."""
    from influence.compare import compare, selected_ids
    from influence.training import TrainSettings as TrainConfig

    trained = _stand_in_training(monkeypatch)
    pool, target = _files(tmp_path)
    config = CompareConfig(pools=[str(pool)], targets=[str(target)], k=4, selectors=["random,full"], seeds=2,
                           train=TrainConfig.for_tests(model=str(tiny_model_dir)))
    phases = {p["name"]: p for p in estimate_compare(config, flops_per_second=1e9).phases}
    whole, picked = phases["training on the whole pool, per run"], phases["training, per run"]
    assert whole["count"] == 2 and picked["count"] == 2
    assert whole["each"] == pytest.approx(picked["each"] * 14 / 4, rel=0.01)
    compare(config, tmp_path / "cmp")
    full = [t for t in trained if Path(t).name.startswith("full-")]
    assert len(full) == 2 and len(selected_ids(Path(full[0]))) == 14


def test_a_later_sittings_dry_run_prices_only_what_the_output_directory_lacks(tmp_path, tiny_model_dir,
                                                                               monkeypatch):
    """A sitting's dry run leaves out what an earlier sitting saved under --out: its LESS selection (so no
    warmup or features), its training runs and its evaluations, the base row's included."""
    from influence.compare import compare
    from influence.training import TrainSettings as TrainConfig

    _stand_in_training(monkeypatch)
    pool, target = _files(tmp_path)
    out = tmp_path / "cmp"
    evaluation = f"evaluation on {target}, per run"

    def config(only_seeds, selectors="less,random"):
        return CompareConfig(pools=[str(pool)], targets=[str(target)], k=4, selectors=[selectors], seeds=2,
                             only_seeds=only_seeds, train=TrainConfig.for_tests(model=str(tiny_model_dir)),
                             less=LessSettings.for_tests(model=str(tiny_model_dir), index_root=tmp_path / "indexes"))

    def priced(settings):
        estimate = estimate_compare(settings, flops_per_second=1e9, out=out)
        return {p["name"]: p["count"] for p in estimate.phases}, estimate.context

    fresh, _ = priced(config([0]))
    assert fresh["LESS warmup"] == 1 and fresh["training, per run"] == 2 and fresh[evaluation] == 3
    compare(config([0]), out)
    again, context = priced(config([0]))
    assert not any(name.startswith("LESS") for name in again)
    assert again["training, per run"] == 0 and again[evaluation] == 0
    assert context[-1].startswith(f"already under {out}: 3 of this sitting's evaluations")
    assert f"selections already under {out}, reused: less" in estimate_compare(config([1]), flops_per_second=1e9,
                                                                                 out=out).notes
    later, _ = priced(config([1]))  # LESS's selection serves seed 1 too; random draws again
    assert not any(name.startswith("LESS") for name in later)
    assert later["training, per run"] == 2 and later[evaluation] == 2  # the base row is evaluated already
    added, _ = priced(config([0], "less,random,ifd"))  # a row added later: only its work is priced
    assert "ifd losses, pool" in added and added["training, per run"] == 1 and added[evaluation] == 1


def test_the_dry_run_prices_rds_ifd_and_embed_by_their_forward_passes_not_a_less_warmup(tmp_path, tiny_model_dir):
    """rds, ifd and embed share LESS's model settings but not its gradients: each is one forward pass over the
    pool (rds and embed also over each target), made once and reused by every seed and row."""
    from influence.data import load_pool
    from influence.less.estimate import ModelShape, evaluation_seconds, token_stats
    from influence.models import load_model

    pool, sums = _files(tmp_path)
    colours = _colour_target(tmp_path)
    less = LessSettings.for_tests(model=str(tiny_model_dir), index_root=tmp_path / "indexes")
    config = CompareConfig(pools=[str(pool)], targets=[str(sums), str(colours)], k=4, seeds=3, less=less,
                           selectors=["rds,rds:pooling=mean,ifd,embed,longest:diversity=0.9"])
    estimate = estimate_compare(config, flops_per_second=1e9)
    phases = {p["name"]: p for p in estimate.phases}
    assert not any(name.startswith("LESS") for name in phases)
    loaded = load_model(str(tiny_model_dir))
    stats = token_stats(load_pool([str(pool)]).examples, tokenizer=loaded.tokenizer, max_length=less.max_length)
    pool_pass = evaluation_seconds(stats, ModelShape.from_model(loaded.model, less.lora), flops_per_second=1e9)
    assert phases["rds hidden states, pool"]["seconds"] == pytest.approx(pool_pass)
    assert phases["rds hidden states, pool, mean pooling"]["seconds"] == pytest.approx(pool_pass)
    assert f"rds hidden states, {sums}" in phases and f"rds hidden states, {colours}" in phases
    # the response alone costs less than with its instruction, so two passes cost between one and two
    assert pool_pass < phases["ifd losses, pool"]["seconds"] < 2 * pool_pass
    # embed and the diversity row share the bundled encoder's pool pass; only embed passes over the targets
    assert [p["count"] for p in estimate.phases if p["name"] == "embed sentence embeddings, pool"] == [1]
    assert f"embed sentence embeddings, {sums}" in phases and phases["embed sentence embeddings, pool"]["seconds"] > 0
    assert "selection by longest:diversity=0.9 is not counted (it scores text in seconds)" in estimate.notes


def test_every_selection_is_cleared_of_every_targets_heldout_items(tmp_path, monkeypatch):
    """longest is trained once and evaluated on bbh and mmlu, so an example copying an MMLU test question
    stays out of it; targeted rows score the same cleared pool, so LESS's datastore serves every target."""
    from influence.compare import compare
    from influence.constants import manifest_path
    from tests.test_contamination import _planted_copy, _pool_with

    trained = _stand_in_training(monkeypatch)
    planted = _planted_copy()  # the longest response of the pool
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"instruction": e.instruction, "output": e.output}
                                                 for e in _pool_with(planted).examples])
    summary = compare(CompareConfig(pools=[str(pool)], targets=["bbh", "mmlu"], k=3, selectors=["bm25", "longest"],
                                    seeds=1, base=False), tmp_path / "cmp")
    manifests = {Path(p).name.split("-")[0] + "-" + Path(p).name.split("-")[1]:
                 json.loads(manifest_path(p).read_text()) for p in trained}
    assert manifests["longest-any"]["contamination"]["target"] == "bbh+mmlu"
    assert manifests["longest-any"]["contamination"]["ids"] == [planted.id]
    assert planted.id not in Path(next(p for p in trained if "longest" in p)).read_text()
    assert manifests["bm25-bbh"]["contamination"]["target"] == "bbh+mmlu"
    assert all(planted.id not in Path(p).read_text() for p in trained)
    assert summary["contamination"]["mmlu"]["found"] == 1 and summary["contamination"]["bbh"]["found"] == 0


def test_a_row_can_walk_its_ranking_with_diversity_aware_top_k(tmp_path, monkeypatch):
    """`longest:diversity=TAU` keeps the next longest example instead of a near copy of a chosen one;
    the plain row keeps both copies. Training and evaluation are stand-ins: only the picks matter."""
    from influence.compare import compare
    from influence.constants import manifest_path
    from influence.testing import tiny_sentence_encoder

    trained = _stand_in_training(monkeypatch)
    copies = [{"instruction": "Tell a story.", "output": "once upon a time " * 30 + end} for end in ("yes", "no")]
    others = [{"instruction": f"Name colour {c}.", "output": f"{c} is a colour"} for c in ("red", "teal", "gold")]
    pool = write_jsonl(tmp_path / "pool.jsonl", copies + others)
    encoder = tiny_sentence_encoder(tmp_path / "encoder")
    rows = ["longest", f"longest:diversity=0.99,diversity_encoder={json.dumps(str(encoder))}"]
    compare(CompareConfig(pools=[str(pool)], targets=["tydiqa"], k=2, selectors=rows, seeds=1, base=False,
                          less=LessSettings(index_root=tmp_path / "indexes")), tmp_path / "cmp")
    picks = {json.loads(manifest_path(p).read_text()).get("diversity") is not None:
             [json.loads(line)["output"][-3:] for line in Path(p).read_text().splitlines()] for p in trained}
    assert picks[False] == ["yes", " no"]                # both near copies
    assert picks[True][0] == "yes" and picks[True][1] != " no"  # the second copy skipped
    with pytest.raises(ConfigError, match="diversity must be a cosine"):
        compare(CompareConfig(pools=[str(pool)], targets=["tydiqa"], k=2, selectors=["longest:diversity=\"x\""],
                              seeds=1, base=False), tmp_path / "bad")


def test_a_row_can_choose_by_a_selection_algorithm_and_one_its_selector_cannot_serve_fails_first(tmp_path,
                                                                                                 monkeypatch):
    """`bm25:algorithm=round-robin` selects by round-robin and records it; `longest:algorithm=...` is
    refused before any selection. Training and evaluation are stand-ins: only the picks matter."""
    from influence.compare import compare
    from influence.constants import manifest_path

    _stand_in_training(monkeypatch)
    pool, target = _files(tmp_path)
    rows = ["bm25", "bm25:algorithm=round-robin,algorithm_over=subtask"]
    compare(CompareConfig(pools=[str(pool)], targets=[str(target)], k=3, selectors=rows, seeds=1, base=False),
            tmp_path / "cmp")
    selections = (tmp_path / "cmp" / "selections").glob("*.jsonl")
    algorithms = sorted(json.loads(manifest_path(p).read_text())["algorithm"]["name"] for p in selections)
    assert algorithms == ["round-robin", "top-k"]
    with pytest.raises(SelectionError, match="needs per-target similarities"):
        compare(CompareConfig(pools=[str(pool)], targets=[str(target)], k=3, selectors=["longest:algorithm=uot"],
                              seeds=1, base=False), tmp_path / "bad")
    assert not (tmp_path / "bad" / "selections").exists()


def test_the_dry_run_prices_one_pool_pass_per_target_for_the_exact_score(tmp_path, tiny_model_dir):
    """The unprojected score takes the target's queries inside the pool's backward, so every target costs a
    pool pass; with store_features its first pass also writes the features a FAISS row then reuses."""
    pool, sums = _files(tmp_path)
    colours = _colour_target(tmp_path)
    less = LessSettings.for_tests(model=str(tiny_model_dir), index_root=tmp_path / "indexes")

    def names(rows: str) -> list[str]:
        config = CompareConfig(pools=[str(pool)], targets=[str(sums), str(colours)], k=4, selectors=[rows],
                               seeds=1, less=less, base=False)
        return [p["name"] for p in estimate_compare(config, flops_per_second=1e9).phases if "pool" in p["name"]
                or "target features" in p["name"]]

    exact_first = names("less:scoring=unprojected,store_features=true,less:scoring=faiss")
    assert sorted(exact_first) == sorted([
        "LESS pool features, per checkpoint", f"LESS target features, {sums}", f"LESS target features, {colours}",
        f"LESS pool pass for the exact cosines with {colours}, per checkpoint"])  # the FAISS row reuses them all
    faiss_first = names("less:scoring=faiss,less:scoring=unprojected")
    assert sorted(faiss_first) == sorted([
        "LESS pool features, per checkpoint", f"LESS target features, {sums}", f"LESS target features, {colours}",
        f"LESS pool pass for the exact cosines with {sums}, per checkpoint",
        f"LESS pool pass for the exact cosines with {colours}, per checkpoint",
        f"LESS target features, {sums}, for the exact score's queries",
        f"LESS target features, {colours}, for the exact score's queries"])


def test_selection_uses_model_and_training_the_train_model_whose_change_never_reuses_runs(tmp_path):
    """--model scores the pool (ifd's forward passes), --train-model is trained, evaluated and the base row;
    both are said in results.json and the report, and the training model is part of every run's key."""
    from influence.constants import manifest_path
    from influence.testing import tiny_model_and_tokenizer

    models = {}
    for name, layers in (("selector", 2), ("trainee", 1)):
        model, tokenizer = tiny_model_and_tokenizer(layers=layers, seed=layers)
        models[name] = tmp_path / name
        model.save_pretrained(models[name])
        tokenizer.save_pretrained(models[name])
    pool, target = _files(tmp_path)
    out = tmp_path / "cmp"

    def run(train_model) -> set[str]:
        args = ["compare", "--pool", str(pool), "--target", str(target), "--k", "4", "--selectors", "ifd",
                "--seeds", "1", *_train_args(models["selector"]), "--train-model", str(train_model), "--out", str(out)]
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return {p.name for p in (out / "runs").iterdir()}

    first = run(models["trainee"])
    (selection,) = list(out.glob("selections/*.jsonl"))
    assert json.loads(manifest_path(selection).read_text())["selector"]["params"]["model"] == str(models["selector"])
    (trained,) = [out / "runs" / name for name in first]
    assert json.loads((trained / "manifest.json").read_text())["model"]["spec"] == str(models["trainee"])
    base = [json.loads(p.read_text()) for p in out.glob("evals/*/base-*.json")]
    assert [b["model"]["spec"] for b in base] == [str(models["trainee"])]
    summary = json.loads((out / "results.json").read_text())
    assert summary["config"]["train_model"] == str(models["trainee"]) == summary["config"]["train"]["model"]
    assert summary["config"]["less"]["model"] == str(models["selector"])
    text = (out / "results.md").read_text()
    assert f"selectors {models['selector']}; training, evaluation and the base row {models['trainee']}" in text
    assert f"recipe less: {RECIPES['less'].provenance} (changed here: epochs, learning_rate, batch_size, micro_batch_size, max_length)" in text
    # the same selection trained on the other model is a new run, evaluated anew (and so is the base row)
    second = run(models["selector"])
    assert len(second - first) == 1 and len(list(out.glob("evals/*/base-*.json"))) == 2
    assert len(list(out.glob("selections/*.jsonl"))) == 1   # the selection itself is reused


def test_a_recipe_carries_its_provenance_and_names_what_a_comparison_changed():
    from influence.compare import Recipe
    from influence.training import TrainSettings as TrainConfig

    assert all(isinstance(r, Recipe) and r.provenance for r in RECIPES.values())
    small = RECIPES["small-k"]
    assert small().learning_rate == TrainConfig.small_k().learning_rate
    assert small.changed(small(model="m", progress=False).to_dict()) == []   # model and runtime are not the recipe
    assert small.changed(small(learning_rate=1e-4, epochs=2).to_dict()) == ["epochs", "learning_rate"]
    with pytest.raises(ConfigError, match="unknown recipe"):
        CompareConfig(pools=["p"], targets=["t"], recipe="huge-k")


def test_only_seeds_runs_those_training_seeds_of_every_row_and_refuses_others():
    config = CompareConfig(pools=["alpaca"], targets=["bbh"], selectors=["random", "longest"], seeds=3,
                           selection_seeds=2, only_seeds=[2, 0])
    random_row, longest_row = config.rows()
    assert config.seed_pairs(random_row) == [(0, 0), (2, 2)]               # redrawn with each kept seed
    assert config.seed_pairs(longest_row) == [(0, 0), (0, 2), (1, 0), (1, 2)]  # every selection seed, kept seeds
    everything = CompareConfig(pools=["alpaca"], targets=["bbh"], selectors=["longest"], seeds=3)
    assert [seed for _, seed in everything.seed_pairs(everything.rows()[0])] == [0, 1, 2]
    for bad in ([3], []):
        with pytest.raises(ConfigError, match="only_seeds"):
            CompareConfig(pools=["alpaca"], targets=["bbh"], seeds=3, only_seeds=bad)


def test_a_sitting_running_some_seeds_reports_every_seed_already_evaluated_and_runs_no_other(tmp_path, monkeypatch):
    """`only_seeds` limits the work, not the report: the seeds another process or an earlier sitting
    evaluated are in the tables; those not evaluated yet are neither run nor reported."""
    from influence.compare import compare

    pool, target = _files(tmp_path)
    trained = _stand_in_training(monkeypatch, loss=lambda model, n: 1.0 + n / 10)
    out = tmp_path / "cmp"

    def sitting(*seeds):
        trained.clear()
        compare(CompareConfig(pools=[str(pool)], targets=[str(target)], k=4, selectors=["longest", "random"],
                              seeds=3, only_seeds=list(seeds), base=False, bootstrap_resamples=200), out)
        return sorted(_rows(out))

    assert sitting(1) == [(str(target), "longest", 0, 1), (str(target), "random", 1, 1)]
    assert len(trained) == 2
    every = sitting(0, 2)
    assert len(trained) == 4                                           # seed 1 not run again
    assert every == sorted((str(target), row, seed if row == "random" else 0, seed)
                           for row in ("longest", "random") for seed in (0, 1, 2))
    assert sitting(2) == every and trained == []                       # all reused, all reported


def test_a_later_sitting_without_the_training_runs_reuses_their_committed_evaluations(tmp_path, monkeypatch):
    """Training runs (weights) are never committed, their evaluations are: a sitting on a fresh machine finds
    a run's evaluations under --out and does not train it again; a run with no evaluation is trained."""
    import shutil

    from influence.compare import compare

    pool, target = _files(tmp_path)
    trained = _stand_in_training(monkeypatch, loss=lambda model, n: 1.0 + n / 10)
    out = tmp_path / "cmp"
    config = CompareConfig(pools=[str(pool)], targets=[str(target)], k=4, selectors=["longest", "random"], seeds=2,
                           bootstrap_resamples=200)
    first = compare(config, out)
    assert len(trained) == 4
    fresh = Path(shutil.copytree(out, tmp_path / "fresh", ignore=shutil.ignore_patterns("runs")))
    trained.clear()
    again = compare(config, fresh)
    assert trained == []                                              # nothing trained again
    assert [r["target_loss"] for r in again["rows"]] == [r["target_loss"] for r in first["rows"]]
    assert again["selectors"] == first["selectors"]
    # the reused runs still count in the wall-time table, once each
    assert again["phases"]["training"]["count"] == first["phases"]["training"]["count"] == 4
    (stale,) = [p for p in fresh.glob("evals/*/random-s1-*.json")]
    stale.unlink()                                                    # one run lost its evaluation: it is trained
    compare(config, fresh)
    assert len(trained) == 1 and "random-any-s1" in trained[0]
