"""One writer per directory: the lock file shared by the feature store and the trainer."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

from influence.errors import InfluenceError
from influence.io import pid_alive, process_start

log = logging.getLogger(__name__)

_ATTEMPTS = 20
_FRESH_SECONDS = 10.0   # an empty lock file younger than this may be being filled by its writer


def describe_holder(info: Mapping[str, Any]) -> str:
    """'pid P on host H, group G since T' for a lock's recorded owner."""
    since = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    group = f", group {info['group']!r}" if info.get("group") else ""
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}{group} since {when}"


class FileLock:
    """An exclusive lock file made with O_CREAT|O_EXCL, holding the owner's pid, host and start time.

    A lock left by a dead process on this host is taken over (and logged). Processes that
    pass the same non-empty ``group`` (for instance a torchrun job id) share the lock: the
    first one creates it, the others join, and only the creator removes it.

    Args:
        path: the lock file.
        group: share the lock with processes passing the same group.
        what: what the locked directory is, for the messages ("datastore").
        error: the error raised when the lock cannot be taken.
        busy: the message for that error, from the holder's recorded info; by default it names
            the holder (`describe_holder`) and says to wait, or to delete the lock if it is dead.
    """

    def __init__(self, path: str | os.PathLike, group: str | None = None, *, what: str = "directory",
                 error: type[InfluenceError] = InfluenceError,
                 busy: Callable[[Mapping[str, Any]], str] | None = None):
        self.path = Path(path)
        self.group = group
        self.owner = False
        self._error = error
        self._busy = busy or (lambda held: f"{what} {self.path.parent} is being written by {describe_holder(held)}; "
                                           f"wait for that run to finish, or if it is dead, delete {self.path}")
        self._nonce = uuid.uuid4().hex

    def _read(self) -> dict[str, Any] | None:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError):
            return {}
        return info if isinstance(info, dict) else {}

    def acquire(self) -> "FileLock":
        """Take the lock (or join its group); raises `error` with `busy`'s message if a live run holds it."""
        info = {"pid": os.getpid(), "host": socket.gethostname(), "group": self.group,
                "started": time.time(), "process_start": process_start(os.getpid()), "nonce": self._nonce}
        for _attempt in range(_ATTEMPTS):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self._read()
                if held is None:
                    continue  # released between our attempts; try again
                if self.group and held.get("group") == self.group:
                    log.info("joined the lock on %s held by %s", self.path.parent, describe_holder(held))
                    return self
                if self._is_stale(held):
                    self._take_over(held)
                    continue
                raise self._error(self._busy(held))
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(info, handle)
                handle.flush()
                os.fsync(handle.fileno())
            self.owner = True
            return self
        raise self._error(f"could not take the lock {self.path} after {_ATTEMPTS} attempts; another process keeps "
                          f"taking it; delete it if no run is writing {self.path.parent}")

    def _is_stale(self, held: Mapping[str, Any]) -> bool:
        if not held:  # empty or unreadable: a writer died between creating and filling it, or is filling it now
            try:
                return time.time() - self.path.stat().st_mtime > _FRESH_SECONDS
            except FileNotFoundError:
                return False
        pid = held.get("pid")
        if held.get("host") != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool):
            return False  # cannot see processes on other hosts
        return not pid_alive(pid, held.get("process_start"))

    def _take_over(self, held: Mapping[str, Any]) -> None:
        # Move the stale file aside under a unique name, then check it is the one we judged
        # stale: another process may have taken it over and locked anew in the meantime.
        aside = self.path.with_name(f"{self.path.name}.stale.{self._nonce}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            moved = {}
        if (moved or {}) != dict(held) and moved:
            try:  # not the stale lock: put it back (link fails if a new lock appeared meanwhile)
                os.link(aside, self.path)
            except FileExistsError:
                pass
        else:
            log.warning("took over the lock on %s left by a dead process (%s)", self.path.parent,
                        describe_holder(held) if held else "unreadable lock file")
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock file if this process created it."""
        if not self.owner:
            return
        held = self._read()
        if held and held.get("nonce") == self._nonce:
            self.path.unlink(missing_ok=True)
        self.owner = False

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
