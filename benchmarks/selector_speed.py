"""Selector speed: seconds per selector, end to end, on the bundled Alpaca sample against BBH.

Each timed run is one `influence.selection.select` call, as `influence select` makes it:
the contamination guard (BBH's held-out n-grams are built once per process, in the warm-up;
the pool is scanned every run), the selector's scoring and the shared top-k. Every selector
runs once untimed first (imports, models loaded into caches, files in the page cache), then
the selectors are interleaved repetition by repetition, so that a change of machine load
hits all of them alike. Each run works in a fresh temporary directory, so selectors that
keep work on disk under a relative path (LESS's `indexes/`) start from nothing every time.
Printed: median, min and max seconds, examples/s (pool size / median), and the guard's share.

    python benchmarks/selector_speed.py                                   # every registered selector but less, rds, ifd
    python benchmarks/selector_speed.py --selectors bm25,dsir,random --repeats 5
    python benchmarks/selector_speed.py --examples 200 --repeats 1        # a smoke test

`less`, `rds` and `ifd` are left out unless named: on CPU one run of `less` warms up a model
and featurizes the pool, and `rds` and `ifd` run the model forward over every example (one
and two passes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("INFLUENCE_OFFLINE", "1")  # the bundled 5,000-example sample, never the hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SLOW_BY_DEFAULT = ("less", "rds", "ifd")


@contextlib.contextmanager
def fresh_directory() -> Iterator[Path]:
    """Run inside a new temporary directory, removed afterwards."""
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="selector-speed-") as path:
        os.chdir(path)
        try:
            yield Path(path)
        finally:
            os.chdir(here)


def run_once(name: str, pool: Any, target: Any, k: int, seed: int) -> dict[str, float]:
    from influence.selection import select
    from influence.selectors import make_selector

    with fresh_directory():
        start = time.perf_counter()
        selection = select(pool, k, make_selector(name), target=target, seed=seed)
        seconds = time.perf_counter() - start
    guard = selection.contamination.seconds if selection.contamination is not None else 0.0
    return {"seconds": seconds, "guard_seconds": guard}


def main() -> None:
    from influence.selectors import SELECTORS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--selectors", default=None,
                        help=f"Comma-separated selectors [default: every registered one but {', '.join(SLOW_BY_DEFAULT)}]")
    parser.add_argument("--target", default="bbh", help="Registered target (default: bbh).")
    parser.add_argument("--examples", type=int, default=None, help="Use only the first N pool examples.")
    parser.add_argument("--k", type=int, default=1000, help="Examples selected (at most the pool).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs per selector.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()
    names = ([s.strip() for s in args.selectors.split(",") if s.strip()] if args.selectors
             else [s for s in SELECTORS if s not in SLOW_BY_DEFAULT])
    unknown = [s for s in names if s not in SELECTORS]
    if unknown:
        parser.error(f"unknown selector(s) {', '.join(unknown)}; registered: {', '.join(SELECTORS)}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    from influence.data import load_pool, load_target
    from influence.data.pools import Pool

    pool = load_pool("alpaca")
    origin = pool.sources[0].origin
    if args.examples is not None:
        pool = Pool(examples=list(pool.examples[: args.examples]), sources=pool.sources)
    target = load_target(args.target)
    k = min(args.k, len(pool))
    print(f"pool: {len(pool):,} examples ({origin}); target {args.target}: {len(target)} examples; k={k}; "
          f"{args.repeats} timed run(s) each, after one warm-up; cpus: {os.cpu_count()}")
    for name in names:  # warm-up, untimed
        run_once(name, pool, target, k, seed=0)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names:
            runs[name].append(run_once(name, pool, target, k, seed=repeat))
    rows = []
    for name in names:
        seconds = [r["seconds"] for r in runs[name]]
        median = statistics.median(seconds)
        rows.append({"selector": name, "median_s": median, "min_s": min(seconds), "max_s": max(seconds),
                     "examples_per_s": len(pool) / median if median > 0 else float("inf"),
                     "guard_s": statistics.median(r["guard_seconds"] for r in runs[name])})
    print("\n| selector | median s | min s | max s | examples/s | of which guard s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['selector']} | {row['median_s']:.2f} | {row['min_s']:.2f} | {row['max_s']:.2f} | "
              f"{row['examples_per_s']:,.0f} | {row['guard_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"pool": len(pool), "target": args.target, "k": k,
                                         "repeats": args.repeats, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
