"""`--dry-run` on featurize and select: an estimate on the terminal, nothing computed or written."""

from __future__ import annotations

from click.testing import CliRunner

from influence.cli import main
from influence.testing import tiny_model_and_tokenizer
from tests.conftest import write_jsonl


def test_dry_run_prints_an_estimate_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, tokenizer = tiny_model_and_tokenizer()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"instruction": f"Say {i}.", "output": f"{i}!" * i}
                                                 for i in range(1, 30)])
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for command in (["featurize", "--target", "bbh"], ["select", "--target", "bbh", "--k", "5"]):
        result = CliRunner().invoke(main, [*command, "--pool", str(pool), "--model", str(tmp_path / "model"),
                                           "--dry-run"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "dry run: a rough estimate" in result.output
        assert "pool: 29 examples" in result.output and "target: 81 examples" in result.output
        assert "total time:" in result.output and "disk:" in result.output and "peak memory:" in result.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_dry_run_is_for_the_less_selector():
    result = CliRunner().invoke(main, ["select", "--pool", "alpaca", "--selector", "random", "--dry-run"])
    assert result.exit_code == 2 and "--dry-run estimates the less selector" in result.stderr
