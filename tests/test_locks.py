"""The writer's lock: an OS lock held by one process, a record naming it, ranks of one job joining it,
and a key per distributed job so that two jobs never join each other's lock."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from influence.errors import InfluenceError
from influence.locks import FileLock, os_lock_path

HOLD = """
import sys, time
from influence.locks import FileLock
with FileLock(sys.argv[1], sys.argv[2] or None):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(path, group: str = "") -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(path), group], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def _end(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()
    process.stdout.close()


def test_a_held_lock_refuses_another_process_and_names_its_holder(tmp_path):
    holder = _holder(tmp_path / "lock")
    try:
        with pytest.raises(InfluenceError, match=rf"being written by pid {holder.pid} on host {socket.gethostname()}"):
            FileLock(tmp_path / "lock", what="datastore").acquire()
    finally:
        _end(holder)
    # killed with SIGKILL: the OS let its lock go, and the next writer takes it without ceremony
    with FileLock(tmp_path / "lock") as lock:
        assert lock.owner and os_lock_path(tmp_path / "lock").exists()
    assert not (tmp_path / "lock").exists()  # the record goes on release


def test_one_process_holds_the_lock_and_its_group_joins(tmp_path):
    holder = _holder(tmp_path / "lock", "job-a")
    try:
        joined = FileLock(tmp_path / "lock", "job-a").acquire()
        assert not joined.owner
        joined.release()  # a joiner's release leaves the holder's lock alone
        assert (tmp_path / "lock").exists()
        with pytest.raises(InfluenceError, match="group 'job-a'"):
            FileLock(tmp_path / "lock", "job-b").acquire()
    finally:
        _end(holder)


def test_two_jobs_started_without_a_rendezvous_id_get_different_lock_groups(tmp_path, monkeypatch):
    import torch.distributed as dist

    from influence.distributed import job_key

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # what torchrun sets for every job without --rdzv-id
    keys = []
    for job in ("first", "second"):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / job}", rank=0, world_size=1)
        try:
            keys.append(job_key())
            assert job_key() == keys[-1]  # drawn once per job
        finally:
            dist.destroy_process_group()
    assert keys[0] != keys[1] and all(key.startswith("job-") for key in keys)
    with FileLock(tmp_path / "lock", keys[0]):
        with pytest.raises(InfluenceError, match="being written by"):
            FileLock(tmp_path / "lock", keys[1]).acquire()
        assert not FileLock(tmp_path / "lock", keys[0]).acquire().owner
