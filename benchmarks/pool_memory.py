"""Pool memory: peak resident memory of holding a large JSONL pool versus streaming it.

Writes a synthetic pool once (--examples rows with responses of about --chars characters), then
runs each way in its own subprocess, so that its peak memory (ru_maxrss) is its own:

- loaded: `load_pool(path)`, every example in memory, then pick 1,000 of them;
- streamed: `load_pool(path, stream=True)`: one pass for the ids, then every example read
  once in ascending order in shard-sized steps (as featurization does), then pick 1,000.

Printed per way: wall time, peak RSS, and the Python interpreter's baseline (imports only), so
the pool's own share is the difference.

    python benchmarks/pool_memory.py                        # 200,000 examples of ~1 kB (about 220 MB)
    python benchmarks/pool_memory.py --examples 20000       # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARD_ROWS = 256


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_pool(path: Path, examples: int, chars: int) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(examples):
            words = " ".join(f"w{(i * 7 + j) % 9973}" for j in range(chars // 6))
            handle.write(json.dumps({"instruction": f"Task {i}: summarise.", "input": "",
                                     "output": words[:chars]}) + "\n")


def measure(way: str, path: str) -> dict:
    from influence.data import load_pool

    baseline = peak_mb()
    started = time.perf_counter()
    pool = load_pool(path, stream=(way == "streamed"))
    characters = 0
    for start in range(0, len(pool), SHARD_ROWS):  # a shard at a time, ascending, as featurization reads
        for i in range(start, min(start + SHARD_ROWS, len(pool))):
            characters += len(pool.examples[i].output)
    picked = pool.take(list(range(len(pool) - 1, 0, -max(1, len(pool) // 1000)))[:1000])
    return {"way": way, "examples": len(pool), "characters": characters, "picked": len(picked),
            "seconds": round(time.perf_counter() - started, 2), "baseline_mb": round(baseline, 1),
            "peak_mb": round(peak_mb(), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200_000)
    parser.add_argument("--chars", type=int, default=1_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp"))
    parser.add_argument("--measure", nargs=2, metavar=("WAY", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    path = args.workdir / f"pool_memory_{args.examples}_{args.chars}.jsonl"
    if not path.exists():
        write_pool(path, args.examples, args.chars)
    print(f"pool {path}: {args.examples:,} examples, {path.stat().st_size / 1e6:,.0f} MB")
    print("| way | seconds | peak RSS (MB) | imports only (MB) | pool's share (MB) |")
    print("|---|---:|---:|---:|---:|")
    for way in ("loaded", "streamed"):
        out = subprocess.run([sys.executable, __file__, "--measure", way, str(path)], check=True, cwd=ROOT,
                             capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(f"| {way} | {row['seconds']} | {row['peak_mb']:,.0f} | {row['baseline_mb']:,.0f} | "
              f"{row['peak_mb'] - row['baseline_mb']:,.0f} |")


if __name__ == "__main__":
    main()
