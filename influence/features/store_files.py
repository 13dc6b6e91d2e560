"""Where a feature store keeps its files, and the housekeeping of its directory.

Shards and their sidecars live under ``shards/``; the lock file beside the manifest. A
store being replaced is wiped (its lock kept); temporaries that a killed write left behind
are removed by the lock's owner.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from influence.constants import DATASTORE_MANIFEST

LOCK_FILE = "lock"
SHARD_DIR = "shards"


def shard_file(path: Path, shard: int) -> Path:
    """The `.npy` file of `shard` in the store at `path`."""
    return path / SHARD_DIR / f"{shard:06d}.npy"


def sidecar_file(path: Path, shard: int) -> Path:
    """The sidecar (rows, byte size, sha256) of `shard` in the store at `path`."""
    return path / SHARD_DIR / f"{shard:06d}.json"


def wipe(path: Path) -> None:
    """Remove what a store holds (shards and manifest), keeping the directory and its lock."""
    shutil.rmtree(path / SHARD_DIR, ignore_errors=True)
    (path / DATASTORE_MANIFEST).unlink(missing_ok=True)
    (path / SHARD_DIR).mkdir(parents=True, exist_ok=True)


def remove_temporaries(path: Path) -> None:
    """Delete temporaries left by writes that a kill interrupted (only the lock's owner may)."""
    for folder in (path, path / SHARD_DIR):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
