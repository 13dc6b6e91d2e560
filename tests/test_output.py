"""SFT-ready output: the records, the manifest beside them, atomic and never clobbered."""

from __future__ import annotations

import json

import pytest

from influence.constants import manifest_path
from influence.data import load_pool
from influence.errors import OutputExistsError
from influence.selection import select, write_selection
from influence.selectors import LongestSelector


@pytest.fixture
def selection(pool_file):
    return select(load_pool(str(pool_file)), 2, LongestSelector())


def test_alpaca_format_records_carry_id_rank_score_and_selector(tmp_path, selection):
    out, meta = write_selection(selection, tmp_path / "s.jsonl", fmt="alpaca")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["rank"] for r in records] == [1, 2]
    assert records[0]["selector"] == "longest" and records[0]["score"] == len(records[0]["output"])
    assert set(records[0]) >= {"id", "rank", "score", "selector", "instruction", "input", "output", "source"}
    assert records[0]["score"] >= records[1]["score"]


def test_messages_format_is_a_chat_ending_with_the_response(tmp_path, selection):
    out, _ = write_selection(selection, tmp_path / "s.jsonl", fmt="messages")
    record = json.loads(out.read_text().splitlines()[0])
    assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
    assert record["messages"][-1]["content"] == selection.examples[0].response


def test_manifest_records_pool_selector_seed_k_and_versions(tmp_path, selection):
    out, meta = write_selection(selection, tmp_path / "s.jsonl")
    assert meta == manifest_path(out) == tmp_path / ".s.manifest.json"
    manifest = json.loads(meta.read_text())
    assert manifest["selector"] == {"name": "longest", "params": {"unit": "chars"}}
    assert manifest["k"] == 2 and manifest["seed"] == 0
    assert manifest["pool"]["fingerprint"] == selection.pool.fingerprint
    assert manifest["pool"]["sources"][0]["skipped_empty"] == 1
    assert {"influence", "numpy"} <= set(manifest["versions"])
    assert manifest["output"]["records"] == 2 and len(manifest["output"]["sha256"]) == 64
    assert manifest["created"].endswith("+00:00")


def test_existing_output_is_kept_unless_overwrite(tmp_path, selection):
    out = tmp_path / "s.jsonl"
    out.write_text("precious\n")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_selection(selection, out)
    assert out.read_text() == "precious\n" and not manifest_path(out).exists()
    write_selection(selection, out, overwrite=True)
    assert len(out.read_text().splitlines()) == 2


def test_a_failed_write_leaves_no_partial_file(tmp_path, selection, monkeypatch):
    def explode(self, fmt):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(selection), "manifest", explode)
    out_dir = tmp_path / "out"
    with pytest.raises(RuntimeError):
        write_selection(selection, out_dir / "s.jsonl")
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_temporaries_of_killed_writers_are_swept_and_live_writers_kept(tmp_path):
    import subprocess

    from influence import io

    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        left = tmp_path / f".results.json.{dead.pid}.k3j9.tmp"
        left.write_text('{"half": ')
        staging = tmp_path / f".model.{dead.pid}.x1.tmp"
        staging.mkdir()
        busy = tmp_path / f".results.json.{live.pid}.q7.tmp"
        busy.write_text("being written")
        other = tmp_path / ".notes.tmp"          # not ours: no writer pid in the name
        other.write_text("keep")
        io._SWEPT.discard(str(tmp_path))
        io.write_json(tmp_path / "results.json", {"done": True})
    finally:
        live.kill()
        live.wait()
    assert not left.exists() and not staging.exists()
    assert busy.exists() and other.exists()
    assert json.loads((tmp_path / "results.json").read_text()) == {"done": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([busy.name, other.name, "results.json"])
