"""Every user error is one `error:` line and exit status 2, and nothing is taken silently.

Through the `influence` command (click's runner; a subprocess where permissions matter), with
the files on disk checked before and after.
"""

from __future__ import annotations

import gzip
import json
import logging

import pytest

from influence.constants import manifest_path
from tests.conftest import write_jsonl
from tests.test_safe_outputs import RECORDS, cli, influence, one_error_line, shared  # noqa: F401 (fixture)


@pytest.fixture
def pool(tmp_path):
    return write_jsonl(tmp_path / "pool.jsonl", RECORDS)


# ------------------------------------------------------------------ one line each
def test_device_cuda_without_cuda_is_one_line(tmp_path, pool):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "sel.jsonl"
    for command in (["select", "--target", "bbh", "--k", "2", "--out", str(out)], ["featurize"], ["warmup"]):
        result = cli(command[0], "--pool", str(pool), *command[1:], "--device", "cuda")
        one_error_line(result, "--device cuda:", "use --device cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.jsonl"]


@pytest.mark.parametrize("command", [["select", "--pool", "P", "--k", "2"], ["warmup", "--pool", "P"],
                                     ["train", "--data", "P"], ["evaluate", "--target", "mmlu"]])
def test_a_negative_seed_is_one_line(tmp_path, pool, command):
    result = cli(*[str(pool) if a == "P" else a for a in command], "--seed", "-1")
    one_error_line(result, "Invalid value for '--seed'", "-1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.jsonl"]


def test_a_pool_inside_a_directory_the_user_cannot_enter_is_one_line(shared):  # noqa: F811
    import os

    closed = shared / "closed"
    closed.mkdir()
    write_jsonl(closed / "pool.jsonl", RECORDS)
    os.chmod(closed, 0o700)
    out = shared / "sel.jsonl"
    result = influence("select", "--pool", str(closed / "pool.jsonl"), "--k", "2", "--out", str(out), as_user=True)
    one_error_line(result, f"{closed / 'pool.jsonl'}: permission denied")
    assert not out.exists()


@pytest.mark.parametrize("spec", ["./no/such/model", "/no/such/model", "models/missing/"])
def test_a_local_model_path_that_does_not_exist_says_so(tmp_path, pool, spec):
    result = cli("train", "--data", str(pool), "--model", spec, "--out", str(tmp_path / "run"))
    one_error_line(result, f"{spec} does not exist")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.parametrize("args, fragment", [
    (["--k", "1.5"], "'1.5' is not a valid integer"),
    (["--selector", "bogus"], "'bogus' is not one of"),
    (["--format", "yaml"], "'yaml' is not one of"),
    (["--out", "DIR"], "is a directory"),
    (["--bogus"], "No such option '--bogus'"),
])
def test_click_usage_errors_are_one_line(tmp_path, pool, args, fragment):
    args = [str(tmp_path) if a == "DIR" else a for a in args]
    result = cli("select", "--pool", str(pool), *args)
    one_error_line(result, fragment, "influence select --help")
    assert "Usage:" not in result.stderr


def test_help_still_shows_the_usage():
    result = cli("select", "--help")
    assert result.returncode == 0 and result.stdout.startswith("Usage:") and "--pool" in result.stdout
    assert cli("--help").stdout.startswith("Usage:")


def test_a_directory_given_as_pool_says_it_is_a_directory(tmp_path):
    result = cli("select", "--pool", str(tmp_path), "--k", "1", "--out", str(tmp_path / "o.jsonl"))
    one_error_line(result, f"{tmp_path}: is a directory", ".jsonl")
    assert list(tmp_path.iterdir()) == []


def test_k_and_the_target_are_checked_before_the_pool_is_read(tmp_path):
    absent = str(tmp_path / "absent.jsonl")  # reading the pool first would report this file instead
    one_error_line(cli("select", "--pool", absent, "--k", "0"), "k must be positive")
    one_error_line(cli("select", "--pool", absent, "--k", "2", "--target", "nosuch"), "unknown target 'nosuch'")


# ------------------------------------------------------------------ nothing taken silently
def test_a_json_object_holding_several_lists_is_refused_naming_them(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": RECORDS[:3], "data": RECORDS[3:]}))
    result = cli("select", "--pool", str(path), "--k", "1", "--out", str(tmp_path / "o.jsonl"))
    one_error_line(result, "several lists of records (data, train)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["splits.json"]


@pytest.mark.parametrize("record, fragment", [
    ({"instruction": None, "output": "b"}, "field 'instruction' must be text, got null"),
    ({"instruction": 123, "output": "b"}, "field 'instruction' must be text, got a number"),
    ({"instruction": "a", "output": True}, "field 'output' must be text, got a boolean"),
    ({"prompt": "a", "response": ["b"]}, "field 'response' must be text, got a list"),
    ({"instruction": "a", "input": 7, "output": "b"}, "field 'input' must be text, got a number"),
])
def test_a_field_that_is_not_text_is_refused_with_its_line(tmp_path, record, fragment):
    path = write_jsonl(tmp_path / "pool.jsonl", [RECORDS[0], RECORDS[1], record])
    result = cli("select", "--pool", str(path), "--k", "1", "--out", str(tmp_path / "o.jsonl"))
    one_error_line(result, f"{path}: record at line/row 3", fragment)
    assert not (tmp_path / "o.jsonl").exists()


def test_an_empty_or_missing_input_is_fine(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"instruction": "a", "input": "", "output": "b"},
                                                 {"instruction": "c", "output": "dd"},
                                                 {"instruction": "e", "input": None, "output": "fff"}])
    result = cli("select", "--pool", str(path), "--k", "3", "--out", str(tmp_path / "o.jsonl"))
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["input"] for line in (tmp_path / "o.jsonl").read_text().splitlines()] == ["", "", ""]


@pytest.mark.parametrize("args, named", [
    (["--selector", "random", "--length-unit", "words", "--lora-r", "8"], "--length-unit, --lora-r"),
    (["--model", "some/model", "--dims", "64"], "--model, --dims"),
    (["--selector", "random", "--dsir-sampling", "none"], "--dsir-sampling"),
])
def test_options_that_do_not_apply_to_the_selector_are_named_once(tmp_path, pool, args, named):
    result = cli("select", "--pool", str(pool), "--k", "2", "--out", str(tmp_path / "o.jsonl"), *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("ignores") == 1 and f"ignores {named}" in result.stderr
    assert (tmp_path / "o.jsonl").exists()


def test_options_that_apply_are_not_reported(tmp_path, pool):
    result = cli("select", "--pool", str(pool), "--k", "2", "--out", str(tmp_path / "o.jsonl"),
                 "--length-unit", "words")
    assert result.returncode == 0 and "ignores" not in result.stderr


CHATS = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! " * 20}]},
    {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                  {"role": "user", "content": "and 3+3?"}, {"role": "assistant", "content": "6, of course. " * 30}]},
]


def test_multi_turn_chats_default_to_the_messages_format(tmp_path):
    path = write_jsonl(tmp_path / "chats.jsonl", CHATS)
    out = tmp_path / "o.jsonl"
    result = cli("select", "--pool", str(path), "--k", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all("messages" in r for r in records) and len(records[0]["messages"]) == 4
    assert json.loads(manifest_path(out).read_text())["format"] == "messages"
    assert "User:" not in out.read_text()


def test_multi_turn_chats_written_as_alpaca_are_said_so(tmp_path):
    path = write_jsonl(tmp_path / "chats.jsonl", CHATS)
    out = tmp_path / "o.jsonl"
    result = cli("select", "--pool", str(path), "--k", "2", "--out", str(out), "--format", "alpaca")
    assert result.returncode == 0, result.stderr
    assert "note: 1 selected example with several chat turns is written as" in result.stderr
    assert "User: 2+2?" in out.read_text()


def test_single_turn_chats_keep_the_alpaca_default(tmp_path):
    path = write_jsonl(tmp_path / "chats.jsonl", CHATS[:1] + RECORDS)
    out = tmp_path / "o.jsonl"
    result = cli("select", "--pool", str(path), "--k", "3", "--out", str(out))
    assert result.returncode == 0 and "several chat turns" not in result.stderr
    assert all("instruction" in json.loads(line) for line in out.read_text().splitlines())


# ------------------------------------------------------------------ wording
def test_counts_read_as_english(tmp_path):
    path = write_jsonl(tmp_path / "one.jsonl", [RECORDS[0], RECORDS[0], {"instruction": "x", "output": ""}])
    result = cli("select", "--pool", str(path), "--k", "1", "--out", str(tmp_path / "o.jsonl"))
    assert result.returncode == 0, result.stderr
    assert f"pool {path}: 1 example (1 exact duplicate of examples already in the pool removed; 1 record with " \
           "an empty response skipped)" in result.stdout
    assert "selected 1 of 1 example with longest" in result.stdout
    assert f"file {path}" not in result.stdout  # the path is said once


def test_a_pool_given_twice_says_it_adds_nothing_new(tmp_path, pool):
    result = cli("select", "--pool", str(pool), "--pool", str(pool), "--k", "1", "--out", str(tmp_path / "o.jsonl"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"pool {pool}: 6 examples"
    assert lines[1] == f"pool {pool}: no new examples (6 exact duplicates of examples already in the pool removed)"


def test_a_large_file_pool_shows_a_progress_bar_of_bytes_on_a_terminal(tmp_path, monkeypatch):
    import io
    import sys

    from influence.data import readers

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    path = tmp_path / "big.jsonl.gz"
    path.write_bytes(gzip.compress(("".join(json.dumps(r) + "\n" for r in RECORDS * 2000)).encode()))
    monkeypatch.setattr(readers, "PROGRESS_MIN_BYTES", 1024)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    report = readers.read_file(path)
    assert report.read == 12000
    assert "reading big.jsonl.gz" in terminal.getvalue() and "B/s" in terminal.getvalue()
    monkeypatch.setattr(readers, "PROGRESS_MIN_BYTES", 10 ** 9)  # small files stay silent
    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    readers.read_file(path)
    assert quiet.getvalue() == ""


def test_a_finished_training_run_is_reported_once_not_as_a_warning(tmp_path, pool, caplog, tiny_model_dir):
    args = ["train", "--data", str(pool), "--model", str(tiny_model_dir), "--out", str(tmp_path / "run"),
            "--epochs", "1", "--batch-size", "2", "--max-length", "64"]
    assert cli(*args).returncode == 0
    with caplog.at_level(logging.INFO):
        again = cli(*args)
    assert again.returncode == 0 and "already holds this finished run" in again.stdout
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "finished run" in r.getMessage()]
