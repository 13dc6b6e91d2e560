"""`influence compare` on a tiny model and pool: several targets, seeds of two kinds, rows with options,
the base row, sources of the picks, the dry run; tables, plot, and a rerun that trains nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from influence.cli import main
from influence.compare import Cell, CompareSettings as CompareConfig, SelectorRow, estimate_compare, parse_rows, summarize
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


def _stand_in_training(monkeypatch) -> list[str]:
    """Replace training and evaluation with stand-ins that only record which selection files were
    trained on (the returned list): for tests about what compare selects, not what it trains."""
    from types import SimpleNamespace

    import influence.evaluation
    import influence.training

    trained: list[str] = []
    monkeypatch.setattr(influence.training, "train", lambda data, config, out_dir: trained.append(data) or
                        SimpleNamespace(reused=False, manifest={"seconds": 0.0}))
    monkeypatch.setattr(influence.evaluation, "evaluate", lambda *a, **k: {
        "primary_metric": "target_loss", "metrics": {"target_loss": 1.0}, "items": 1, "seconds": 0.0})
    monkeypatch.setattr(influence.evaluation, "write_results", lambda results, path: path)
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


def test_differences_to_random_and_to_base_are_judged_against_the_seed_spread(tmp_path):
    base = Cell("base", "t", None, target_loss=1.5, metrics={"accuracy": 0.3})
    summary = summarize([base, _cell(tmp_path, "random", 0, 2.0, 0.30), _cell(tmp_path, "random", 1, 2.2, 0.32),
                         _cell(tmp_path, "longest", 0, 1.0, 0.31), _cell(tmp_path, "longest", 1, 1.2, 0.33),
                         _cell(tmp_path, "less", 0, 1.45, 0.31), _cell(tmp_path, "less", 1, 1.65, 0.33)],
                        ["accuracy"])
    rows = summary["selectors"]["t"]
    assert rows["longest"]["target_loss_vs_random"] == pytest.approx(-1.0)
    assert rows["longest"]["target_loss_random_beyond_spread"] is True   # 1.0 apart, spreads 0.14 + 0.14
    assert rows["longest"]["accuracy_random_beyond_spread"] is False     # 0.01 apart, spreads 0.014 + 0.014
    assert rows["longest"]["target_loss_base_beyond_spread"] is True     # 0.4 below base, spread 0.14
    assert rows["less"]["target_loss_vs_base"] == pytest.approx(0.05)
    assert rows["less"]["target_loss_base_beyond_spread"] is False       # 0.05 from base, spread 0.14
    assert rows["base"]["target_loss_std"] == 0.0 and "target_loss_vs_random" not in rows["base"]
    from influence.compare import markdown

    text = markdown(summary)
    assert "Training did not move the target loss beyond the seed spread for: less" in text
    assert "random" not in text.split("Training did not move")[1].splitlines()[0]


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

    trained = _stand_in_training(monkeypatch)
    pool, target = _files(tmp_path)
    rows = ["bm25", "bm25:algorithm=round-robin,algorithm_over=subtask"]
    compare(CompareConfig(pools=[str(pool)], targets=[str(target)], k=3, selectors=rows, seeds=1, base=False),
            tmp_path / "cmp")
    algorithms = sorted(json.loads(manifest_path(p).read_text())["algorithm"]["name"] for p in trained)
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
