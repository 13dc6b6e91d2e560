"""Does the dry run's estimate match a real `influence featurize`? (Run it on a quiet machine.)

Takes a seeded sample of the bundled Alpaca pool (64 examples by default) and a one-example
target, asks the dry run what warmup and featurization will take (the estimator `select
--dry-run` and `featurize --dry-run` use, with the CLI's default settings), then times the
real `influence featurize` on them in a subprocess. Model loading is not in the estimate, so
it is timed on its own (a subprocess that imports the package and loads the model) and
subtracted. Printed: the estimate per phase, the measured time, their ratio, the machine
load during both, and the utilization constant that would have made them equal.

    python benchmarks/estimate_check.py                    # 64 examples, the CLI defaults (r=128, 4 checkpoints)
    python benchmarks/estimate_check.py --examples 16      # a quicker look
    python benchmarks/estimate_check.py --tiny --examples 8   # a smoke test of the script (tiny random model)

Exit status 0 when the estimate is within --tolerance (30%) of the measured time, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def write_inputs(workdir: Path, examples: int, seed: int) -> tuple[Path, Path]:
    """A seeded sample of the bundled Alpaca pool and a one-example BBH target, as JSONL files."""
    import numpy as np

    from influence.data import load_pool, load_target

    pool = load_pool("alpaca").examples
    picked = np.random.default_rng(seed).choice(len(pool), size=examples, replace=False)
    pool_path, target_path = workdir / "pool.jsonl", workdir / "target.jsonl"
    pool_path.write_text("".join(json.dumps({"instruction": pool[i].instruction, "input": pool[i].input,
                                             "output": pool[i].output}) + "\n" for i in picked.tolist()),
                         encoding="utf-8")
    target = load_target("bbh").examples[0]
    target_path.write_text(json.dumps({"instruction": target.instruction, "input": target.input,
                                       "output": target.output}) + "\n", encoding="utf-8")
    return pool_path, target_path


def cli_settings(seed: int, model: str | None) -> Any:
    """LessSettings exactly as `influence featurize` builds them from its default options (and --model)."""
    from influence.cli.less import featurize_command
    from influence.cli.less_options import pop_settings

    context = featurize_command.make_context("featurize", ["--pool", "unused"] + (["--model", model] if model else []))
    return pop_settings(dict(context.params), seed=seed).with_(store_features=True)


def tiny_model(into: Path) -> str:
    """A tiny random model saved as a directory (for a smoke test of this script, not for figures)."""
    from influence.testing import tiny_model_and_tokenizer

    model, tokenizer = tiny_model_and_tokenizer()
    model.save_pretrained(into)
    tokenizer.save_pretrained(into)
    return str(into)


def timed(command: list[str], cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=64, help="pool examples to featurize")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.30, help="largest relative error that passes")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model: a smoke test of the script")
    args = parser.parse_args()

    from influence.data import load_pool, load_target
    from influence.less.estimate import MATMUL_UTILIZATION
    from influence.less import dry_run

    with tempfile.TemporaryDirectory(prefix="estimate_check_") as tmp:
        work = Path(tmp)
        pool_path, target_path = write_inputs(work, args.examples, args.seed)
        model = tiny_model(work / "tiny") if args.tiny else None
        settings = cli_settings(args.seed, model)
        estimate = dry_run(load_pool(str(pool_path)), load_target(str(target_path)), settings)
        print("\n".join(estimate.lines()), flush=True)
        phases = {name: estimate.seconds[name] for name in ("warmup", "featurize_pool", "featurize_target")}
        predicted = sum(phases.values())
        loading = timed([sys.executable, "-c", "import sys, influence.cli; from influence.models import load_model; "
                         "load_model(sys.argv[1] if len(sys.argv) > 1 else None)", *([model] if model else [])], work)
        print(f"model loading and start-up: {loading:.1f} s", flush=True)
        wall = timed([sys.executable, "-m", "influence.cli", "featurize", "--pool", str(pool_path), "--target",
                      str(target_path), "--seed", str(args.seed), *(["--model", model] if model else [])], work)
        end_load = os.getloadavg()[0]

    measured = max(wall - loading, 1e-9)
    ratio = predicted / measured
    checkpoints = estimate.checkpoints
    print(f"\nestimate: warmup {phases['warmup']:.1f} s + pool {phases['featurize_pool']:.1f} s + target "
          f"{phases['featurize_target']:.1f} s = {predicted:.1f} s "
          f"({args.examples * checkpoints / max(phases['featurize_pool'], 1e-9):.2f} pool examples/s over "
          f"{checkpoints} checkpoints)")
    print(f"measured: featurize {wall:.1f} s wall, of which model loading and start-up {loading:.1f} s: "
          f"{measured:.1f} s of work")
    print(f"load: at the probe {estimate.load.describe() if estimate.load else 'not measured'}; "
          f"at the end load average {end_load:.2f}")
    print(f"estimate / measured = {ratio:.2f}; MATMUL_UTILIZATION {MATMUL_UTILIZATION} would be "
          f"{MATMUL_UTILIZATION * ratio:.2f} for them to agree")
    agree = abs(ratio - 1) <= args.tolerance
    print(f"{'PASS' if agree else 'FAIL'}: the estimate is {'within' if agree else 'outside'} "
          f"{args.tolerance:.0%} of the measured time")
    raise SystemExit(0 if agree else 1)


if __name__ == "__main__":
    main()
