"""The cascade against full LESS: how much time a cheap prefilter's shortlist saves, and how much of
full LESS's top k the cascade still picks.

On the bundled Alpaca sample (4,998 examples offline; `--pool-size` draws a seeded sample),
one full LESS run (warmup on 5% of the pool, the exact unprojected score at every checkpoint)
gives the reference top k. Then, for each prefilter (bm25, embed) and each shortlist size N,
the cascade runs as `influence select --prefilter SELECTOR:N` does: the prefilter ranks the
whole pool, LESS runs over its N best alone (a warmup on 5% of the shortlist, its own
datastores), and the k come from the shortlist. The same is done for a second target made
of FLAN v2 chain-of-thought examples of one source (`--flan-source`), which the pool does not
hold. Printed per row: the wall time, the speed-up over full LESS, the share of full LESS's
top k that the shortlist holds (the most the cascade can keep) and that the cascade keeps.

    python benchmarks/cascade.py                                       # 4,998 examples, k=250, N in 500 1000 2000
    python benchmarks/cascade.py --target bbh --prefilters bm25        # another target; bm25 only
    python benchmarks/cascade.py --pool-size 30 --k 3 --n 6 12 --warmup-epochs 2 --lora-r 4 \\
        --flan-size 3 --target-size 3 --max-length 512                 # smoke test, minutes

The full run takes hours on 2 CPU cores: `influence select --pool alpaca --target T --k 250
--dry-run` prices the full LESS pass, and `--prefilter bm25:N` beside it prices a cascade's.
A full LESS selection already made (by `influence select` or a comparison, same pool, target,
k, seed and LESS settings) can stand in for the first target's full run: `--reference SEL.jsonl`
takes its picks and the selection time its manifest records, and only the cascades run;
`--shortlist-only` then prices many prefilters in seconds: the share of full LESS's picks each
shortlist holds, the most its cascade can keep.

    python benchmarks/cascade.py --pool-size 300 --k 30 --n 60 120 --prefilters embed --flan-source '' \
        --reference benchmarks/results/cascade/less-full-k30.jsonl      # the runs in results/cascade/
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_TARGET = "user_oriented"


def sample_pool(size: int, seed: int) -> Any:
    """The bundled Alpaca pool, or a seeded sample of `size` of its examples (0: all)."""
    from influence.data.pools import load_pool

    return load_pool("alpaca" if not size else f"alpaca:sample={size},seed={seed}")


def cut_target(spec: str, size: int, seed: int) -> Any:
    """Target `spec`, or a seeded `size` of its examples (0: all), keeping their subtasks."""
    from influence.data.targets import Target, load_target

    target = load_target(spec)
    if not size or size >= len(target):
        return target
    keep = np.sort(np.random.default_rng(seed).choice(len(target), size=size, replace=False))
    return Target(target.name, [target.examples[i] for i in keep])


def flan_target(source: str, size: int, seed: int) -> Any:
    """`size` FLAN v2 CoT examples of one source (e.g. `flan_cot/gsm8k`), seeded: a target the pool lacks."""
    from influence.data.pools import load_pool
    from influence.data.targets import Target
    from influence.errors import DataError

    flan = load_pool("flan_cot")
    members = [i for i, source_of in enumerate(e.source for e in flan.examples) if source_of == source]
    if not members:
        known = sorted({e.source for e in flan.examples})
        raise DataError(f"no FLAN CoT examples from {source!r}; choose one of {', '.join(known)}")
    picked = np.sort(np.random.default_rng(seed).choice(members, size=min(size, len(members)), replace=False))
    return Target(source, flan.take(picked.tolist()))


def kept_share(chosen: np.ndarray, reference: np.ndarray) -> float:
    """Share of the reference top k found in `chosen`."""
    return len(set(chosen.tolist()) & set(reference.tolist())) / len(reference)


def reference_run(path: str, pool: Any, cleared: Any, target: Any, k: int, seed: int) -> tuple[np.ndarray, float]:
    """The picks (as indices into `cleared`, the pool the guard left) and the selection seconds of a
    full LESS selection saved earlier, after checking it was made on this pool and target with this k and seed."""
    from influence.errors import DataError
    from influence.io import sha256_json
    from influence.publish import read_selection

    saved = read_selection(path)
    manifest = saved.manifest
    expected = {"selector": "less", "k": k, "seed": seed, "pool": pool.fingerprint,
                "target": sha256_json([e.id for e in target.examples])}
    found = {"selector": manifest["selector"]["name"], "k": manifest["k"], "seed": manifest["seed"],
             "pool": manifest["pool"]["fingerprint"], "target": (manifest.get("target") or {}).get("fingerprint")}
    differs = [key for key in expected if expected[key] != found[key]]
    if differs:
        raise DataError(f"{path}: not a full LESS selection of this benchmark's run ({', '.join(differs)} differ: "
                        f"{', '.join(f'{key} {found[key]!r} != {expected[key]!r}' for key in differs)})")
    if manifest.get("prefilter") or (manifest.get("algorithm") or {}).get("name", "top-k") != "top-k":
        raise DataError(f"{path}: made with a prefilter or another algorithm; the reference must be full LESS, top-k")
    where = {example_id: index for index, example_id in enumerate(cleared.ids)}
    return np.array([where[r["id"]] for r in saved.records]), float(manifest["selection_seconds"])


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Full LESS, then every cascade, for each target; one row per run."""
    from influence.cascade import Prefilter, shortlist
    from influence.less import LessSettings
    from influence.models import load_model
    from influence.selection import decontaminate, select
    from influence.selectors.less import LessSelector

    pool = sample_pool(args.pool_size, args.seed)
    targets = [(args.target, cut_target(args.target, args.target_size, args.seed))]
    if args.flan_source:
        targets.append((args.flan_source, flan_target(args.flan_source, args.flan_size, args.seed)))
    root = Path(args.index_root or tempfile.mkdtemp(prefix="cascade-bench-"))
    changes = {"warmup_epochs": args.warmup_epochs, "max_length": args.max_length, "index_root": root,
               "device": args.device}
    settings = LessSettings().with_(**{k: v for k, v in changes.items() if v is not None})
    if args.lora_r:
        settings = settings.with_(lora=settings.lora.__class__(r=args.lora_r, alpha=4 * args.lora_r))
    loaded = load_model(settings.model, device=settings.device)
    print(f"pool: {len(pool):,} examples; k={args.k}; LoRA r={settings.lora.r}; {settings.warmup_epochs} warmup "
          f"epochs; datastores under {root}", flush=True)
    rows = []
    for label, target in targets:
        cleared, _ = decontaminate(pool, target)
        print(f"target {label}: {len(target)} examples, {len(target.subtasks())} subtasks; pool as scored: "
              f"{len(cleared):,}", flush=True)
        if args.reference and label == args.target:
            full_indices, full_seconds = reference_run(args.reference, pool, cleared, target, args.k, args.seed)
            print(f"  full LESS: {full_seconds:,.0f} s, as recorded in {args.reference}", flush=True)
        else:
            start = time.perf_counter()
            full_indices = select(cleared, args.k, LessSelector(settings, loaded=loaded), target=target,
                                  seed=args.seed).indices
            full_seconds = time.perf_counter() - start
            print(f"  full LESS: {full_seconds:,.0f} s", flush=True)
        rows.append({"target": label, "run": "less (full)", "seconds": full_seconds, "shortlist": 1.0, "kept": 1.0})
        for name in args.prefilters:
            options = {"settings": settings} if name in ("embed", "rds") else {}
            for n in args.n:
                if n < args.k or n > len(cleared):
                    print(f"  {name}:{n}: skipped (N must lie in [k, pool])", flush=True)
                    continue
                prefilter = Prefilter(name, n, options)
                if args.shortlist_only:
                    listed = shortlist(cleared, prefilter, target=target, seed=args.seed)
                    row = {"target": label, "run": f"{name}:{n} (shortlist only)", "seconds": listed.record["seconds"],
                           "prefilter_seconds": listed.record["seconds"],
                           "shortlist": kept_share(listed.indices, full_indices), "kept": None}
                    rows.append(row)
                    print(f"  {row['run']}: holds {row['shortlist']:.0%} of full LESS's top {args.k}", flush=True)
                    continue
                start = time.perf_counter()
                cascade = select(cleared, args.k, LessSelector(settings, loaded=loaded), target=target,
                                 seed=args.seed, prefilter=prefilter)
                seconds = time.perf_counter() - start
                listed = shortlist(cleared, prefilter, target=target, seed=args.seed).indices
                row = {"target": label, "run": f"{name}:{n} + less", "seconds": seconds,
                       "prefilter_seconds": cascade.extra["prefilter"]["seconds"],
                       "shortlist": kept_share(listed, full_indices), "kept": kept_share(cascade.indices, full_indices)}
                rows.append(row)
                print(f"  {row['run']}: {seconds:,.0f} s, shortlist holds {row['shortlist']:.0%} of full LESS's "
                      f"top {args.k}, cascade keeps {row['kept']:.0%}", flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    """A Markdown table of the rows, with each cascade's speed-up over its target's full LESS run."""
    full = {r["target"]: r["seconds"] for r in rows if r["run"] == "less (full)"}
    lines = ["| target | run | wall s | prefilter s | speed-up | shortlist holds | cascade keeps |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        prefilter = f"{r['prefilter_seconds']:,.1f}" if "prefilter_seconds" in r else "-"
        if r["kept"] is None:  # a shortlist alone: no LESS ran over it
            lines.append(f"| {r['target']} | {r['run']} | - | {prefilter} | - | {r['shortlist']:.0%} | - |")
            continue
        lines.append(f"| {r['target']} | {r['run']} | {r['seconds']:,.0f} | {prefilter} | "
                     f"{full[r['target']] / r['seconds']:.1f}x | {r['shortlist']:.0%} | {r['kept']:.0%} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool-size", type=int, default=0, help="a seeded sample of the Alpaca pool (0: all 4,998)")
    parser.add_argument("--target", default=DEFAULT_TARGET, help="a registered target or a file")
    parser.add_argument("--target-size", type=int, default=0, help="a seeded sample of the target (0: all)")
    parser.add_argument("--flan-source", default="flan_cot/gsm8k",
                        help="a second target: FLAN v2 CoT examples of this source ('' for none)")
    parser.add_argument("--flan-size", type=int, default=50, help="examples in the FLAN CoT target")
    parser.add_argument("--k", type=int, default=250, help="examples selected")
    parser.add_argument("--n", type=int, nargs="+", default=[500, 1000, 2000], help="shortlist sizes")
    parser.add_argument("--prefilters", nargs="+", default=["bm25", "embed"], help="cheap targeted selectors")
    parser.add_argument("--warmup-epochs", type=int, default=None, help="[default: LESS's 4]")
    parser.add_argument("--lora-r", type=int, default=None, help="[default: LESS's 128]")
    parser.add_argument("--max-length", type=int, default=None, help="[default: 2048]")
    parser.add_argument("--device", default=None)
    parser.add_argument("--index-root", default=None, help="where the datastores go [default: a new temp dir]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shortlist-only", action="store_true",
                        help="only the shortlists: how much of full LESS's top k each holds (the most a cascade can "
                             "keep), without running LESS over them")
    parser.add_argument("--reference", default=None,
                        help="a saved full LESS selection (.jsonl) of the first target: its picks and time stand in "
                             "for the full run")
    args = parser.parse_args(argv)
    if args.reference and args.target_size:
        parser.error("--reference needs the whole target (--target-size 0): the saved run scored all of it")
    from influence.errors import InfluenceError

    try:
        rows = run(args)
    except InfluenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
