"""Projection noise: how far projected LESS scores fall from the exact, unprojected ones.

On real examples (a seeded sample of the bundled Alpaca and FLAN v2 chain-of-thought pools,
half each, and the bbh target), one LESS run warms up and then, at every checkpoint, takes
the exact unprojected score and, in the same pool pass, the projected features at every d;
each further projector is one more pool pass (reusing the warmup).
Printed per projector and d: the Spearman rank correlation of the projected LESS scores
with the exact ones, the share of the exact top k (k = 10% of the pool) that the projected
top k keeps, and the mean and largest |projected - exact| score.

    python benchmarks/projection_noise.py                   # 200 examples, r=128, d in 1024 8192 32768, sjlt
    python benchmarks/projection_noise.py --projectors sjlt trak-basic --device cuda
    python benchmarks/projection_noise.py --pool-size 16 --rank 4 --dims 64 256 --subtasks 2 \\
        --target-per-subtask 1 --warmup-examples 8 --warmup-batch-size 2 --max-length 1024   # smoke test

The default run should take about 12 minutes on 2 quiet CPU cores (about 95k tokens through
the r=128 model at the ~125 tokens/s of featurize_speed.py); the bbh target in LESS's wording
(81 examples, 70k tokens) is most of it, and --target-per-subtask 1 takes about half as long.

trak-basic (TRAK's BasicProjector, as LESS on CPU) regenerates its dense P x d matrix on
every call: at r=128 (P = 14.7M) and d = 32768 that is hours per call on a CPU, so on a CPU
it runs only when --projectors names it; on a GPU it takes seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def top_k_overlap(projected: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Share of the exact top k that the projected top k keeps."""
    return len(set(np.argsort(-projected, kind="stable")[:k]) & set(np.argsort(-exact, kind="stable")[:k])) / k


def sample_pool(size: int, seed: int) -> Any:
    """`size` examples, half from the bundled Alpaca sample and half from FLAN v2 CoT, seeded."""
    from influence.data.pools import Pool, PoolSource, load_pool

    rng = np.random.default_rng(seed)
    examples, sources = [], []
    for name, count in (("alpaca", size // 2), ("flan_cot", size - size // 2)):
        whole = load_pool(name)
        picked = np.sort(rng.choice(len(whole), size=count, replace=False))
        examples += whole.take(picked.tolist())
        sources.append(PoolSource(f"{name}-sample{count}-seed{seed}", f"seeded sample of {name}", count, 0, count))
    return Pool(examples=examples, sources=sources)


def small_target(spec: str, subtasks: int, per_subtask: int) -> Any:
    """The target, cut to its first `subtasks` subtasks and `per_subtask` examples each (0: all)."""
    from influence.data.targets import Target, load_target

    target = load_target(spec)
    groups = list(target.subtasks().items())[: subtasks or None]
    keep = sorted(i for _, rows in groups for i in rows[: per_subtask or None])
    return Target(target.name, [target.examples[i] for i in keep])


def projected_scores(features: Any, pool: Any, target: Any, settings: Any, dim: int) -> np.ndarray:
    """LESS scores from the projected datastores of dimension `dim` (all pool rows, exactly)."""
    from influence.features.datastore import FeatureStore
    from influence.io import sha256_json
    from influence.less.pipeline import store_dir
    from influence.scoring import less_scores

    target_fp = sha256_json([e.id for e in target.examples])
    pool_rows, target_rows = [], []
    for checkpoint in features.checkpoints:
        folder = features.workdir / "features" / f"epoch-{checkpoint['epoch']}"
        pool_rows.append(FeatureStore.open(store_dir(folder, "pool", settings.pool_grad, pool.fingerprint, dim,
                                                     settings)).rows())
        target_rows.append(FeatureStore.open(store_dir(folder, "target", settings.target_grad, target_fp, dim,
                                                       settings)).features())
    return less_scores(pool_rows, target_rows, [c["weight"] for c in features.checkpoints], target.subtasks())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--pool-size", type=int, default=200, help="pool examples, half Alpaca, half FLAN CoT")
    parser.add_argument("--target", default="bbh", help="target name or file")
    parser.add_argument("--subtasks", type=int, default=0, help="keep the first N subtasks (0: all)")
    parser.add_argument("--target-per-subtask", type=int, default=0, help="examples per subtask (0: all)")
    parser.add_argument("--rank", type=int, default=128, help="LoRA rank (alpha = 4 r, as LESS)")
    parser.add_argument("--dims", type=int, nargs="+", default=[1024, 8192, 32768])
    parser.add_argument("--projectors", nargs="+", default=None,
                        help="default: sjlt on a CPU, sjlt and trak-basic on CUDA")
    parser.add_argument("--warmup-examples", type=int, default=40, help="examples the warmup trains on")
    parser.add_argument("--warmup-epochs", type=int, default=1, help="warmup epochs = checkpoints")
    parser.add_argument("--warmup-batch-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4, help="examples per featurization forward/backward")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M-Instruct")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--workdir", default=None, help="keep the run here (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from influence.less import LessSettings, build_features, score_features
    from influence.less.pipeline import run_name
    from influence.lora import LoraSettings
    from influence.models import load_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    projectors = args.projectors or (["sjlt", "trak-basic"] if device.startswith("cuda") else ["sjlt"])
    if "trak-basic" not in projectors:
        print("trak-basic left out on a CPU (hours per call at r=128); name it in --projectors to run it")
    started = time.perf_counter()
    pool = sample_pool(args.pool_size, args.seed)
    target = small_target(args.target, args.subtasks, args.target_per_subtask)
    k = max(1, round(0.1 * len(pool)))
    loaded = load_model(args.model, device=device)
    print(f"pool {len(pool)} examples, target {args.target}: {len(target)} examples in {len(target.subtasks())} "
          f"subtasks, LoRA r={args.rank}, k={k}, device {device}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        rows = []
        exact = base = None
        for projector in projectors:
            settings = LessSettings(
                model=args.model, lora=LoraSettings(r=args.rank, alpha=4 * args.rank, dropout=0.1),
                warmup_fraction=min(1.0, args.warmup_examples / len(pool)), warmup_epochs=args.warmup_epochs,
                warmup_batch_size=args.warmup_batch_size, warmup_micro_batch_size=min(4, args.warmup_batch_size),
                projector=projector, dims=tuple(args.dims), batch_size=args.batch_size, max_length=args.max_length,
                scoring="unprojected", store_features=True, index_root=root, seed=args.seed, device=device)
            if base is None:
                base = run_name(pool, settings)
            else:  # projected stores are named by role, not projector: another run directory, the same warmup
                settings = settings.with_(name=f"{base}-{projector}")
                (root / settings.name).mkdir(parents=True, exist_ok=True)
                if not (root / settings.name / "warmup").exists():
                    (root / settings.name / "warmup").symlink_to(root / base / "warmup", target_is_directory=True)
            tick = time.perf_counter()
            features = build_features(pool, target, settings, loaded=loaded)
            print(f"{projector}: warmup and features in {time.perf_counter() - tick:.0f} s", flush=True)
            if exact is None:
                exact, _ = score_features(features, pool, target, settings)
            for dim in args.dims:
                projected = projected_scores(features, pool, target, settings, dim)
                error = np.abs(projected - exact)
                rows.append((projector, dim, spearman(projected, exact), top_k_overlap(projected, exact, k),
                             float(error.mean()), float(error.max())))
    print()
    print(f"pool {len(pool)} (Alpaca + FLAN CoT), target {args.target} ({len(target)} examples), r={args.rank}, "
          f"{args.warmup_epochs} checkpoint(s), k={k}; exact scores spread {np.ptp(exact):.4f} (std "
          f"{exact.std():.4f})")
    header = f"{'projector':<11} {'d':>6} {'Spearman':>9} {'top-k kept':>10} {'mean |err|':>10} {'max |err|':>9}"
    print(header)
    print("-" * len(header))
    for projector, dim, rho, kept, mean_err, max_err in rows:
        print(f"{projector:<11} {dim:>6} {rho:>9.3f} {kept:>10.0%} {mean_err:>10.4f} {max_err:>9.4f}")
    print(f"\nwall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
