"""Index scale: build time, search time, peak memory and recall of each FAISS index kind on a large pool.

Synthetic, L2-normalised float16 features (a mixture of random clusters, as gradient features of
similar examples cluster) are written once as a memory-mapped .npy under --workdir; by default
1,000,000 pool vectors at d=1024 (2 GB) against 300 target vectors drawn from the same mixture.
Then each measurement runs in its own subprocess, so that its peak memory (ru_maxrss) is its own:

- exact: chunked numpy matmul over the memmap, keeping a running top-k per target (the truth);
- one per index kind (flat, ivf-flat, ivf-pq by default, with `influence.index`'s defaults for
  N and d): build from the memmap, search the targets for the top k, and also search k x
  --rescore hits and rescore those exactly from the memmap (what `less_top_k` does with a margin).

Printed per kind: its settings, build time, search time, peak resident memory (which counts the
pages of the memmap the process touched, up to the file's size: the kernel can drop those), the
index's approximate size in memory, recall of the top k against exact search (mean over targets),
the same after exact rescoring, and the share of the exact top-k score mass the answer keeps.

    python benchmarks/index_scale.py                                  # 1M x 1024, 300 targets, k=1000
    python benchmarks/index_scale.py --pool-size 100000 --kinds flat ivf-pq --workdir /tmp/idx
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------- data
def _mixture_rows(rng: np.random.Generator, centres: np.ndarray | None, rows: int, d: int,
                  spread: float) -> np.ndarray:
    """Unit rows: a random centre plus Gaussian noise of norm about `spread` (iid Gaussian without centres)."""
    noise = rng.standard_normal((rows, d), dtype=np.float32)
    if centres is None:
        x = noise
    else:
        x = centres[rng.integers(0, len(centres), rows)] + noise * np.float32(spread / np.sqrt(d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_data(args: argparse.Namespace) -> tuple[Path, Path]:
    """Write (or reuse) the pool and target .npy files; the name records everything that decides them."""
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    stem = f"index_scale_n{args.pool_size}_d{args.dim}_c{args.clusters}_s{args.spread:g}_seed{args.seed}"
    pool_path, target_path = workdir / f"{stem}_pool.npy", workdir / f"{stem}_targets{args.targets}.npy"
    rng = np.random.default_rng(args.seed)
    centres = None
    if args.clusters > 0:
        centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    if not pool_path.exists():
        started = time.perf_counter()
        partial = pool_path.with_suffix(".partial.npy")
        pool = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(args.pool_size, args.dim))
        pool_rng = np.random.default_rng([args.seed, 1])
        for start in range(0, args.pool_size, args.chunk_rows):
            stop = min(start + args.chunk_rows, args.pool_size)
            pool[start:stop] = _mixture_rows(pool_rng, centres, stop - start, args.dim, args.spread)
        pool.flush()
        del pool
        os.replace(partial, pool_path)
        print(f"wrote {pool_path} ({pool_path.stat().st_size / 2**30:.2f} GiB) in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    if not target_path.exists():
        targets = _mixture_rows(np.random.default_rng([args.seed, 2]), centres, args.targets, args.dim, args.spread)
        np.save(target_path, targets.astype(np.float16))
    return pool_path, target_path


# ---------------------------------------------------------------------------------------- workers
def exact_top_k(pool: np.ndarray, queries: np.ndarray, k: int, chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products by a running merge over row chunks of a (memmapped) pool."""
    q = len(queries)
    best_scores = np.full((q, 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((q, 0), dtype=np.int64)
    for start in range(0, len(pool), chunk_rows):
        rows = np.asarray(pool[start:start + chunk_rows], dtype=np.float32)
        scores = np.concatenate([best_scores, queries @ rows.T], axis=1)
        ids = np.concatenate([best_ids, np.broadcast_to(np.arange(start, start + len(rows)), (q, len(rows)))], axis=1)
        if scores.shape[1] > k:
            keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            scores, ids = np.take_along_axis(scores, keep, axis=1), np.take_along_axis(ids, keep, axis=1)
        best_scores, best_ids = scores, ids
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_scores, order, axis=1), np.take_along_axis(best_ids, order, axis=1)


def rescore(pool: np.ndarray, queries: np.ndarray, hits: np.ndarray, k: int) -> np.ndarray:
    """The k best of each query's hits by exact inner product, rows read from the (memmapped) pool."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for i, (query, ids) in enumerate(zip(queries, hits)):
        ids = np.unique(ids[ids >= 0])
        scores = np.asarray(pool[ids], dtype=np.float32) @ query
        out[i] = ids[np.argsort(-scores, kind="stable")[:k]] if len(ids) >= k else np.pad(
            ids[np.argsort(-scores, kind="stable")], (0, k - len(ids)), constant_values=-1)
    return out


def index_bytes(index: Any, info: dict[str, Any]) -> int:
    """Approximate resident size of a CPU index: its codes (and ids, and the cells' centroids for IVF)."""
    n, d = int(index.ntotal), int(index.d)
    if info["kind"] == "flat":
        return n * d * 4
    return n * (int(index.code_size) + 8) + info["nlist"] * d * 4


def worker(args: argparse.Namespace) -> dict[str, Any]:
    pool = np.load(args.pool, mmap_mode="r")
    queries = np.load(args.targets).astype(np.float32)
    result: dict[str, Any] = {"kind": args.worker}
    if args.worker == "exact":
        started = time.perf_counter()
        scores, ids = exact_top_k(pool, queries, args.k, args.chunk_rows)
        result.update(build_s=0.0, search_s=time.perf_counter() - started, settings="numpy matmul, chunked")
    else:
        from influence.index import build_index, describe_index, search

        started = time.perf_counter()
        index = build_index(pool, args.worker, device=args.device)
        result["build_s"] = time.perf_counter() - started
        info = describe_index(index)
        result["settings"] = ", ".join(f"{key}={info[key]}" for key in ("nlist", "nprobe", "m", "nbits") if key in info)
        result["gpu"] = info["gpu"]
        result["index_bytes"] = index_bytes(index, info) if not info["gpu"] else None
        started = time.perf_counter()
        scores, ids = search(index, queries, args.k)
        result["search_s"] = time.perf_counter() - started
        if args.worker != "flat" and args.rescore > 1:
            started = time.perf_counter()
            _, wide = search(index, queries, args.k * args.rescore)
            rescored = rescore(pool, queries, wide, args.k)
            result["rescore_s"] = time.perf_counter() - started
            np.save(args.out_prefix + "_rescored_ids.npy", rescored)
    np.save(args.out_prefix + "_ids.npy", ids)
    np.save(args.out_prefix + "_scores.npy", scores)
    result["peak_mb"] = peak_mb()
    return result


# ------------------------------------------------------------------------------------------ report
def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a[a >= 0], t)) / len(t) for a, t in zip(found, truth)]))


def score_kept(pool: np.ndarray, queries: np.ndarray, found: np.ndarray, truth_scores: np.ndarray) -> float:
    """Sum of the exact scores of what was found over the sum of the exact top-k scores (mean over queries)."""
    kept = []
    for query, ids, best in zip(queries, found, truth_scores):
        ids = np.sort(ids[ids >= 0])
        kept.append(float((np.asarray(pool[ids], dtype=np.float32) @ query).sum()) / float(best.sum()))
    return float(np.mean(kept))


def run_worker(args: argparse.Namespace, kind: str, pool_path: Path, target_path: Path) -> dict[str, Any]:
    prefix = str(Path(args.workdir) / f"index_scale_{kind}")
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--pool", str(pool_path),
               "--targets", str(target_path), "--k", str(args.k), "--rescore", str(args.rescore),
               "--chunk-rows", str(args.chunk_rows), "--device", args.device, "--out-prefix", prefix]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"the {kind} worker failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    result["ids"] = np.load(prefix + "_ids.npy")
    result["scores"] = np.load(prefix + "_scores.npy")
    if Path(prefix + "_rescored_ids.npy").exists() and "rescore_s" in result:
        result["rescored_ids"] = np.load(prefix + "_rescored_ids.npy")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--pool-size", type=int, default=1_000_000, help="pool vectors")
    parser.add_argument("--dim", type=int, default=1024, help="feature dimension")
    parser.add_argument("--targets", default=300, help="target (query) vectors")
    parser.add_argument("--k", type=int, default=1000, help="top k per target")
    parser.add_argument("--clusters", type=int, default=1000,
                        help="mixture components (0: iid Gaussian rows, no structure: the hardest case for IVF/PQ)")
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm around a unit centre")
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf-flat", "ivf-pq"], help="index kinds to measure")
    parser.add_argument("--rescore", type=int, default=4,
                        help="also search k x this many hits and keep the k best by exact score (1: off)")
    parser.add_argument("--device", default="auto", help="auto, cpu or gpu (for faiss)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-rows", type=int, default=65536,
                        help="rows per chunk when writing and for exact search")
    parser.add_argument("--workdir", default="/tmp", help="where the pool .npy (2 bytes x N x d) and results go")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--pool", help=argparse.SUPPRESS)
    parser.add_argument("--out-prefix", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.worker:
        args.targets = int(args.targets)

    if args.worker:  # here --targets is the targets' .npy path
        print(json.dumps(worker(args)))
        return
    started = time.perf_counter()
    pool_path, target_path = make_data(args)
    pool = np.load(pool_path, mmap_mode="r")
    queries = np.load(target_path).astype(np.float32)
    print(f"pool {pool.shape[0]:,} x {pool.shape[1]} float16 ({pool_path}), {len(queries)} targets, k={args.k}, "
          f"clusters={args.clusters}, spread={args.spread:g}; machine: {os.cpu_count()} CPUs, {platform.platform()}",
          flush=True)
    truth = run_worker(args, "exact", pool_path, target_path)
    from_exact, truth_scores = truth["ids"], truth["scores"]
    rows = [truth]
    print(f"exact: {truth['search_s']:.1f} s, peak {truth['peak_mb']:.0f} MB", flush=True)
    for kind in args.kinds:
        result = run_worker(args, kind, pool_path, target_path)
        result["recall"] = recall(result["ids"], from_exact)
        result["kept"] = score_kept(pool, queries, result["ids"], truth_scores)
        if "rescored_ids" in result:
            result["rescored_recall"] = recall(result["rescored_ids"], from_exact)
        rows.append(result)
        print(f"{kind}: build {result['build_s']:.1f} s, search {result['search_s']:.2f} s, recall "
              f"{result['recall']:.3f}, peak {result['peak_mb']:.0f} MB", flush=True)

    def fmt(value: Any, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    print()
    print(f"| kind | settings | build (s) | search (s) | peak RSS (GB) | index size (GB) | recall@{args.k} | "
          f"recall@{args.k} after rescoring {args.rescore}k hits | score kept |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        exact = row["kind"] == "exact"
        index_gb = None if exact or row.get("index_bytes") is None else row["index_bytes"] / 1e9
        print(f"| {row['kind']} | {row['settings']} | {fmt(None if exact else row['build_s'], '.1f')} | "
              f"{row['search_s']:.2f} | {row['peak_mb'] / 1024:.2f} | {fmt(index_gb, '.2f')} | "
              f"{'1 (truth)' if exact else format(row['recall'], '.3f')} | "
              f"{fmt(row.get('rescored_recall'), '.3f')} | {'1' if exact else format(row['kept'], '.4f')} |")
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s; faiss {_faiss_version()}, numpy {np.__version__}")


def _faiss_version() -> str:
    import faiss

    return faiss.__version__


if __name__ == "__main__":
    main()
