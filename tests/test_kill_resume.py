"""kill -9 in the middle of `influence featurize`, `influence train` or `influence compare`, then the
same command again: it resumes and ends with the same results as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from click.testing import CliRunner

from influence.cli import main
from tests.conftest import write_jsonl
from tests.test_compare import _files as compare_files

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _influence(*args: str) -> list[str]:
    return [sys.executable, "-m", "influence.cli", *args]


def _kill_9_when(process: subprocess.Popen, ready: Callable[[], bool], log: Path, timeout: float = 120) -> None:
    """SIGKILL `process` as soon as `ready()` holds, and check that the signal, not an exit, ended it."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the run ended before it could be killed:\n{log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"the run never got far enough to be killed:\n{log.read_text()[-2000:]}"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed; give it more work"


def _start(command: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as handle:
        return subprocess.Popen(command, env=ENV, stdout=handle, stderr=subprocess.STDOUT)


def _invoke(args: list[str]) -> str:
    """The same command in this process (no second interpreter start-up to pay for); returns its stdout."""
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


# ------------------------------------------------------------------ featurize
def _featurize(pool: Path, model: Path, root: Path, *, warmup_fraction: str = "0.1", warmup_epochs: str = "2",
               shard_rows: str = "4") -> list[str]:
    return _influence("featurize", "--pool", str(pool), "--model", str(model), "--lora-r", "4", "--lora-alpha", "16",
                      "--dims", "64", "--warmup-fraction", warmup_fraction, "--warmup-epochs", warmup_epochs,
                      "--max-length", "64", "--batch-size", "2", "--shard-rows", shard_rows,
                      "--index-root", str(root), "--name", "run")


def _features(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "run" / "features").rglob("*"))
            if p.is_file() and p.name != "lock"}


def test_kill_9_during_featurize_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_model_dir):
    pool = write_jsonl(tmp_path / "pool.jsonl", [
        {"instruction": f"Question number {i}: what is {i} times {i}?", "output": f"It is {i * i}, since "
         f"{i} times {i} is {i * i}." * (1 + i % 3)} for i in range(160)])
    clean = tmp_path / "clean"
    subprocess.run(_featurize(pool, tiny_model_dir, clean), check=True, env=ENV, capture_output=True)

    killed = tmp_path / "killed"
    process = _start(_featurize(pool, tiny_model_dir, killed), tmp_path / "killed.log")
    _kill_9_when(process, lambda: len(list((killed / "run" / "features").rglob("*.npy"))) >= 3,
                 tmp_path / "killed.log")
    partial = _features(killed)
    assert 0 < sum(name.endswith(".npy") for name in partial) < sum(name.endswith(".npy") for name in _features(clean))

    resumed = subprocess.run(_featurize(pool, tiny_model_dir, killed), check=True, env=ENV, capture_output=True,
                             text=True)
    assert "featurized now" in resumed.stdout
    assert _features(killed) == _features(clean)


# ------------------------------------------------------------------ train
def _train_args(data: Path, model: Path, out: Path) -> list[str]:
    # 12 steps an epoch for 6 epochs, a checkpoint every 5 steps: a kill after the first lands mid-epoch
    return ["train", "--data", str(data), "--model", str(model), "--epochs", "6", "--lr", "0.001",
            "--batch-size", "2", "--max-length", "64", "--save-steps", "5", "--out", str(out)]


def _adapter(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "adapter").iterdir()) if p.suffix == ".safetensors"}


def _epochs(out: Path) -> list[dict]:
    """The manifest's per-epoch records, without their wall times."""
    manifest = json.loads((out / "manifest.json").read_text())
    return [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in manifest["epochs"]]


def test_kill_9_during_train_then_rerun_resumes_mid_epoch_and_equals_an_uninterrupted_run(
        tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "data.jsonl", [
        {"instruction": f"What is {i} plus {i}?", "output": f"{i} plus {i} is {2 * i}."} for i in range(24)])
    clean = tmp_path / "clean"
    _invoke(_train_args(data, tiny_model_dir, clean))

    killed = tmp_path / "killed"
    process = _start(_influence(*_train_args(data, tiny_model_dir, killed)), tmp_path / "killed.log")
    _kill_9_when(process, lambda: any((killed / "checkpoints").glob("step-*")), tmp_path / "killed.log")
    assert not (killed / "manifest.json").exists()
    newest = max(int(p.name.split("-")[1]) for p in (killed / "checkpoints").glob("step-*"))

    resumed = _invoke(_train_args(data, tiny_model_dir, killed))
    step = int(resumed.split("resumed at step ")[1].split()[0])
    assert step >= newest and step % 12  # a mid-epoch step, not an epoch's end
    assert _adapter(killed) == _adapter(clean) and _adapter(clean)
    assert _epochs(killed) == _epochs(clean)
    assert len(_epochs(clean)) == 6
    assert not list(killed.rglob("*.tmp"))


# ------------------------------------------------------------------ compare
def _compare_args(pool: Path, target: Path, model: Path, out: Path) -> list[str]:
    # 3 steps an epoch for 12 epochs per cell: a kill during the second cell's training lands mid-run
    return ["compare", "--pool", str(pool), "--target", str(target), "--k", "6", "--selectors", "longest,random",
            "--seeds", "1", "--epochs", "12", "--lr", "0.01", "--train-batch-size", "2", "--train-max-length", "64",
            "--model", str(model), "--out", str(out)]


def _results(out: Path) -> dict:
    """results.json without the wall times."""
    summary = json.loads((out / "results.json").read_text())
    for row in summary["rows"]:
        del row["selection_seconds"], row["training_seconds"], row["evaluation_seconds"]
    del summary["phases"]
    return summary


def _adapters(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "runs").glob("*/adapter/*.safetensors"))}


def test_kill_9_during_compare_then_rerun_reuses_finished_cells_and_equals_an_uninterrupted_run(
        tmp_path, tiny_model_dir):
    pool, target = compare_files(tmp_path)  # the pool and target of test_compare
    clean = tmp_path / "clean"
    _invoke(_compare_args(pool, target, tiny_model_dir, clean))

    killed = tmp_path / "killed"
    process = _start(_influence(*_compare_args(pool, target, tiny_model_dir, killed)), tmp_path / "killed.log")
    _kill_9_when(process, lambda: any(killed.glob("runs/random-s0-*/checkpoints/epoch-1")), tmp_path / "killed.log")
    assert len(list(killed.glob("evals/*/longest-s0-*.json"))) == 1      # the first cell is finished
    assert not list(killed.glob("runs/random-s0-*/manifest.json"))       # the second is mid-training
    assert not (killed / "results.json").exists()

    resumed = _invoke(_compare_args(pool, target, tiny_model_dir, killed))
    lines = {line.split("] ")[1].split(":")[0]: line for line in resumed.splitlines() if " seed 0: " in line}
    assert lines["longest seed 0"].endswith("(reused selection, training, evaluation)")
    assert lines["random seed 0"].endswith("(reused selection)")
    assert _results(killed) == _results(clean)
    assert _adapters(killed) == _adapters(clean) and len(_adapters(clean)) == 2
    assert not list(killed.rglob("*.tmp")), "a half-written temporary of the killed run was left behind"


# ------------------------------------------------------------------ warmup (inside featurize)
def test_kill_9_during_the_warmup_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_model_dir):
    pool = write_jsonl(tmp_path / "pool.jsonl", [
        {"instruction": f"Name the square of {i}.", "output": f"The square of {i} is {i * i}."} for i in range(96)])

    def command(root: Path) -> list[str]:  # the whole pool in the warmup, 3 epochs of 3 steps
        return _featurize(pool, tiny_model_dir, root, warmup_fraction="1.0", warmup_epochs="3", shard_rows="32")

    clean = tmp_path / "clean"
    _invoke(command(clean)[3:])
    killed = tmp_path / "killed"
    process = _start(command(killed), tmp_path / "killed.log")
    checkpoints = killed / "run" / "warmup" / "checkpoints"
    _kill_9_when(process, lambda: (checkpoints / "epoch-1").is_dir(), tmp_path / "killed.log")
    assert not (killed / "run" / "warmup" / "manifest.json").exists(), "the warmup finished before the kill"
    assert not (killed / "run" / "features").exists()

    resumed = subprocess.run(command(killed), check=True, env=ENV, capture_output=True, text=True)
    assert "resuming" in resumed.stderr and "the end of epoch" in resumed.stderr
    assert _features(killed) == _features(clean)
    assert not list(killed.rglob("*.tmp"))
    adapter = Path("warmup", "adapter", "adapter_model.safetensors")
    assert (killed / "run" / adapter).read_bytes() == (clean / "run" / adapter).read_bytes()
