"""The `influence` command end to end through click's runner, bad input included."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from influence import __version__
from influence.cli import main
from tests.conftest import write_jsonl


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_select_alpaca_k1000_writes_selection_and_manifest(tmp_path):
    out = tmp_path / "sel.jsonl"
    result = run("select", "--pool", "alpaca", "--k", "1000", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "bundled offline sample of Stanford Alpaca" in result.output
    assert "selected 1,000 of 4,998 examples with longest" in result.output
    assert f"wrote {out}" in result.output
    lines = out.read_text().splitlines()
    assert len(lines) == 1000
    assert json.loads((tmp_path / ".sel.manifest.json").read_text())["selector"]["name"] == "longest"


def test_select_defaults_its_output_path_and_prints_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("select", "--pool", "alpaca", "--k", "10", "--selector", "random", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "selections" / "alpaca-random-k10.jsonl").exists()
    assert "selections/alpaca-random-k10.jsonl" in result.output


def test_mixed_pool_summary_counts_sources(tmp_path, pool_file):
    out = tmp_path / "m.jsonl"
    result = run("select", "--pool", "alpaca", "--pool", str(pool_file), "--k", "50", "--out", str(out),
                 "--format", "messages")
    assert result.exit_code == 0, result.output
    assert "by source:" in result.output
    assert "messages" in json.loads(out.read_text().splitlines()[0])


def test_listings_and_version():
    assert "alpaca" in run("pools").output and "flan_cot" in run("pools").output
    assert all(name in run("targets").output for name in ("bbh", "mmlu", "tydiqa"))
    assert __version__ in run("--version").output
    assert "--pool" in run("select", "--help").output


def _bad_inputs(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"instruction": "a", "output": "b"}\n{oops}\n')
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"instruction": "caf\xe9", "output": "b"}\n')
    missing = write_jsonl(tmp_path / "missing.jsonl", [{"question": "a"}])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    small = write_jsonl(tmp_path / "small.jsonl", [{"instruction": "a", "output": "b"},
                                                   {"instruction": "c", "output": "d"}])
    return [
        (["--pool", "nosuchpool"], "unknown pool 'nosuchpool'"),
        (["--pool", str(tmp_path / "absent.jsonl")], "no such file"),
        (["--pool", str(bad_json)], "line 2: malformed JSON"),
        (["--pool", str(latin)], "not valid UTF-8"),
        (["--pool", str(missing)], "missing fields"),
        (["--pool", str(empty)], "no usable examples"),
        (["--pool", str(small), "--k", "0"], "k must be positive"),
        (["--pool", str(small), "--k", "3"], "larger than the pool (2 examples)"),
        (["--pool", str(small), "--k", "1", "--selector", "random", "--target", "nosuchtarget"],
         "unknown target 'nosuchtarget'"),  # an untargeted selector's --target sets the contamination guard
        (["--pool", str(small), "--k", "1", "--selector", "random", "--target", str(small)], None),
    ]


@pytest.mark.parametrize("case", range(10))
def test_bad_input_gives_one_line_error_nonzero_exit_and_no_output(tmp_path, case):
    args, message = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["select", *args, "--k", "1", "--out", str(out)] if "--k" not in args
                                else ["select", *args, "--out", str(out)])
    if message is None:  # an untargeted selector does not score against --target: it works, with a note
        assert result.exit_code == 0 and "does not score against --target" in result.output
        return
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1
    assert not out.exists()


def test_unknown_selector_is_refused_by_click(pool_file):
    result = CliRunner().invoke(main, ["select", "--pool", str(pool_file), "--selector", "bogus"])
    assert result.exit_code == 2 and "bogus" in result.output


def test_existing_output_is_not_overwritten(tmp_path, pool_file):
    out = tmp_path / "o.jsonl"
    out.write_text("keep me\n")
    result = CliRunner().invoke(main, ["select", "--pool", str(pool_file), "--k", "1", "--out", str(out)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert out.read_text() == "keep me\n"
