"""The one way this package writes files: to a temporary sibling, fsync, then rename.

A reader therefore sees either the old file or the complete new one, never a partial
file, even if the process is killed mid-write.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from influence.errors import OutputExistsError


_SWEPT: set[str] = set()  # directories this process has cleared of dead writers' temporaries


def _temporary_prefix(target: Path) -> str:
    """`.<name>.<pid>.`: a temporary names its writer, so one left by a killed process can be told apart."""
    return f".{target.name}.{os.getpid()}."


def remove_dead_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporaries (`.<name>.<pid>.*.tmp`) that writers killed mid-write left in `directory`.

    A temporary whose writer still runs is kept. Every write sweeps its directory once per
    process, so rerunning a killed command leaves no litter where it writes again.
    """
    directory = Path(directory)
    _SWEPT.add(str(directory))
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            name = entry.name
            if not (name.startswith(".") and name.endswith(".tmp")):
                continue
            parts = name[1:-4].rsplit(".", 2)  # <name>, <pid>, <random>
            if len(parts) != 3 or not parts[1].isdigit() or pid_alive(int(parts[1])):
                continue
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append(path)
    return removed


def _sweep_once(directory: Path) -> None:
    if str(directory) not in _SWEPT:
        remove_dead_temporaries(directory)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[BinaryIO]:
    """Open a binary handle whose content replaces `path` only when the block succeeds."""
    path = Path(path)
    if not overwrite and path.exists():
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces `target` only when the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    with atomic_open(path, overwrite=overwrite) as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    return write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def write_json(path: str | os.PathLike, obj: Any, *, overwrite: bool = True) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n",
                      overwrite=overwrite)


def write_jsonl(path: str | os.PathLike, records: list[dict], *, overwrite: bool = True) -> Path:
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return write_text(path, lines, overwrite=overwrite)


def write_npy(path: str | os.PathLike, array: np.ndarray, *, overwrite: bool = True) -> Path:
    with atomic_open(path, overwrite=overwrite) as handle:
        np.save(handle, array, allow_pickle=False)
    return Path(path)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able object in canonical form (sorted keys, no spaces)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), to tell a lock's live owner from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether the process that wrote a lock still runs (same pid and, if known, same start time)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if start is not None:
        current = process_start(pid)
        if current is not None and current != start:
            return False  # the pid was reused by another process
    return True
