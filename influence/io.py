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
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from influence.errors import OutputError, OutputExistsError


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


def _umask() -> int:
    """The process's umask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _plain_open_mode(path: Path) -> int:
    """The permission bits `open(path, "w")` would leave: an existing file's own, else 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return 0o666 & ~_umask()


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"cannot create {path}: {path.parent} is a file, not a directory") from None
    except OSError as exc:
        raise OutputError(f"cannot create directory {path.parent} for {path} ({exc.strerror or exc})") from None


def _temporary_file(path: Path) -> tuple[int, str]:
    """A new temporary beside `path`, with the mode a plain open() of `path` would give."""
    _make_parent(path)
    _sweep_once(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write in {path.parent} ({exc.strerror or exc}); choose another output") from None
    os.fchmod(fd, _plain_open_mode(path))
    return fd, tmp


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[BinaryIO]:
    """Open a binary handle whose content replaces `path` only when the block succeeds.

    The file gets the permission bits a plain `open()` would give it (not mkstemp's 0600).
    """
    path = Path(path)
    check_output_file(path, overwrite=overwrite)
    fd, tmp = _temporary_file(path)
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


def replace_together(contents: dict[str | os.PathLike, bytes]) -> list[Path]:
    """Write several files as one unit: afterwards either every file is new or every one is as before.

    Each file is written to a temporary beside it first; the old files are kept as hard links
    until every rename has succeeded, and put back if one fails.
    """
    for path in contents:
        check_output_file(path, overwrite=True)
    staged: list[tuple[Path, str]] = []
    try:
        for path, data in contents.items():
            path = Path(path)
            fd, tmp = _temporary_file(path)
            staged.append((path, tmp))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        done: list[tuple[Path, str | None]] = []  # renamed into place, with the old file's backup
        backup = None
        try:
            for path, tmp in staged:
                backup = None
                if path.exists():
                    backup = f"{tmp}.old.tmp"
                    try:
                        os.link(path, backup)
                    except OSError:  # a file system without hard links
                        shutil.copy2(path, backup)
                os.replace(tmp, path)
                done.append((path, backup))
            backup = None
        except BaseException:
            for path, old in [*reversed(done), (None, backup)]:
                with contextlib.suppress(OSError):
                    if path is None:  # the rename that failed: its backup links the untouched file
                        if old is not None:
                            os.unlink(old)
                    elif old is None:
                        path.unlink()
                    else:
                        os.replace(old, path)
            raise
        for _, old in done:
            if old is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(old)
    finally:
        for _, tmp in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return [Path(p) for p in contents]


def _lstat(path: Path) -> os.stat_result | None:
    """`os.lstat(path)`, None if nothing is there; a path that cannot be looked at is an OutputError."""
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc} (a directory on its path cannot be "
                          "entered); choose another output location") from None


def _writable_directory(directory: Path, what: Path) -> None:
    """Fail unless `directory` exists as a writable directory or could be created."""
    probe = Path(os.path.abspath(directory))
    while (found := _lstat(probe)) is None:
        probe = probe.parent
    if stat.S_ISLNK(found.st_mode):
        try:
            found = os.stat(probe)
        except OSError:  # a dangling link: mkdir would fail on it
            raise OutputError(f"cannot create {what}: {probe} is a broken symbolic link") from None
    if not stat.S_ISDIR(found.st_mode):
        raise OutputError(f"cannot create {what}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        verb = "write in" if probe == Path(os.path.abspath(directory)) else "create directories in"
        raise OutputError(f"cannot {verb} {probe} (permission denied); choose another output location")


def check_output_file(path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Fail now, before any work, unless `path` can be written as a regular file.

    Raises:
        OutputExistsError: it exists and overwrite is False.
        OutputError: it is a directory or a device (or other non-regular file), or its
            directory cannot be created, entered or written.
    """
    path = Path(path)
    found = _lstat(path)
    if found is not None:
        if stat.S_ISLNK(found.st_mode):
            try:
                found = os.stat(path)
            except OSError:
                raise OutputError(f"{path} is a broken symbolic link; remove it or choose another output") from None
        if stat.S_ISDIR(found.st_mode):
            raise OutputError(f"{path} is a directory; give a file name for the output")
        if not stat.S_ISREG(found.st_mode):
            raise OutputError(f"{path} is not a regular file (a device, pipe or socket); "
                              "give the path of a regular file")
        if not overwrite:
            raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")
    _writable_directory(path.parent, path)


def check_output_dir(path: str | os.PathLike) -> None:
    """Fail now, before any work, unless `path` is (or can be made) a writable directory.

    Raises:
        OutputError: it is a file, or it or its parents cannot be created, entered or written.
    """
    path = Path(path)
    if _lstat(path) is not None and not path.is_dir():  # is_dir follows a link; the path itself can be looked at
        raise OutputError(f"{path} exists and is not a directory; give a directory for the output")
    _writable_directory(path, path)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces `target` only when the block succeeds."""
    target = Path(target)
    _make_parent(target)
    _sweep_once(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent))
    os.chmod(staging, 0o777 & ~_umask())  # as a plain mkdir would make it, not mkdtemp's 0700
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


def json_bytes(obj: Any) -> bytes:
    """`obj` as this package writes JSON files: indented UTF-8 with a final newline."""
    return (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")


def jsonl_bytes(records: list[dict]) -> bytes:
    """One JSON object per line, UTF-8."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def write_json(path: str | os.PathLike, obj: Any, *, overwrite: bool = True) -> Path:
    return write_bytes(path, json_bytes(obj), overwrite=overwrite)


def write_jsonl(path: str | os.PathLike, records: list[dict], *, overwrite: bool = True) -> Path:
    return write_bytes(path, jsonl_bytes(records), overwrite=overwrite)


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
