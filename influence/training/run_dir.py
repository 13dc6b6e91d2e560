"""The output directory of a training run: checked before any work, claimed, locked, cleared.

A directory holds one run. ``run.json`` records the identity of the run in progress, so a
rerun resumes only the same run; ``.lock`` (an OS lock on ``.lock.flock``, see `influence.locks`)
keeps two processes from writing at once, and goes with its process however it ends;
`--overwrite` clears a run's own files and never a directory of other files.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from influence.errors import ManifestMismatchError, TrainingError
from influence.io import check_output_dir, write_json
from influence.locks import FileLock, os_lock_path
from influence.provenance import settings_differences
from influence.training.checkpoint import ADAPTER_DIR, CHECKPOINT_DIR, list_checkpoints, remove_stale_staging
from influence.training.outputs import MANIFEST_FILE, MODEL_DIR, TrainResult, read_manifest
from influence.training.tracking import LOGS_DIR

log = logging.getLogger(__name__)

RUN_FILE = "run.json"          # the identity of the run in progress; a resume must match it
LOCK_FILE = ".lock"
_LOCK_FILES = (LOCK_FILE, os_lock_path(LOCK_FILE).name)


def check_out_dir(out_dir: Path) -> None:
    """Fail before any work unless `out_dir` can hold a training run: writable, and new, empty or a run's own.

    `--overwrite` replaces a training run; it never deletes a directory of other files.
    """
    check_output_dir(out_dir)
    if not out_dir.is_dir() or (out_dir / RUN_FILE).exists() or (out_dir / MANIFEST_FILE).exists():
        return
    foreign = sorted(p.name for p in out_dir.iterdir() if not _is_run_entry(p.name))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise TrainingError(f"{out_dir} is not a training run (it holds {shown}); choose a new or empty --out "
                            "(--overwrite replaces only a training run's own files)")


def out_dir_lock(out_dir: Path) -> FileLock:
    """One training run per output directory at a time; the lock of a dead process is free again."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(out_dir / LOCK_FILE, error=TrainingError,
                    busy=lambda held: f"another training run (pid {held.get('pid', '?')}) is writing to {out_dir}; "
                                      "wait for it or choose another --out")


def prepare_out_dir(out_dir: Path, identity: dict[str, Any], overwrite: bool) -> TrainResult | None:
    """Clear (with overwrite), find a finished run, or claim the directory for this run."""
    if overwrite and out_dir.exists():
        _clear(out_dir)
    finished = finished_run(out_dir, identity)
    if finished is None:
        _claim(out_dir, identity)
        remove_stale_staging(out_dir)
        remove_stale_staging(out_dir / CHECKPOINT_DIR)
    return finished


def finished_run(out_dir: Path, identity: dict[str, Any]) -> TrainResult | None:
    """The finished run `out_dir` holds, if it is this run (else ManifestMismatchError); None if unfinished."""
    if not (out_dir / MANIFEST_FILE).exists():
        return None
    manifest = read_manifest(out_dir)
    _require_same(out_dir, manifest.get("identity"), identity)
    log.info("%s already holds this finished run; nothing to train", out_dir)
    return TrainResult(out_dir=out_dir, weights_dir=out_dir / manifest["output"]["path"],
                       manifest_path=out_dir / MANIFEST_FILE, manifest=manifest,
                       checkpoints=list_checkpoints(out_dir), resumed_from_epoch=len(manifest["epochs"]),
                       resumed_from_step=manifest["steps"],
                       reused=True)


def _claim(out_dir: Path, identity: dict[str, Any]) -> None:
    """Record the run's identity, or check that the run already begun here is this one."""
    path = out_dir / RUN_FILE
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = None
        _require_same(out_dir, previous, identity)
        return
    if out_dir.exists() and any(p.name not in _LOCK_FILES for p in out_dir.iterdir()):
        raise TrainingError(f"{out_dir} exists and is not a training run; choose a new or empty --out")
    write_json(path, identity)


def _require_same(out_dir: Path, previous: Any, identity: dict[str, Any]) -> None:
    if not isinstance(previous, dict):
        differing = ["the run record is unreadable"]
    else:
        differing = [name for name, _, _ in settings_differences(previous, json.loads(json.dumps(identity)))]
    if differing:
        raise ManifestMismatchError(f"{out_dir} holds a run with other {', '.join(differing[:4])}; "
                                    "use another --out, or --overwrite to start again")


def _is_run_entry(name: str) -> bool:
    """Whether a name in an output directory is one a training run (or `influence evaluate` beside it) writes."""
    return (name in (RUN_FILE, MANIFEST_FILE, *_LOCK_FILES, ADAPTER_DIR, MODEL_DIR, CHECKPOINT_DIR, LOGS_DIR)
            or (name.startswith(".") and name.endswith(".tmp"))
            or (name.startswith("eval-") and name.endswith(".json")))


def _clear(out_dir: Path) -> None:
    """Delete what a training run wrote in `out_dir` (and evaluations beside it); nothing else."""
    for path in out_dir.iterdir():
        if path.name in _LOCK_FILES or not _is_run_entry(path.name):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
