"""Select a LIMA-sized subset from a pipeline, without the CLI.

    python examples/select_longest.py --k 1000 --out selections/alpaca-longest.jsonl

Runs offline in about a second on a laptop CPU (bundled Alpaca sample).
"""

from __future__ import annotations

import argparse

from influence import load_pool, make_selector, select, write_selection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", action="append", default=None, help="pool spec (repeatable); default alpaca")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--selector", default="longest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="selections/example-selection.jsonl")
    args = parser.parse_args()

    pool = load_pool(args.pool or ["alpaca"])
    selection = select(pool, args.k, make_selector(args.selector), seed=args.seed)
    print("\n".join(pool.describe() + selection.summary()))
    jsonl, manifest = write_selection(selection, args.out, overwrite=True)
    print(f"wrote {jsonl} and {manifest}")


if __name__ == "__main__":
    main()
