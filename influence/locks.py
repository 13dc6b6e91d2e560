"""One writer per directory: an OS file lock (the `filelock` library) held by one process, and a record of who holds it.

The lock itself is `<name>.flock`, locked with flock/fcntl through `filelock`: the operating
system releases it when its holder exits, however it dies, so a dead run's lock is never
in the way and never needs taking over. Beside it, `<name>` records the holder (pid, host,
group, start time) while it is held, for the message a refused writer sees; a record left by
a killed process is simply overwritten by the next holder.

Ranks of one distributed job share a lock: one rank holds it, and the others, passing the
same ``group`` (`influence.distributed.job_key`), join it by reading the record.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import filelock

from influence.errors import InfluenceError
from influence.io import write_json

log = logging.getLogger(__name__)

_JOIN_WAIT_SECONDS = 10.0   # how long a joining rank waits for the holder to write its record
_POLL_SECONDS = 0.05
OS_LOCK_SUFFIX = ".flock"


def describe_holder(info: Mapping[str, Any]) -> str:
    """'pid P on host H, group G since T' for a lock's recorded owner."""
    since = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    group = f", group {info['group']!r}" if info.get("group") else ""
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}{group} since {when}"


def os_lock_path(path: str | os.PathLike) -> Path:
    """The file `filelock` locks for the lock recorded at `path`."""
    path = Path(path)
    return path.with_name(path.name + OS_LOCK_SUFFIX)


class FileLock:
    """An exclusive OS lock on a directory's writer, with the holder recorded for others to read.

    Processes that pass the same non-empty ``group`` share the lock: the first one holds it,
    the others join, and only the holder releases it.

    Args:
        path: the holder's record; the OS lock is `os_lock_path(path)`.
        group: share the lock with processes passing the same group.
        what: what the locked directory is, for the messages ("datastore").
        error: the error raised when the lock cannot be taken.
        busy: the message for that error, from the holder's recorded info; by default it names
            the holder (`describe_holder`) and says to wait.
    """

    def __init__(self, path: str | os.PathLike, group: str | None = None, *, what: str = "directory",
                 error: type[InfluenceError] = InfluenceError,
                 busy: Callable[[Mapping[str, Any]], str] | None = None):
        self.path = Path(path)
        self.group = group
        self.owner = False
        self._error = error
        self._busy = busy or (lambda held: f"{what} {self.path.parent} is being written by {describe_holder(held)}; "
                                           "wait for that run to finish")
        self._os_lock: Any = None

    def _read(self) -> dict[str, Any]:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return {}
        return info if isinstance(info, dict) else {}

    def acquire(self) -> "FileLock":
        """Take the lock (or join its group); raises `error` with `busy`'s message if another run holds it."""
        os_lock = filelock.FileLock(str(os_lock_path(self.path)), thread_local=False)
        deadline = time.monotonic() + _JOIN_WAIT_SECONDS
        while True:
            try:
                os_lock.acquire(blocking=False)
            except filelock.Timeout:
                held = self._read()
                if self.group and held.get("group") == self.group:
                    log.info("joined the lock on %s held by %s", self.path.parent, describe_holder(held))
                    return self
                if held or not self.group or time.monotonic() > deadline:
                    raise self._error(self._busy(held)) from None
                time.sleep(_POLL_SECONDS)  # held, but its record is not written yet: it may be our group's
                continue
            break
        self._os_lock = os_lock
        previous = self._read()
        if previous:
            log.info("the lock on %s was left by %s, which has ended", self.path.parent, describe_holder(previous))
        try:
            write_json(self.path, {"pid": os.getpid(), "host": socket.gethostname(), "group": self.group,
                                   "started": time.time()})
        except BaseException:
            os_lock.release()
            raise
        self.owner = True
        return self

    def release(self) -> None:
        """Remove the record and let the OS lock go, if this process holds it."""
        if not self.owner:
            return
        self.path.unlink(missing_ok=True)  # before the OS lock goes: a record never names a holder that is gone
        self._os_lock.release()
        self._os_lock = None
        self.owner = False

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
