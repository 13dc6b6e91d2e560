"""FAISS inner-product indexes over pool features, on a GPU when faiss can use one.

Kinds, by name (``INDEX_KINDS``):

- ``flat``: exact inner product (IndexFlatIP); holds N x d float32.
- ``ivf-flat``: inverted lists over k-means cells (IVF, inner product), uncompressed;
  approximate: recall depends on ``nprobe`` / ``nlist``.
- ``ivf-pq``: the same cells, each row stored as a product-quantised code of ``m`` bytes
  (``nbits=8``) instead of d float32s, for pools far larger than memory: 1M rows at d=1024
  take about 70 MB instead of 4 GB. Approximate twice over (cells and codes): rescore its
  hits exactly from the features, as `influence.scoring.less_top_k` does.

Defaults follow from N and d (`default_nlist`, `default_nprobe`, `default_pq_m`); the IVF
kinds train on a seeded sample of rows, so a rebuild gives the same index.

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
from influence.ranking import check_k

log = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 256 << 20   # float32 rows converted and added at a time
TRAIN_BYTES = 1 << 30              # cap on the float32 sample that trains IVF cells (unless 39 per cell need more)
DEVICES = ("auto", "cpu", "gpu")
PQ_DIMS_PER_CODE_BYTE = 16         # default ivf-pq code: one byte per 16 dimensions (d=1024 -> 64 bytes)
# What faiss's GpuIndexIVFPQ accepts (nbits=8): code sizes in bytes (above 48 only with float16 lookup
# tables) and dimensions per sub-quantizer (without precomputed tables).
GPU_PQ_CODE_BYTES = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
GPU_PQ_SUB_DIMS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32)
GPU_PQ_FLOAT32_TABLE_MAX = 48


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


def _to_gpu(index: Any, *, float16_lookup: bool = False) -> Any:
    faiss = _faiss()
    resources = faiss.StandardGpuResources()
    if float16_lookup:  # IVF-PQ with more than 48 code bytes: its lookup tables only fit GPU shared memory in float16
        options = faiss.GpuClonerOptions()
        options.useFloat16 = True
        gpu_index = faiss.index_cpu_to_gpu(resources, 0, index, options)
    else:
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


def default_nprobe(nlist: int) -> int:
    """Cells searched per query: an eighth of them, favouring recall (a search is cheap next to featurizing)."""
    return min(nlist, max(1, nlist // 8))


def _gpu_supports_pq(d: int, m: int, nbits: int) -> bool:
    return nbits == 8 and m in GPU_PQ_CODE_BYTES and d % m == 0 and d // m in GPU_PQ_SUB_DIMS


def default_pq_m(d: int, *, gpu: bool = False) -> int:
    """Bytes per ivf-pq code (sub-quantizers at 8 bits): the largest divisor of d up to d / 16.

    With ``gpu``, the largest such size faiss's GpuIndexIVFPQ supports, if any (d=1024: 64);
    above d=3072 there is none and the index is built on the CPU.
    """
    target = max(1, d // PQ_DIMS_PER_CODE_BYTE)
    divisors = [m for m in range(1, target + 1) if d % m == 0]
    on_gpu = [m for m in divisors if _gpu_supports_pq(d, m, 8)]
    return max(on_gpu) if gpu and on_gpu else max(divisors)


def default_pq_nlist(n: int, d: int) -> int:
    """`default_nlist`, but no more cells than a TRAIN_BYTES float32 sample trains at 39 rows each.

    ivf-pq is for pools far larger than memory, whose rows may be long (LESS: 4 checkpoints x
    8192 dims), so the training sample, not 4 sqrt(N), bounds the cells there.
    """
    return max(1, min(default_nlist(n), TRAIN_BYTES // (4 * d) // 39))


def _ivf_settings(n: int, nlist: int | None, nprobe: int | None, *, default: int | None = None) -> tuple[int, int]:
    nlist = (default or default_nlist(n)) if nlist is None else int(nlist)
    if not 1 <= nlist <= n:
        raise ConfigError(f"nlist must be in [1, {n}] for {n:,} examples, got {nlist}")
    nprobe = default_nprobe(nlist) if nprobe is None else int(nprobe)
    if not 1 <= nprobe <= nlist:
        raise ConfigError(f"nprobe must be in [1, nlist={nlist}], got {nprobe}")
    return nlist, nprobe


def _training_rows(features: Any, n: int, d: int, rows: int, seed: int) -> np.ndarray:
    """A seeded sample of `rows` rows as float32, read in row order: the pool need not fit in memory."""
    sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, rows), replace=False))
    return np.ascontiguousarray(np.asarray(features[sample]), dtype=np.float32)


def _train_and_add(index: Any, features: Any, n: int, d: int, *, gpu: bool, chunk_rows: int, nprobe: int,
                   seed: int, train_rows: int, float16_lookup: bool = False) -> Any:
    faiss = _faiss()
    nlist = faiss.extract_index_ivf(index).nlist
    if train_rows <= 0 or min(n, train_rows) < nlist:
        raise ConfigError(f"train_rows must be at least nlist={nlist} (and 39 per cell is better), got {train_rows}")
    faiss.extract_index_ivf(index).cp.seed = int(seed)  # k-means initialisation, so a rebuild gives the same cells
    if gpu:
        index = _to_gpu(index, float16_lookup=float16_lookup)
    training = _training_rows(features, n, d, train_rows, seed)
    index.train(training)
    del training
    _add_in_chunks(index, features, n, chunk_rows)
    if gpu:
        index.nprobe = nprobe
    else:
        faiss.extract_index_ivf(index).nprobe = nprobe
    return index


def _default_train_rows(nlist: int, d: int) -> int:
    return max(39 * nlist, min(256 * nlist, TRAIN_BYTES // (4 * d)))


def _build_ivf_flat(features: Any, n: int, d: int, *, gpu: bool, chunk_rows: int, nlist: int | None = None,
                    nprobe: int | None = None, seed: int = 0, train_rows: int | None = None) -> Any:
    faiss = _faiss()
    nlist, nprobe = _ivf_settings(n, nlist, nprobe)
    train_rows = _default_train_rows(nlist, d) if train_rows is None else int(train_rows)
    index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    return _train_and_add(index, features, n, d, gpu=gpu, chunk_rows=chunk_rows, nprobe=nprobe, seed=seed,
                          train_rows=train_rows)


def _build_ivf_pq(features: Any, n: int, d: int, *, gpu: bool, chunk_rows: int, nlist: int | None = None,
                  nprobe: int | None = None, m: int | None = None, nbits: int | None = None, seed: int = 0,
                  train_rows: int | None = None) -> Any:
    faiss = _faiss()
    nlist, nprobe = _ivf_settings(n, nlist, nprobe, default=default_pq_nlist(n, d))
    m = default_pq_m(d, gpu=gpu) if m is None else int(m)
    if not 1 <= m <= d or d % m:
        raise ConfigError(f"m (bytes per ivf-pq code) must divide the dimension {d}, got {m}; the default for "
                          f"d={d} is {default_pq_m(d, gpu=gpu)}")
    if nbits is None:  # 256 centroids per sub-quantizer want 39 x 256 training rows; tiny pools get fewer
        nbits = 8 if gpu else max(1, min(8, int(math.log2(max(2, n // 39)))))
    nbits = int(nbits)
    if not 1 <= nbits <= 16:
        raise ConfigError(f"nbits must be in [1, 16], got {nbits} (8 is usual)")
    if gpu and not _gpu_supports_pq(d, m, nbits):
        log.warning("building the ivf-pq index on the CPU: faiss's GPU IVF-PQ needs nbits=8, m (code bytes) in %s "
                    "and d/m in %s, and d=%d, m=%d, nbits=%d is not; describe_index records gpu=False",
                    GPU_PQ_CODE_BYTES, GPU_PQ_SUB_DIMS, d, m, nbits)
        gpu = False
    if train_rows is None:
        train_rows = max(_default_train_rows(nlist, d), 39 * 2 ** nbits)
    train_rows = min(n, int(train_rows))
    if train_rows < max(nlist, 2 ** nbits):
        raise ConfigError(f"ivf-pq needs at least max(nlist, 2**nbits) = {max(nlist, 2 ** nbits)} training rows, "
                          f"got {train_rows}; lower nlist or nbits, or use the flat kind for a pool this small")
    index = faiss.index_factory(d, f"IVF{nlist},PQ{m}x{nbits}", faiss.METRIC_INNER_PRODUCT)
    index.pq.cp.seed = int(seed)  # sub-quantizer k-means too
    index.do_polysemous_training = False  # Hamming filtering is unused (polysemous_ht=0) and costs minutes
    return _train_and_add(index, features, n, d, gpu=gpu, chunk_rows=chunk_rows, nprobe=nprobe, seed=seed,
                          train_rows=train_rows, float16_lookup=gpu and m > GPU_PQ_FLOAT32_TABLE_MAX)


INDEX_KINDS: dict[str, Callable[..., Any]] = {
    "flat": _build_flat,
    "ivf-flat": _build_ivf_flat,
    "ivf-pq": _build_ivf_pq,
}
EXACT_KINDS = frozenset({"flat"})
_BUILDER_ARGUMENTS = ("features", "n", "d", "gpu", "chunk_rows")


def build_index(features: Any, kind: str = "flat", *, device: str = "auto", chunk_rows: int | None = None,
                **options: Any) -> Any:
    """An inner-product FAISS index over `features` [N, d] (float16 or float32 rows).

    Args:
        features: pool features; any row-sliceable [N, d] array (memmaps welcome).
        kind: a key of `INDEX_KINDS` ("flat" is exact; "ivf-flat" and "ivf-pq" are approximate).
        device: "auto" (a GPU when faiss has GPU support and sees one), "cpu" or "gpu".
        chunk_rows: rows converted to float32 and added at a time (default: 256 MiB of them).
        **options: per kind; for "ivf-flat": nlist, nprobe, seed, train_rows; for "ivf-pq" also m (bytes
            per code; must divide d) and nbits (bits per sub-quantizer, 8 unless the pool is tiny).

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
    k = min(check_k(k, error=DataError), int(index.ntotal))
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
    elif name in ("IndexIVFPQ", "GpuIndexIVFPQ") and index.metric_type == faiss.METRIC_INNER_PRODUCT:
        out["kind"] = "ivf-pq"
        nlist = getattr(index, "nlist", None)
        out["nlist"] = int(nlist if nlist is not None else index.getNumLists())
        out["nprobe"] = int(index.nprobe)
        pq = getattr(index, "pq", None)
        out["m"] = int(pq.M if pq is not None else index.getNumSubQuantizers())
        out["nbits"] = int(pq.nbits if pq is not None else index.getBitsPerCode())
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
