"""The real default model (SmolLM2-135M-Instruct, bundled GGUF) through `influence select --selector less`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from influence.cli import main
from influence.data import load_pool
from tests.conftest import write_jsonl


@pytest.fixture
def two_threads():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_less_select_with_the_default_model_on_a_handful_of_examples(tmp_path, two_threads):
    examples = load_pool("alpaca").examples
    pool = write_jsonl(tmp_path / "pool.jsonl", [
        {"instruction": e.instruction, "input": e.input, "output": e.output}
        for e in sorted(examples[:40], key=lambda e: len(e.output))[:6]])
    target = write_jsonl(tmp_path / "target.jsonl", [
        {"instruction": "What is the capital of France?", "output": "Paris.", "subtask": "geo"},
        {"instruction": "Add 2 and 3.", "output": "5", "subtask": "math"}])
    out = tmp_path / "sel.jsonl"
    result = CliRunner().invoke(main, [
        "select", "--pool", str(pool), "--target", str(target), "--k", "2", "--out", str(out),
        "--lora-r", "8", "--lora-alpha", "32", "--dims", "512", "--warmup-fraction", "0.5", "--warmup-epochs", "1",
        "--max-length", "128", "--index-root", str(tmp_path / "indexes")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and {r["selector"] for r in records} == {"less"}
    assert records[0]["score"] >= records[1]["score"]
    manifest = json.loads((tmp_path / ".sel.manifest.json").read_text())
    assert manifest["selector"]["params"]["lora"]["r"] == 8
    assert manifest["datastore"]["projector"]["type"] == "sjlt"
    assert manifest["datastore"]["checkpoints"][0]["weight"] == 1.0
