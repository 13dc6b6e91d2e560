"""Selection algorithm speed and memory: top-k, round-robin and uot on random [pool, target] similarities.

Each run is one `choose` call of an algorithm from `influence.algorithms` on a float32 matrix of
cosine-like similarities (uniform in [-1, 1], seed 0), with the aggregated score top-k ranks; the
matrix itself is made before timing. Printed per size and algorithm: seconds (median of the
repeats) and the peak of the memory numpy allocates during the call (tracemalloc), beside the
matrix's own size. POT is imported before timing.

    python benchmarks/algorithm_speed.py                                  # 5k, 50k and 200k x 300, k=1000
    python benchmarks/algorithm_speed.py --pools 5000 --targets 300 --repeats 1 --algorithms round-robin
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from influence.algorithms import TARGET, Similarities, make_algorithm  # noqa: E402  (after the path)


def measure(name: str, values: np.ndarray, k: int, repeats: int) -> tuple[float, int]:
    if name == "uot":
        import ot.unbalanced  # noqa: F401  imported before timing: loading POT (and torch) is not the algorithm
    sims = Similarities(values, TARGET, tuple(f"t{j}" for j in range(values.shape[1])),
                        {"all": list(range(values.shape[1]))})
    scores = sims.aggregate()
    ids = [f"{i:08d}" for i in range(values.shape[0])]
    algorithm = make_algorithm(name)
    seconds, peak = [], 0
    for _ in range(repeats):
        tracemalloc.start()
        start = time.perf_counter()
        algorithm.choose(scores, ids, k, sims)
        seconds.append(time.perf_counter() - start)
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return statistics.median(seconds), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", default="5000,50000,200000", help="pool sizes, comma-separated")
    parser.add_argument("--targets", type=int, default=300)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--algorithms", default="top-k,round-robin,uot")
    parser.add_argument("--uot-largest", type=int, default=50_000,
                        help="uot runs on pools up to this size (its dense float64 transport is slow past it)")
    args = parser.parse_args()
    names = args.algorithms.split(",")
    print("| pool x targets | matrix MB | algorithm | seconds | peak MB during the call |")
    print("|---|---|---|---|---|")
    for n in (int(p) for p in args.pools.split(",")):
        values = np.random.default_rng(0).uniform(-1, 1, size=(n, args.targets)).astype(np.float32)
        for name in names:
            if name == "uot" and n > args.uot_largest:
                continue
            seconds, peak = measure(name, values, args.k, args.repeats)
            print(f"| {n:,} x {args.targets} | {values.nbytes / 1e6:,.0f} | {name} | {seconds:.2f} | "
                  f"{peak / 1e6:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
