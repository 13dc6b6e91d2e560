"""torch.distributed on two gloo processes (CPU): featurization equals one process byte for byte,
and data-parallel training equals one process up to the order of floating-point additions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from influence.data import Example
from influence.less import LessSettings, build_features
from influence.training import list_checkpoints, read_manifest
from tests.test_less import TARGET, _loaded, _pool


def _settings(root: Path, name: str) -> LessSettings:
    return LessSettings.for_tests(index_root=root, name=name, shard_rows=8)


# 7 examples in steps of 3: micro-batches split 2 + 1 between the ranks, and the last step leaves rank 1 idle
EXAMPLES = [Example(f"Task {i}: repeat the word {word}.", "", f"{word} " * (1 + i % 3))
            for i, word in enumerate(["red", "blue", "green", "apple", "river", "stone", "cloud"])]

def _join(rank: int, world_size: int, init_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)


def _featurize_rank(rank: int, world_size: int, init_file: str, root: str) -> None:
    import torch.distributed as dist

    _join(rank, world_size, init_file)
    try:
        build_features(_pool(), TARGET, _settings(Path(root), "run"), loaded=_loaded())
    finally:
        dist.destroy_process_group()


def _store_files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted((run / "features").rglob("*"))
            if p.is_file() and p.name != "lock"}


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def test_two_gloo_ranks_write_the_same_datastore_as_one_process(tmp_path):
    single = build_features(_pool(), TARGET, _settings(tmp_path / "single", "run"), loaded=_loaded())
    # the same examples through the same checkpoints: the ranks reuse the single process's warmup
    shutil.copytree(single.workdir / "warmup", tmp_path / "dist" / "run" / "warmup")
    mp.spawn(_featurize_rank, args=(2, str(tmp_path / "init"), str(tmp_path / "dist")), nprocs=2, join=True)

    one = _store_files(single.workdir)
    two = _store_files(tmp_path / "dist" / "run")
    assert len([name for name in one if name.endswith(".npy")]) >= 8  # several shards per store, split across ranks
    assert one.keys() == two.keys()
    assert all(one[name] == two[name] for name in one)


@pytest.mark.slow  # three interpreters importing torch and transformers, two at once: over a minute on 2 cores
def test_accelerate_launch_on_two_cpu_processes_trains_the_same_adapter_as_one_process(tmp_path, tiny_model_dir):
    import os
    import subprocess
    import sys

    from tests.conftest import write_jsonl

    data = write_jsonl(tmp_path / "data.jsonl", [e.to_record("alpaca") for e in EXAMPLES])
    # steps of 3 micro-batches: 2 + 1 between the ranks, and the last step's one leaves rank 1 a stand-in
    options = ["train", "--data", str(data), "--model", str(tiny_model_dir), "--epochs", "2", "--lr", "0.01",
               "--batch-size", "3", "--micro-batch-size", "1", "--max-length", "64", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "influence.cli", *options, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    # accelerate's torchrun launcher; on a machine without GPUs its processes train on the CPU over gloo
    # (`--cpu` with several processes expects mpirun, and without it runs a single process)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "influence.cli"]
    two = subprocess.run([*launch, *options, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1  # rank 0 alone writes and reports

    single, dist = read_manifest(tmp_path / "one"), read_manifest(tmp_path / "two")
    assert (single["engine"]["processes"], dist["engine"]["processes"]) == (1, 2)
    assert dist["steps"] == single["steps"] == 6
    np.testing.assert_allclose([e["mean_loss"] for e in dist["epochs"]], [e["mean_loss"] for e in single["epochs"]],
                               rtol=1e-5)
    assert [e["avg_lr"] for e in dist["epochs"]] == [e["avg_lr"] for e in single["epochs"]]
    assert len(list_checkpoints(tmp_path / "two")) == 2
    a, b = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    assert a.keys() == b.keys()
    assert all(a[name].abs().max() > 0 for name in a if "lora_B" in name)  # B starts at zero: it trained
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)


def test_the_torchrun_commands_of_the_readme_run_on_two_cpu_processes(tmp_path, tiny_model_dir):
    import os
    import subprocess
    import sys

    from tests.conftest import write_jsonl

    pool = write_jsonl(tmp_path / "pool.jsonl", [e.to_record("alpaca") for e in _pool().examples])
    options = ["--pool", str(pool), "--model", str(tiny_model_dir), "--lora-r", "4", "--lora-alpha", "16",
               "--dims", "64", "--warmup-fraction", "0.5", "--warmup-epochs", "3", "--max-length", "64",
               "--shard-rows", "4", "--name", "run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def influence(*args: str, ranks: int = 1) -> str:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
        command = [*(launcher if ranks > 1 else [sys.executable]), "-m", "influence.cli", *args]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    influence("featurize", *options, "--index-root", str(tmp_path / "one"))
    # the same checkpoints for both, then featurization on two ranks
    shutil.copytree(tmp_path / "one" / "run" / "warmup", tmp_path / "two" / "run" / "warmup")
    out = influence("featurize", *options, "--index-root", str(tmp_path / "two"), ranks=2)
    # 3 one-step epochs: the first, at learning rate 0, is skipped; 2 checkpoints, said once by rank 0
    assert out.count("datastore ") == 2 and out.count("featurized now") == 1
    assert _store_files(tmp_path / "two" / "run") == _store_files(tmp_path / "one" / "run")

    # the warmup itself, data parallel on two ranks: the same adapter up to float rounding
    influence("warmup", *options, "--index-root", str(tmp_path / "dp"), ranks=2)
    one = _adapter(tmp_path / "one" / "run" / "warmup")
    two = _adapter(tmp_path / "dp" / "run" / "warmup")
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6)

    # select on two ranks: they featurize together, rank 0 alone scores and writes; then score on two
    # ranks from those datastores (the others only check them) gives the same records
    target = write_jsonl(tmp_path / "target.jsonl", [{**e.to_record("alpaca"), "subtask": e.subtask}
                                                     for e in TARGET.examples])
    chosen = ["--target", str(target), "--k", "4", "--index-root", str(tmp_path / "dp")]
    said = influence("select", *options, *chosen, "--out", str(tmp_path / "two.jsonl"), ranks=2)
    assert said.count("wrote ") == 1
    # select scored unprojected (the default): score reads the exact cosines select stored
    influence("score", *options, *chosen, "--scoring", "unprojected", "--out", str(tmp_path / "one.jsonl"), ranks=2)
    one, two = ([json.loads(line) for line in (tmp_path / f"{n}.jsonl").read_text().splitlines()] for n in ("one", "two"))
    assert len(one) == 4 and one == two
