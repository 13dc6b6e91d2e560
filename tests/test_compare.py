"""`influence compare` on a tiny model and pool: tables, plot, overlaps, and a rerun that trains nothing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from influence.cli import main
from influence.compare import Cell, summarize
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


def test_compare_end_to_end_then_a_rerun_reuses_everything(tmp_path, tiny_model_dir):
    pool, target = _files(tmp_path)
    out = tmp_path / "cmp"
    args = ["compare", "--pool", str(pool), "--target", str(target), "--k", "4", "--selectors",
            "less,longest,random", "--seeds", "2", "--epochs", "1", "--lr", "0.01", "--train-batch-size", "2",
            "--train-max-length", "128", "--model", str(tiny_model_dir), "--lora-r", "4", "--lora-alpha", "16",
            "--dims", "64", "--warmup-fraction", "0.5", "--warmup-epochs", "1", "--max-length", "128",
            "--index-root", str(tmp_path / "indexes"), "--out", str(out)]
    first = CliRunner().invoke(main, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    summary = json.loads((out / "results.json").read_text())
    assert [(r["selector"], r["seed"]) for r in summary["rows"]] == [
        ("less", 0), ("less", 1), ("longest", 0), ("longest", 1), ("random", 0), ("random", 1)]
    assert set(summary["selectors"]) == {"less", "longest", "random"}
    assert "target_loss_vs_random" in summary["selectors"]["longest"]
    assert summary["overlap"]["longest|random"] < 1.0
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "results.csv").read_text().startswith("selector,seed,target_loss,metric")
    assert "| longest |" in (out / "results.md").read_text()

    second = CliRunner().invoke(main, args, catch_exceptions=False)
    assert second.exit_code == 0, second.output
    assert second.output.count("reused selection, training, evaluation") == 6
    assert json.loads((out / "results.json").read_text())["rows"] == summary["rows"]


def test_differences_to_random_are_judged_against_the_seed_spread(tmp_path):
    def cell(name, seed, loss, metric):
        c = Cell(name, seed, tmp_path, tmp_path, tmp_path, target_loss=loss, metric=metric, metric_name="accuracy")
        return c

    summary = summarize([cell("random", 0, 2.0, 0.30), cell("random", 1, 2.2, 0.32),
                         cell("longest", 0, 1.0, 0.31), cell("longest", 1, 1.2, 0.33)])
    longest = summary["selectors"]["longest"]
    assert longest["target_loss_vs_random"] == pytest.approx(-1.0)
    assert longest["target_loss_beyond_spread"] is True     # 1.0 apart, spreads 0.14 + 0.14
    assert longest["metric_beyond_spread"] is False        # 0.01 apart, spreads 0.014 + 0.014
