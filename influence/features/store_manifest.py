"""A feature store's manifest: its format, how a new one is made, how one is read and checked,
and what a rerun is told when its store was made differently.

The manifest is the store's identity (see `influence.features.datastore` for the layout);
identities are compared with the package's one settings diff (`influence.provenance`),
so a refusal always names the field that differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from influence.constants import DATASTORE_MANIFEST
from influence.errors import DatastoreError
from influence.io import sha256_json
from influence.provenance import envelope, read_envelope, settings_difference

STORE_ARTIFACT = "influence.feature-store"
STORE_FORMAT = 1
FEATURE_DTYPE = np.dtype("float16")
STORE_DTYPES = ("float16", "float32")  # float16 for projected features, float32 for values needing its precision


def canonical(obj: Any, what: str) -> Any:
    """`obj` as it reads back from JSON (tuples become lists), or a DatastoreError."""
    try:
        return json.loads(json.dumps(obj, allow_nan=False, sort_keys=True))
    except (TypeError, ValueError) as err:
        raise DatastoreError(f"the {what} must be plain JSON (str, int, float, bool, None, list, dict): {err}") from None


def new_manifest(identity: Mapping[str, Any], example_ids: Sequence[str], dim: int, shard_rows: int,
                 dtype: str = FEATURE_DTYPE.name) -> dict[str, Any]:
    """A new store's manifest (not yet complete), checking the arguments.

    Raises:
        DatastoreError: an empty identity or pool, ids that are not strings, a bad dim, shard size or dtype.
    """
    if not isinstance(identity, Mapping) or not identity:
        raise DatastoreError("a datastore needs a non-empty identity dict (model, LoRA, checkpoint, projector, ...)")
    identity = canonical(dict(identity), "datastore identity")
    ids = list(example_ids)
    if not ids:
        raise DatastoreError("a datastore needs at least one example id; the pool is empty")
    if not all(isinstance(i, str) and i for i in ids):
        raise DatastoreError("example ids must be non-empty strings")
    for name, value in (("dim", dim), ("shard_rows", shard_rows)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise DatastoreError(f"{name} must be a positive integer, got {value!r}")
    dim, shard_rows = int(dim), int(shard_rows)
    if dtype not in STORE_DTYPES:
        raise DatastoreError(f"dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
    return {
        **envelope(STORE_ARTIFACT, STORE_FORMAT, dated=False),
        "identity_sha256": sha256_json(identity),
        "identity": identity,
        "dim": dim,
        "dtype": dtype,
        "num_rows": len(ids),
        "shard_rows": shard_rows,
        "num_shards": -(-len(ids) // shard_rows),
        "example_ids_sha256": sha256_json(ids),
        "complete": False,
        "shards": None,
        "example_ids": ids,
    }


_MANIFEST_TYPES = {"identity": dict, "identity_sha256": str, "dim": int, "dtype": str, "num_rows": int,
                   "shard_rows": int, "num_shards": int, "example_ids_sha256": str, "complete": bool,
                   "example_ids": list}


def read_manifest(path: Path) -> dict[str, Any]:
    """The store's manifest, checked field by field; DatastoreError with the problem otherwise."""
    file = path / DATASTORE_MANIFEST
    fix = f"delete {path} and featurize again"
    try:
        manifest = read_envelope(file, STORE_ARTIFACT, STORE_FORMAT, error=DatastoreError, fix=fix)
    except FileNotFoundError:
        raise DatastoreError(f"{file} is unreadable (FileNotFoundError); {fix}") from None
    for key, kind in _MANIFEST_TYPES.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DatastoreError(f"{file}: field {key!r} should be {kind.__name__}, got {type(value).__name__}; {fix}")
    ids = manifest["example_ids"]
    if (manifest["dim"] <= 0 or manifest["shard_rows"] <= 0 or manifest["num_rows"] != len(ids)
            or manifest["num_shards"] != -(-len(ids) // manifest["shard_rows"]) or not ids
            or manifest["dtype"] not in STORE_DTYPES or not all(isinstance(i, str) for i in ids)
            or sha256_json(ids) != manifest["example_ids_sha256"]
            or sha256_json(manifest["identity"]) != manifest["identity_sha256"]):
        raise DatastoreError(f"{file} is inconsistent (sizes, dtype or hashes disagree); {fix}")
    shards = manifest.get("shards")
    if manifest["complete"]:
        ok = isinstance(shards, list) and len(shards) == manifest["num_shards"] and all(
            isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("sha256"), str)
            and isinstance(e.get("bytes"), int) and isinstance(e.get("start"), int) for e in shards)
        if not ok:
            raise DatastoreError(f"{file} is marked complete but its shard list is malformed; {fix}")
    return manifest


# --------------------------------------------------------------------------- differences


def identity_difference(path: Path, stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> str | None:
    """What to tell a run whose identity differs from the store's (naming the first field), or None."""
    diff = settings_difference(stored, canonical(dict(wanted), "datastore identity"))
    if diff is None:
        return None
    field, was, now = diff
    return (f"datastore {path} was made with {field} = {json.dumps(was)}, but this run has {field} = "
            f"{json.dumps(now)}; use another --name for these features, or pass --overwrite to replace them")


def ids_difference(path: Path, stored: list[str], wanted: list[str]) -> str | None:
    """What to tell a run whose pool (ids, in order) is not the store's, or None."""
    if stored == wanted:
        return None
    for i, (a, b) in enumerate(zip(stored, wanted)):
        if a != b:
            where = f"example {i} is {a!r} in the datastore but {b!r} in the pool"
            break
    else:
        i = min(len(stored), len(wanted))
        where = f"the first {i:,} ids agree"
    return (f"the pool changed since datastore {path} was featurized ({len(stored):,} examples there, "
            f"{len(wanted):,} now; {where}); pass --overwrite to featurize the pool again, or use another --name")


def manifest_difference(path: Path, stored: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """The first way a stored manifest differs from the one a run wants (identity, shape, pool), or None."""
    problem = identity_difference(path, stored["identity"], wanted["identity"])
    if problem is not None:
        return problem
    for key in ("dim", "shard_rows", "dtype"):
        if stored[key] != wanted[key]:
            return (f"datastore {path} was made with {key} = {stored[key]}, but this run has {key} = {wanted[key]}; "
                    f"use another --name, or pass --overwrite to replace it")
    return ids_difference(path, stored["example_ids"], wanted["example_ids"])
