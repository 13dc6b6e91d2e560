"""Shared fixtures. Tests never touch the network: the hub is declared offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny test models run fastest on one thread; more threads only spin against each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def alpaca_records() -> list[dict]:
    return [
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5, so the sum is five."},
        {"instruction": "Write a haiku about rain.", "input": "",
         "output": "Soft rain on the roof\nthe garden drinks it slowly\nclouds move to the east"},
        {"instruction": "Say nothing.", "input": "", "output": ""},
    ]


@pytest.fixture
def pool_file(tmp_path: Path, alpaca_records) -> Path:
    return write_jsonl(tmp_path / "pool.jsonl", alpaca_records)


@pytest.fixture
def tiny_model_dir(tmp_path) -> Path:
    """A tiny random Llama and its tokenizer saved as a model directory (what --model takes)."""
    from influence.testing import tiny_model_and_tokenizer

    model, tokenizer = tiny_model_and_tokenizer()
    path = tmp_path / "tiny-model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
