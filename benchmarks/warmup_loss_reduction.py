"""Warmup loss reduction: how much LESS's per-example loss changes what LESS selects.

Two LESS runs on the same real pool, target and settings, differing only in the warmup's
loss: `example` (LESS: the mean of each example's mean response-token loss) and `token`
(every response token of a step weighs the same). Printed, per run: the warmup's loss per
epoch and its time; between the runs: how far the Adam second moments and the adapters
moved apart (relative L2 difference), the Spearman rank correlation of the LESS scores and
the overlap of the top 10% of the pool.

    python benchmarks/warmup_loss_reduction.py                        # 200 examples (Alpaca + FLAN CoT), bbh
    python benchmarks/warmup_loss_reduction.py --pool-size 400 --target mmlu --lora-r 128
    python benchmarks/warmup_loss_reduction.py --tiny                 # seconds: the tiny test model, a smoke test

The pool mixes Alpaca (short and long answers) with FLAN chain-of-thought answers, so
response lengths vary as in real pools: where all responses had one length, the two
reductions would be the same loss.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REDUCTIONS = ("example", "token")


def real_pool(size: int, seed: int) -> Any:
    """`size` examples: a seeded half from Alpaca, half from FLAN CoT, in a seeded order."""
    import numpy as np

    from influence.data import load_pool
    from influence.data.pools import Pool, PoolSource

    rng = np.random.default_rng(seed)
    examples = []
    for spec, count in (("alpaca", size // 2), ("flan_cot", size - size // 2)):
        pool = load_pool(spec)
        examples += pool.take(sorted(rng.choice(len(pool), size=count, replace=False).tolist()))
    examples = [examples[i] for i in rng.permutation(len(examples))]
    return Pool(examples=examples, sources=[PoolSource("alpaca+flan_cot", "benchmark sample", len(examples), 0,
                                                       len(examples))])


def tiny_setup(size: int) -> tuple[Any, Any, Any]:
    """The tiny random test model, a pool of varied lengths and a two-example target: a smoke test."""
    from influence.data import Example
    from influence.data.pools import Pool, PoolSource
    from influence.data.targets import Target
    from influence.models import LoadedModel
    from influence.testing import tiny_model_and_tokenizer

    model, tokenizer = tiny_model_and_tokenizer()
    loaded = LoadedModel(model=model, tokenizer=tokenizer, spec="tiny", weights_sha256="tiny-0")
    examples = [Example(f"Say {i} in words.", "", " ".join(["word"] * (1 + (i * 7) % 23))) for i in range(size)]
    pool = Pool(examples=examples, sources=[PoolSource("tiny", "generated", size, 0, size)])
    target = Target("tiny", [Example("Say 3 in words.", "", "three", subtask="t"),
                             Example("Say 9 in words.", "", "nine", subtask="t")])
    return loaded, pool, target


def spearman(a: Any, b: Any) -> float:
    import numpy as np

    ranks = [np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(float) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def relative_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    """||a - b|| / ||a|| over all tensors of two name-keyed dicts."""
    num = sum(float((a[k].float() - b[k].float()).square().sum()) for k in a)
    den = sum(float(a[k].float().square().sum()) for k in a)
    return (num / den) ** 0.5 if den else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool-size", type=int, default=200, help="Pool examples (half Alpaca, half FLAN CoT).")
    parser.add_argument("--target", default="bbh", help="Target name (bbh, mmlu, tydiqa) or file.")
    parser.add_argument("--warmup-fraction", type=float, default=0.25,
                        help="Share of the pool the warmup trains on (LESS: 0.05, of a far larger pool).")
    parser.add_argument("--warmup-epochs", type=int, default=4)
    parser.add_argument("--warmup-batch-size", type=int, default=8, help="Examples per warmup optimizer step.")
    parser.add_argument("--warmup-lr", type=float, default=2e-5)
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank (alpha = 4r, as LESS's 512 at 128).")
    parser.add_argument("--dims", type=int, default=8192)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the runs here [default: a temp dir].")
    parser.add_argument("--out", type=Path, default=None, help="Also write the results as JSON here.")
    parser.add_argument("--tiny", action="store_true", help="The tiny test model and a generated pool (smoke test).")
    args = parser.parse_args()

    import numpy as np
    from safetensors.torch import load_file

    from influence.data import load_target
    from influence.less import LessSettings, less_run
    from influence.lora import LoraSettings
    from influence.training import list_checkpoints, load_checkpoint, read_manifest

    if args.tiny:
        loaded, pool, target = tiny_setup(args.pool_size)
        lora = LoraSettings.for_tests()
        extra = {"warmup_lr": 1e-2, "dims": 64, "max_length": 256}
    else:
        from influence.models import load_model

        loaded, pool, target = load_model(), real_pool(args.pool_size, args.seed), load_target(args.target)
        lora = LoraSettings(r=args.lora_r, alpha=4 * args.lora_r, dropout=0.1)
        extra = {"warmup_lr": args.warmup_lr, "dims": args.dims, "max_length": args.max_length}
    k = max(1, round(0.1 * len(pool)))

    with tempfile.TemporaryDirectory() as scratch:
        root = args.workdir or Path(scratch)
        runs: dict[str, dict[str, Any]] = {}
        for reduction in REDUCTIONS:
            settings = LessSettings(lora=lora, warmup_fraction=args.warmup_fraction, warmup_epochs=args.warmup_epochs,
                                    warmup_batch_size=args.warmup_batch_size,
                                    warmup_micro_batch_size=min(4, args.warmup_batch_size),
                                    warmup_loss_reduction=reduction, scoring="exact", seed=args.seed,
                                    index_root=root, progress=not args.tiny, **extra)
            started = time.perf_counter()
            run = less_run(pool, target, settings, loaded=loaded)
            warmup = read_manifest(run.workdir / "warmup")
            last = load_checkpoint(list_checkpoints(run.workdir / "warmup")[-1])
            runs[reduction] = {"scores": run.scores, "seconds": time.perf_counter() - started,
                               "warmup_seconds": warmup["seconds"], "last": last,
                               "epoch_losses": [e["mean_loss"] for e in warmup["epochs"]]}

        a, b = runs["example"], runs["token"]
        top = [set(np.argsort(-r["scores"], kind="stable")[:k].tolist()) for r in (a, b)]
        results = {
            "pool": len(pool), "target": target.name, "k": k, "lora_r": lora.r,
            "warmup_examples": max(1, round(args.warmup_fraction * len(pool))),
            "epoch_token_loss": {r: runs[r]["epoch_losses"] for r in REDUCTIONS},
            "seconds": {r: round(runs[r]["seconds"], 1) for r in REDUCTIONS},
            "adam_v_rel_diff": relative_difference(a["last"].exp_avg_sq, b["last"].exp_avg_sq),
            "adam_m_rel_diff": relative_difference(a["last"].exp_avg, b["last"].exp_avg),
            "adapter_rel_diff": relative_difference(
                *(load_file(str(r["last"].adapter_dir / "adapter_model.safetensors")) for r in (a, b))),
            "spearman": spearman(a["scores"], b["scores"]),
            "top_k_overlap": len(top[0] & top[1]) / k,
        }

    print(f"pool {results['pool']} examples, target {results['target']}, LoRA r={results['lora_r']}, "
          f"warmup on {results['warmup_examples']} examples")
    print(f"{'reduction':<10} {'warmup token loss per epoch':<44} {'run s':>7}")
    for r in REDUCTIONS:
        losses = ", ".join(f"{x:.4f}" for x in results["epoch_token_loss"][r])
        print(f"{r:<10} {losses:<44} {results['seconds'][r]:>7.1f}")
    print(f"last checkpoint, example vs token (relative L2 difference): adapter {results['adapter_rel_diff']:.3f}, "
          f"Adam m {results['adam_m_rel_diff']:.3f}, v {results['adam_v_rel_diff']:.3f}")
    print(f"LESS scores: Spearman {results['spearman']:.3f}; top {k} (10%) shared: {results['top_k_overlap']:.0%}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
