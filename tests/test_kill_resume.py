"""kill -9 in the middle of `influence featurize`, then the same command again: it resumes and
ends with the same bytes as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import write_jsonl


def _command(pool: Path, model: Path, root: Path) -> list[str]:
    return [sys.executable, "-m", "influence.cli", "featurize", "--pool", str(pool), "--model", str(model),
            "--lora-r", "4", "--lora-alpha", "16", "--dims", "64", "--warmup-fraction", "0.1",
            "--warmup-epochs", "2", "--max-length", "64", "--batch-size", "2", "--shard-rows", "4",
            "--index-root", str(root), "--name", "run"]


def _features(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "run" / "features").rglob("*"))
            if p.is_file() and p.name != "lock"}


def test_kill_9_during_featurize_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_model_dir):
    pool = write_jsonl(tmp_path / "pool.jsonl", [
        {"instruction": f"Question number {i}: what is {i} times {i}?", "output": f"It is {i * i}, since "
         f"{i} times {i} is {i * i}." * (1 + i % 3)} for i in range(160)])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    clean = tmp_path / "clean"
    subprocess.run(_command(pool, tiny_model_dir, clean), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(pool, tiny_model_dir, killed), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        shards = list((killed / "run" / "features").rglob("*.npy")) if (killed / "run").exists() else []
        if len(shards) >= 3:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run finished before it could be killed; make the pool larger"
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = _features(killed)
    assert 0 < sum(name.endswith(".npy") for name in partial) < sum(name.endswith(".npy") for name in _features(clean))

    resumed = subprocess.run(_command(pool, tiny_model_dir, killed), check=True, env=env, capture_output=True,
                             text=True)
    assert "featurized now" in resumed.stdout
    assert _features(killed) == _features(clean)
