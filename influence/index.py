"""FAISS inner-product indexes over pool features, on a GPU when faiss can use one.

Kinds, by name (``INDEX_KINDS``):

- ``flat``: exact inner product (IndexFlatIP); holds N x d float32.
- ``ivf-flat``: inverted lists over k-means cells (IVF, inner product), uncompressed;
  approximate: recall depends on ``nprobe`` / ``nlist``. A first step towards compressed
  kinds (IVF-PQ) for pools far larger than memory, which slot in as new registry entries.

Features may be any [N, d] array-like that slices by rows (numpy array, memmap, a
datastore's `ShardedRows`); they are converted to float32 and added in chunks, so the
float16 -> float32 copy never exists whole.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from influence.errors import ConfigError, DataError, DatastoreError
from influence.io import write_bytes

log = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 256 << 20   # float32 rows converted and added at a time
TRAIN_BYTES = 1 << 30              # cap on the float32 sample that trains IVF cells (unless 39 per cell need more)
DEVICES = ("auto", "cpu", "gpu")


def _faiss():
    import faiss  # imported lazily: the rest of the package does not need it

    return faiss


def faiss_gpu_count() -> int:
    """GPUs faiss can use: 0 with a CPU-only faiss build or without a GPU."""
    faiss = _faiss()
    get = getattr(faiss, "get_num_gpus", None)
    if get is None or not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(get())
    except RuntimeError:  # a GPU build on a machine whose driver it cannot load
        return 0


def _use_gpu(device: str) -> bool:
    if device not in DEVICES:
        raise ConfigError(f"unknown index device {device!r}; choose one of {', '.join(DEVICES)}")
    gpus = faiss_gpu_count() if device != "cpu" else 0
    if device == "gpu" and gpus == 0:
        raise ConfigError("device='gpu' was asked, but faiss sees no GPU (a faiss-gpu build and a CUDA device are "
                          "needed: pip install 'influence[gpu]'); use device='cpu' or 'auto'")
    return gpus > 0


def _float32_rows(features: Any, start: int, stop: int) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(features[start:stop]), dtype=np.float32)


def _shape(features: Any) -> tuple[int, int]:
    shape = getattr(features, "shape", None)
    if shape is None or len(shape) != 2:
        raise DataError(f"features must be a 2-d [examples, dim] array, got shape {shape}")
    n, d = int(shape[0]), int(shape[1])
    if n == 0 or d == 0:
        raise DataError(f"cannot index an empty feature matrix (shape {n} x {d}); featurize the pool first")
    return n, d


def _add_in_chunks(index: Any, features: Any, n: int, chunk_rows: int) -> None:
    for start in range(0, n, chunk_rows):
        index.add(_float32_rows(features, start, min(start + chunk_rows, n)))


def _to_gpu(index: Any) -> Any:
    faiss = _faiss()
    resources = faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(resources, 0, index)
    gpu_index.influence_gpu_resources = resources  # keep the resources alive as long as the index
    return gpu_index


def _build_flat(features: Any, n: int, d: int, *, gpu: bool, chunk_rows: int) -> Any:
    faiss = _faiss()
    index = faiss.IndexFlatIP(d)
    if gpu:
        index = _to_gpu(index)
    _add_in_chunks(index, features, n, chunk_rows)
    return index


def default_nlist(n: int) -> int:
    """About 4 sqrt(N) cells, with at least 39 training points per cell (faiss's minimum)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def _build_ivf_flat(features: Any, n: int, d: int, *, gpu: bool, chunk_rows: int, nlist: int | None = None,
                    nprobe: int | None = None, seed: int = 0, train_rows: int | None = None) -> Any:
    faiss = _faiss()
    nlist = default_nlist(n) if nlist is None else int(nlist)
    if not 1 <= nlist <= n:
        raise ConfigError(f"nlist must be in [1, {n}] for {n:,} examples, got {nlist}")
    nprobe = min(nlist, max(1, nlist // 8)) if nprobe is None else int(nprobe)
    if not 1 <= nprobe <= nlist:
        raise ConfigError(f"nprobe must be in [1, nlist={nlist}], got {nprobe}")
    index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = int(seed)  # k-means initialisation, so a rebuild gives the same cells
    # a seeded sample of rows trains the cells; the whole pool need not fit in memory
    if train_rows is None:
        train_rows = max(39 * nlist, min(256 * nlist, TRAIN_BYTES // (4 * d)))
    train_rows = min(n, int(train_rows))
    sample = np.sort(np.random.default_rng(seed).choice(n, size=train_rows, replace=False))
    training = np.ascontiguousarray(np.asarray(features[sample]), dtype=np.float32)
    if gpu:
        index = _to_gpu(index)
    index.train(training)
    del training
    _add_in_chunks(index, features, n, chunk_rows)
    if gpu:
        index.nprobe = nprobe
    else:
        faiss.extract_index_ivf(index).nprobe = nprobe
    return index


INDEX_KINDS: dict[str, Callable[..., Any]] = {
    "flat": _build_flat,
    "ivf-flat": _build_ivf_flat,
}
EXACT_KINDS = frozenset({"flat"})
_BUILDER_ARGUMENTS = ("features", "n", "d", "gpu", "chunk_rows")


def build_index(features: Any, kind: str = "flat", *, device: str = "auto", chunk_rows: int | None = None,
                **options: Any) -> Any:
    """An inner-product FAISS index over `features` [N, d] (float16 or float32 rows).

    Args:
        features: pool features; any row-sliceable [N, d] array (memmaps welcome).
        kind: a key of `INDEX_KINDS` ("flat" is exact; "ivf-flat" is approximate).
        device: "auto" (a GPU when faiss has GPU support and sees one), "cpu" or "gpu".
        chunk_rows: rows converted to float32 and added at a time (default: 256 MiB of them).
        **options: per kind; for "ivf-flat": nlist, nprobe, seed, train_rows.

    Returns:
        A faiss index; ``index.ntotal == N``, ids are row numbers.

    Raises:
        ConfigError: unknown kind or device, a GPU asked for but absent, or bad options.
        DataError: features are not a non-empty 2-d array.
    """
    if kind not in INDEX_KINDS:
        raise ConfigError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    builder = INDEX_KINDS[kind]
    known = [p for p in inspect.signature(builder).parameters if p not in _BUILDER_ARGUMENTS]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"index kind {kind!r} takes no option {', '.join(unknown)}; its options: "
                          f"{', '.join(known) or 'none'}")
    n, d = _shape(features)
    chunk_rows = max(1, DEFAULT_CHUNK_BYTES // (4 * d)) if chunk_rows is None else int(chunk_rows)
    if chunk_rows <= 0:
        raise ConfigError(f"chunk_rows must be positive, got {chunk_rows}")
    gpu = _use_gpu(device)
    log.info("building a %s index over %s x %d features on %s", kind, f"{n:,}", d, "GPU" if gpu else "CPU")
    return builder(features, n, d, gpu=gpu, chunk_rows=chunk_rows, **options)


def search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` largest inner products of each query with the indexed rows.

    k above the number of indexed rows is reduced to it. An approximate index may find
    fewer than k rows for a query: those slots have id -1 and score -inf.

    Returns:
        (scores float32 [q, k], ids int64 [q, k]), best first in each row.

    Raises:
        DataError: queries are not [q, index.d], or k is not positive.
    """
    queries = np.asarray(queries)
    if queries.ndim == 1:
        queries = queries[None, :]
    if queries.ndim != 2 or queries.shape[1] != index.d:
        raise DataError(f"queries must be [q, {index.d}] to search this index, got shape {queries.shape}")
    if k <= 0:
        raise DataError(f"k must be positive, got {k}")
    k = min(int(k), int(index.ntotal))
    if k == 0 or len(queries) == 0:
        return np.empty((len(queries), k), np.float32), np.empty((len(queries), k), np.int64)
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    return scores, ids.astype(np.int64)


def describe_index(index: Any) -> dict[str, Any]:
    """Settings of an index worth recording in a selection's manifest; "kind" is "other" if not ours."""
    faiss = _faiss()
    name = type(index).__name__
    out: dict[str, Any] = {"class": name, "dim": int(index.d), "ntotal": int(index.ntotal), "gpu": "Gpu" in name}
    if name in ("IndexFlatIP", "GpuIndexFlatIP"):
        out["kind"] = "flat"
    elif name in ("IndexIVFFlat", "GpuIndexIVFFlat") and index.metric_type == faiss.METRIC_INNER_PRODUCT:
        out["kind"] = "ivf-flat"
        nlist = getattr(index, "nlist", None)
        out["nlist"] = int(nlist if nlist is not None else index.getNumLists())
        out["nprobe"] = int(index.nprobe)
    else:
        out["kind"] = "other"
    return out


def save_index(index: Any, path: str | os.PathLike) -> Path:
    """Write `index` (a GPU index is copied to the CPU first) atomically to `path`.

    Building an index over a large pool costs more than searching it, and one pool index
    serves every target: the orchestration keeps it beside the datastore it was built from.
    """
    faiss = _faiss()
    if "Gpu" in type(index).__name__:
        index = faiss.index_gpu_to_cpu(index)
    return write_bytes(path, faiss.serialize_index(index).tobytes())


def load_index(path: str | os.PathLike, *, device: str = "auto") -> Any:
    """Read an index written by `save_index`, onto a GPU when `device` allows.

    Raises:
        DatastoreError: the file is missing or is not a faiss index.
    """
    faiss = _faiss()
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
        index = faiss.deserialize_index(data)
    except (OSError, RuntimeError) as err:
        raise DatastoreError(f"cannot read the index {path} ({str(err).strip().splitlines()[0][:200]}); delete it "
                             f"to rebuild it") from None
    return _to_gpu(index) if _use_gpu(device) else index
