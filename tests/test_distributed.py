"""Featurization on two torch.distributed processes (gloo, CPU) equals one process, byte for byte."""

from __future__ import annotations

from pathlib import Path

import torch.multiprocessing as mp

from influence.less import LessSettings, build_features
from tests.test_less import TARGET, _loaded, _pool


def _settings(root: Path, name: str) -> LessSettings:
    return LessSettings.for_tests(index_root=root, name=name, shard_rows=8)


def _rank(rank: int, world_size: int, init_file: str, root: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        build_features(_pool(), TARGET, _settings(Path(root), "run"), loaded=_loaded())
    finally:
        dist.destroy_process_group()


def _store_files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted((run / "features").rglob("*"))
            if p.is_file() and p.name != "lock"}


def test_two_gloo_ranks_write_the_same_datastore_as_one_process(tmp_path):
    single = build_features(_pool(), TARGET, _settings(tmp_path / "single", "run"), loaded=_loaded())
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(tmp_path / "dist")), nprocs=2, join=True)

    one = _store_files(single.workdir)
    two = _store_files(tmp_path / "dist" / "run")
    assert len([name for name in one if name.endswith(".npy")]) >= 8  # several shards per store, split across ranks
    assert one.keys() == two.keys()
    assert all(one[name] == two[name] for name in one)
