"""The feature datastore: one directory holds the features of an ordered list of examples.

A store is made under one *identity* (model and weights hash, LoRA settings and parameter
list hash, checkpoint, gradient type, projector, dtype, max length, pool fingerprint,
package versions: whatever decides the numbers) and is never mixed with features made
under another. Layout of ``indexes/<name>/``::

    manifest.json          identity, dims, shard size, example ids in order; per-shard
                           sha256 once every shard is there ("complete": true)
    lock                   present while a writer holds the store (pid, host, group)
    shards/000000.npy      float16 [rows, dim], rows [0, shard_rows) of the example ids
                           (float32 for stores made with dtype="float32", e.g. exact cosines)
    shards/000000.json     the shard's sidecar: its rows, byte size and sha256

Rows are grouped in fixed shards. A shard file is written atomically and only when all of
its rows are known, then its sidecar; a shard counts as done only when its sidecar is
valid and the file's size and sha256 match it. So a kill at any point loses at most the
shards in flight, resuming recomputes exactly the shards that are missing, truncated or
corrupt, and the result is byte for byte that of one uninterrupted run.

The manifest is written twice: when the store is made (``complete: false``) and by
``finalize()``, which collects the sidecars once every shard is there. Writers therefore
never contend on it, and several processes (torch.distributed ranks) can write disjoint
shards of one store: they share the lock by passing the same ``group``, each takes
``pending_shards(rank, world_size)``, and one of them calls ``finalize()`` after a barrier.

The manifest's format and checks live in `store_manifest`, the directory's file names and
housekeeping in `store_files`, and the lazily read [N, d] view in `rows`.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from influence.constants import DATASTORE_MANIFEST
from influence.errors import DatastoreError, ManifestMismatchError
from influence.features.rows import ShardedRows
from influence.features.store_files import (LOCK_FILE, SHARD_DIR, remove_temporaries, shard_file, sidecar_file,
                                            wipe)
from influence.features.store_manifest import (FEATURE_DTYPE, identity_difference, ids_difference,
                                               manifest_difference, new_manifest, read_manifest)
from influence.io import sha256_bytes, sha256_file, sha256_json, write_bytes, write_json
from influence.locks import FileLock

log = logging.getLogger(__name__)

DEFAULT_SHARD_ROWS = 256
_BUFFERED_SHARDS_WARNING = 64   # partly filled shards held in memory before write_rows warns


# --------------------------------------------------------------------------- the store


class FeatureStore:
    """The features of an ordered list of examples, under one identity, in one directory.

    Make or resume one with `FeatureStore.create` (a writer: takes the lock), read one
    with `FeatureStore.open`. Use either as a context manager so the lock is released.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], *, lock: FileLock | None = None):
        self.path = Path(path)
        self._manifest = manifest
        self.identity: dict[str, Any] = manifest["identity"]
        self.example_ids: list[str] = manifest["example_ids"]
        self.dim: int = manifest["dim"]
        self.shard_rows: int = manifest["shard_rows"]
        self.num_rows: int = manifest["num_rows"]
        self.num_shards: int = manifest["num_shards"]
        self.dtype = np.dtype(manifest["dtype"])
        self._lock = lock
        self._done: dict[int, dict[str, Any]] = {}   # shard -> its valid sidecar
        self._buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # shard -> (rows, filled mask)
        self._verified = False
        self._warned_scattered = False

    # ----------------------------------------------------------------- making and opening

    @classmethod
    def create(cls, path: str | os.PathLike, *, identity: Mapping[str, Any], example_ids: Sequence[str], dim: int,
               shard_rows: int = DEFAULT_SHARD_ROWS, overwrite: bool = False, group: str | None = None,
               verify: bool = True, dtype: str = FEATURE_DTYPE.name) -> "FeatureStore":
        """Make a store, or resume the one at `path` if it was made under the same identity.

        Takes the store's lock first. Shards already there are checked (size and, with
        `verify`, sha256); those that fail are listed by `pending_shards()` to be recomputed.

        Args:
            path: the store's directory, e.g. ``indexes/<name>``.
            identity: JSON-able dict of everything that decides the features.
            example_ids: the examples' stable ids, in row order.
            dim: the feature dimension.
            shard_rows: rows per shard file.
            overwrite: replace a store at `path` made under another identity, dimension,
                shard size or list of examples. A matching store is resumed, never wiped.
            group: share the lock with processes passing the same group (distributed ranks).
                In a distributed run, let one rank create the store, barrier, then the rest.
            verify: hash existing shards on resume (else only their sizes are checked).
            dtype: "float16" (features) or "float32".

        Raises:
            ManifestMismatchError: the store at `path` was made differently and not `overwrite`.
            DatastoreError: another run holds the lock, or the arguments are invalid.
        """
        path = Path(path)
        wanted = new_manifest(identity, example_ids, dim, shard_rows, dtype)
        path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path / LOCK_FILE, group, what="datastore", error=DatastoreError).acquire()
        try:
            manifest_file = path / DATASTORE_MANIFEST
            if manifest_file.exists():
                try:
                    stored = read_manifest(path)
                    problem = manifest_difference(path, stored, wanted)
                except DatastoreError as err:
                    if not overwrite:
                        raise DatastoreError(f"{err}; or pass --overwrite to replace the store") from None
                    stored, problem = None, str(err)
                if problem is not None:
                    if not overwrite:
                        raise ManifestMismatchError(problem)
                    if not lock.owner:
                        raise DatastoreError(f"{problem}; a process joining group {group!r} never replaces a "
                                             f"store: let one rank create it before the others open it")
                    log.warning("replacing datastore %s (--overwrite): %s", path, problem)
                    wipe(path)
                    write_json(manifest_file, wanted)
                elif stored is not None:
                    wanted = stored
            else:
                if lock.owner:
                    wipe(path)  # stray shards without a manifest cannot be trusted
                write_json(manifest_file, wanted)
            store = cls(path, wanted, lock=lock)
            if lock.owner and not group:
                remove_temporaries(path)
            store._scan(verify=verify)
            if store._manifest["complete"] and len(store._done) < store.num_shards:
                log.warning("datastore %s was complete but %d shard(s) are missing or corrupt; they will be "
                            "recomputed", path, store.num_shards - len(store._done))
                store._manifest = {**store._manifest, "complete": False, "shards": None}
                write_json(manifest_file, store._manifest)
            return store
        except BaseException:
            lock.release()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike, *, identity: Mapping[str, Any] | None = None,
             example_ids: Sequence[str] | None = None) -> "FeatureStore":
        """Open a store for reading, checking it against `identity` and `example_ids` when given.

        Raises:
            DatastoreError: no store at `path`, or its manifest is unreadable.
            ManifestMismatchError: the identity or the example ids differ.
        """
        path = Path(path)
        if not (path / DATASTORE_MANIFEST).exists():
            raise DatastoreError(f"no datastore at {path} (no {DATASTORE_MANIFEST}); run featurize first, or check "
                                 f"the --name")
        store = cls(path, read_manifest(path))
        if identity is not None:
            store.check_identity(identity)
        if example_ids is not None:
            store.check_example_ids(example_ids)
        return store

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        return (Path(path) / DATASTORE_MANIFEST).exists()

    # ----------------------------------------------------------------- checks

    def check_identity(self, identity: Mapping[str, Any]) -> None:
        """Raise ManifestMismatchError naming the first field that differs from `identity`."""
        problem = identity_difference(self.path, self.identity, identity)
        if problem is not None:
            raise ManifestMismatchError(problem)

    def check_example_ids(self, example_ids: Sequence[str]) -> None:
        """Raise ManifestMismatchError if the pool's ids (in order) are not the store's."""
        problem = ids_difference(self.path, self.example_ids, list(example_ids))
        if problem is not None:
            raise ManifestMismatchError(problem)

    # ----------------------------------------------------------------- layout

    def shard_range(self, shard: int) -> tuple[int, int]:
        """Rows [start, stop) of `shard`."""
        if not 0 <= shard < self.num_shards:
            raise DatastoreError(f"shard {shard} out of range; {self.path} has {self.num_shards} shards")
        start = shard * self.shard_rows
        return start, min(start + self.shard_rows, self.num_rows)

    def _shard_file(self, shard: int) -> Path:
        return shard_file(self.path, shard)

    def _sidecar_file(self, shard: int) -> Path:
        return sidecar_file(self.path, shard)

    # ----------------------------------------------------------------- status

    def _scan(self, verify: bool = True) -> None:
        self._done = {}
        for shard in range(self.num_shards):
            sidecar = self._valid_sidecar(shard, verify=verify)
            if sidecar is not None:
                self._done[shard] = sidecar

    def _expected_sidecar(self, shard: int) -> dict[str, Any]:
        start, stop = self.shard_range(shard)
        return {"shard": shard, "start": start, "stop": stop, "dim": self.dim, "dtype": self.dtype.name,
                "identity_sha256": self._manifest["identity_sha256"],
                "example_ids_sha256": sha256_json(self.example_ids[start:stop])}

    def _valid_sidecar(self, shard: int, *, verify: bool) -> dict[str, Any] | None:
        """The shard's sidecar if it and the shard file are intact, else None (with the reason logged)."""
        try:
            sidecar = json.loads(self._sidecar_file(shard).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as err:
            log.warning("shard %d of %s: unreadable sidecar (%s); recomputing it", shard, self.path, err)
            return None
        expected = self._expected_sidecar(shard)
        if not isinstance(sidecar, dict) or any(sidecar.get(k) != v for k, v in expected.items()) \
                or not isinstance(sidecar.get("sha256"), str) or not isinstance(sidecar.get("bytes"), int):
            log.warning("shard %d of %s: sidecar does not match this store; recomputing it", shard, self.path)
            return None
        try:
            size = self._shard_file(shard).stat().st_size
        except FileNotFoundError:
            log.warning("shard %d of %s: file missing; recomputing it", shard, self.path)
            return None
        if size != sidecar["bytes"]:
            log.warning("shard %d of %s: %d bytes, expected %d (truncated?); recomputing it", shard, self.path,
                        size, sidecar["bytes"])
            return None
        if verify and sha256_file(self._shard_file(shard)) != sidecar["sha256"]:
            log.warning("shard %d of %s: checksum mismatch (corrupt); recomputing it", shard, self.path)
            return None
        return sidecar

    @property
    def is_complete(self) -> bool:
        """Every shard is there (as checked when the store was opened or last written)."""
        if self._lock is None:
            return bool(self._manifest["complete"])
        return len(self._done) == self.num_shards

    def pending_shards(self, rank: int = 0, world_size: int = 1) -> list[int]:
        """Shards still to compute; with `world_size` > 1, those of `rank` (shard % world_size == rank)."""
        if not 0 <= rank < world_size:
            raise DatastoreError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self._require_writer()
        return [s for s in range(rank, self.num_shards, world_size) if s not in self._done]

    def missing_rows(self, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """Row indices (int64, ascending) of the pending shards: what a featurizer must compute."""
        parts = [np.arange(*self.shard_range(s), dtype=np.int64) for s in self.pending_shards(rank, world_size)]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def pending_row_groups(self, max_rows: int = 4096, rank: int = 0, world_size: int = 1) -> list[np.ndarray]:
        """Rows still to compute, as groups of whole pending shards of at most `max_rows` rows (one shard at least).

        Featurize one group at a time (sorting by length inside it): every shard of a group
        is complete, and written, by the end of the group, so memory is bounded by a group
        and a kill loses at most one group's work.
        """
        groups: list[np.ndarray] = []
        current: list[np.ndarray] = []
        size = 0
        for shard in self.pending_shards(rank, world_size):
            rows = np.arange(*self.shard_range(shard), dtype=np.int64)
            if current and size + len(rows) > max_rows:
                groups.append(np.concatenate(current))
                current, size = [], 0
            current.append(rows)
            size += len(rows)
        if current:
            groups.append(np.concatenate(current))
        return groups

    # ----------------------------------------------------------------- writing

    def _require_writer(self) -> None:
        if self._lock is None:
            raise DatastoreError(f"{self.path} was opened for reading; use FeatureStore.create to write or resume it")

    def write_rows(self, indices: Sequence[int] | np.ndarray, features: np.ndarray) -> list[int]:
        """Add computed rows; each shard is written as soon as all of its rows are in.

        Rows of shards already done are ignored, so writing a row twice is harmless.
        Partly filled shards live in memory only: a kill loses them, and resume redoes them.

        Returns:
            The shards written by this call.
        """
        self._require_writer()
        indices = np.asarray(indices)
        features = np.asarray(features)
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer) and indices.size:
            raise DatastoreError(f"row indices must be a 1-d integer array, got shape {indices.shape} "
                                 f"dtype {indices.dtype}")
        if features.shape != (len(indices), self.dim):
            raise DatastoreError(f"expected features of shape ({len(indices)}, {self.dim}), got {features.shape}")
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_rows):
            raise DatastoreError(f"row index out of range [0, {self.num_rows})")
        rows = _to_feature_dtype(features, self.dtype)
        written = []
        shards = indices // self.shard_rows
        for shard in np.unique(shards):
            shard = int(shard)
            if shard in self._done:
                continue
            where = np.flatnonzero(shards == shard)
            start, stop = self.shard_range(shard)
            if shard not in self._buffers:
                self._buffers[shard] = (np.zeros((stop - start, self.dim), dtype=self.dtype),
                                        np.zeros(stop - start, dtype=bool))
            buffer, filled = self._buffers[shard]
            buffer[indices[where] - start] = rows[where]
            filled[indices[where] - start] = True
            if filled.all():
                del self._buffers[shard]
                self.write_shard(shard, buffer)
                written.append(shard)
        if len(self._buffers) > _BUFFERED_SHARDS_WARNING and not self._warned_scattered:
            self._warned_scattered = True
            log.warning("datastore %s: %d shards are partly filled in memory; rows arrive scattered over the pool. "
                        "Featurize one group of shards at a time (pending_row_groups) to bound memory and the work "
                        "a kill loses", self.path, len(self._buffers))
        return written

    def write_shard(self, shard: int, features: np.ndarray) -> dict[str, Any]:
        """Write one whole shard atomically, then its sidecar. Idempotent.

        Returns:
            The shard's sidecar (rows, byte size, sha256).
        """
        self._require_writer()
        start, stop = self.shard_range(shard)
        features = np.asarray(features)
        if features.shape != (stop - start, self.dim):
            raise DatastoreError(f"shard {shard} holds rows [{start}, {stop}): expected shape "
                                 f"({stop - start}, {self.dim}), got {features.shape}")
        rows = np.ascontiguousarray(_to_feature_dtype(features, self.dtype))
        buffer = io.BytesIO()
        np.save(buffer, rows, allow_pickle=False)
        data = buffer.getvalue()
        sidecar = {**self._expected_sidecar(shard), "bytes": len(data), "sha256": sha256_bytes(data)}
        previous = self._done.get(shard)
        if previous is not None and previous["sha256"] == sidecar["sha256"]:
            return previous
        if previous is not None:
            log.warning("shard %d of %s rewritten with different bytes: the featurizer is not deterministic",
                        shard, self.path)
        # the sidecar goes away first, so a kill between the two writes leaves the shard pending
        self._sidecar_file(shard).unlink(missing_ok=True)
        write_bytes(self._shard_file(shard), data)
        write_json(self._sidecar_file(shard), sidecar)
        self._done[shard] = sidecar
        self._buffers.pop(shard, None)
        return sidecar

    def finalize(self, *, verify: bool = True) -> dict[str, Any]:
        """Collect every shard's checksum into the manifest and mark the store complete.

        Rescans the sidecars, so shards written by other processes count. Call it once,
        from one process, when all writers are done.

        Raises:
            DatastoreError: some shards are missing or fail their checksum.
        """
        self._require_writer()
        self._scan(verify=verify)
        pending = [s for s in range(self.num_shards) if s not in self._done]
        if pending:
            rows = sum(self.shard_range(s)[1] - self.shard_range(s)[0] for s in pending)
            head = ", ".join(map(str, pending[:8])) + (", ..." if len(pending) > 8 else "")
            raise DatastoreError(f"datastore {self.path} is incomplete: {len(pending)} of {self.num_shards} shards "
                                 f"({rows:,} rows) missing or corrupt (shards {head}); rerun featurize to finish it")
        shards = [{"file": f"{SHARD_DIR}/{s:06d}.npy", "start": self._done[s]["start"], "stop": self._done[s]["stop"],
                   "bytes": self._done[s]["bytes"], "sha256": self._done[s]["sha256"]} for s in range(self.num_shards)]
        manifest = {**self._manifest, "complete": True, "shards": shards}
        # keep example_ids last, for a manifest readable from the top
        manifest["example_ids"] = manifest.pop("example_ids")
        if manifest != self._manifest or not (self.path / DATASTORE_MANIFEST).exists():
            write_json(self.path / DATASTORE_MANIFEST, manifest)
        self._manifest = manifest
        self._verified = verify
        return manifest

    def close(self) -> None:
        """Release the lock; rows of shards left partly filled are dropped (resume redoes them)."""
        if self._buffers:
            rows = sum(int(filled.sum()) for _, filled in self._buffers.values())
            log.warning("datastore %s closed with %d row(s) in %d unfinished shard(s); they will be recomputed "
                        "on resume", self.path, rows, len(self._buffers))
            self._buffers.clear()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----------------------------------------------------------------- reading

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(self._manifest)

    def _require_complete(self) -> None:
        if not self._manifest["complete"]:
            done = f"{len(self._done)} of {self.num_shards}" if self._lock is not None else "not all"
            raise DatastoreError(f"datastore {self.path} is incomplete ({done} shards written); run featurize to "
                                 f"finish it")

    def verify(self) -> list[int]:
        """Shards whose file is missing or fails the manifest's checksum (empty list: intact)."""
        self._require_complete()
        bad = []
        for entry in self._manifest["shards"]:
            file = self.path / entry["file"]
            try:
                ok = file.stat().st_size == entry["bytes"] and sha256_file(file) == entry["sha256"]
            except FileNotFoundError:
                ok = False
            if not ok:
                bad.append(entry["start"] // self.shard_rows)
        self._verified = not bad
        return bad

    def _check_before_read(self, verify: bool) -> None:
        self._require_complete()
        if verify and not self._verified:
            bad = self.verify()
            if bad:
                head = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
                raise DatastoreError(f"datastore {self.path}: {len(bad)} shard(s) missing or failing their checksum "
                                     f"(shards {head}); rerun featurize with the same settings to recompute them")

    def read_shard(self, shard: int, *, verify: bool = True) -> np.ndarray:
        """One shard, memory-mapped read-only, [rows, dim] of the store's dtype (float16 for features)."""
        self._check_before_read(verify)
        start, stop = self.shard_range(shard)
        file = self._shard_file(shard)
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DatastoreError(f"cannot read {file}: {err}; rerun featurize to recompute it") from None
        if array.shape != (stop - start, self.dim) or array.dtype != self.dtype:
            raise DatastoreError(f"{file} holds {array.dtype} {array.shape}, expected {self.dtype} "
                                 f"({stop - start}, {self.dim}); rerun featurize to recompute it")
        return array

    def rows(self, *, verify: bool = True) -> ShardedRows:
        """All features as a lazily read, memory-mapped [N, dim] view (for pools larger than memory)."""
        self._check_before_read(verify)
        return ShardedRows([self.read_shard(s, verify=False) for s in range(self.num_shards)],
                           self.shard_rows, self.dim)

    def features(self, *, verify: bool = True) -> np.ndarray:
        """All features, [N, dim] float16: memory-mapped if there is one shard, else read into memory.

        Raises:
            DatastoreError: the store is incomplete, or a shard fails its checksum.
        """
        self._check_before_read(verify)
        if self.num_shards == 1:
            return self.read_shard(0, verify=False)
        out = np.empty((self.num_rows, self.dim), dtype=self.dtype)
        for s in range(self.num_shards):
            start, stop = self.shard_range(s)
            out[start:stop] = self.read_shard(s, verify=False)
        return out

    def __repr__(self) -> str:
        state = "complete" if self.is_complete else "incomplete"
        return f"FeatureStore({str(self.path)!r}, rows={self.num_rows}, dim={self.dim}, {state})"


# --------------------------------------------------------------------------- helpers


def _to_feature_dtype(features: np.ndarray, dtype: np.dtype = FEATURE_DTYPE) -> np.ndarray:
    if not np.issubdtype(features.dtype, np.floating):
        raise DatastoreError(f"features must be floating point, got {features.dtype}")
    with np.errstate(over="ignore"):
        rows = features.astype(dtype, copy=False)
    if not np.isfinite(rows).all():
        raise DatastoreError(f"features contain NaN or values beyond {dtype.name}'s range; features are expected "
                             "L2-normalised, check the gradients and the projection")
    return rows


