"""Featurization speed: the LESS reference loop against ours (and EleutherAI bergson where it installs).

Every measurement runs in its own subprocess (so peak memory, ru_maxrss, is per run), and the
methods are interleaved repetition by repetition so that a change of machine load hits all
of them alike. Printed: median examples/s, the speed ratio against the reference, the
projection's share of featurization time, and the peak resident memory.

    python benchmarks/featurize_speed.py                       # 16 Alpaca examples, r in (8, 128), d=8192
    python benchmarks/featurize_speed.py --examples 64 --repeats 3 --methods reference ours

Methods (the same model, LoRA settings, examples, Adam moments and output dimension):
- reference: what LESS does: one forward/backward per example, autograd gradients, the Adam
  transform, TRAK's BasicProjector (Rademacher, block 128) on groups of 16 gradients (LESS's
  project_interval), L2 normalisation, float16 storage.
- ours: `influence.features.featurize` with the sjlt projector (batched exact gradients, logits
  only at response positions, projection streamed per parameter block), float16 storage.
- unprojected: `influence.features.featurize` with no projector and `--subtasks` query vectors
  (bbh has 27): the exact cosines of the unprojected LESS score, a [B, n] @ [n, S] product per
  parameter block inside the backward; the queries (S x P float32) are held throughout.
- bergson: EleutherAI's bergson (`collect_gradients`, per-module factored projection sized to
  about d dims, mean loss per example, no optimizer normalisation), installed with
  `pip install --no-deps` plus its light dependencies into a side directory, never into
  this environment (a plain install replaces torch with a CUDA build).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BERGSON_PACKAGES = ["bergson", "jaxtyping", "wadler-lindig", "ml_dtypes", "natsort", "scipy", "petname",
                    "simple-parsing", "docstring-parser", "torchopt", "optree"]


# ---------------------------------------------------------------------------------------- setup
def setup(rank: int, examples: int, seed: int) -> tuple[Any, Any, list[Any], Any]:
    """The default model with fresh LoRA (r, alpha = 4r as LESS, q/k/v/o), N Alpaca examples, fake moments."""
    import torch

    from influence.data import load_pool
    from influence.features import AdamMoments
    from influence.lora import LoraSettings, add_lora, lora_parameters
    from influence.models import load_model

    torch.manual_seed(seed)
    loaded = load_model()
    model = add_lora(loaded.model, LoraSettings(r=rank, alpha=4 * rank, dropout=0.1))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a trained-looking adapter: lora_B non-zero, so every gradient is non-zero
        for _, param in lora_parameters(model):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    model.eval()
    pool = load_pool("alpaca").examples
    picked = [pool[i] for i in torch.randperm(len(pool), generator=generator)[:examples].tolist()]
    named = lora_parameters(model)
    moments = AdamMoments({n: torch.randn(p.shape, generator=generator) * 1e-4 for n, p in named},
                          {n: torch.rand(p.shape, generator=generator) * 1e-8 for n, p in named},
                          step=100, betas=(0.9, 0.999), eps=1e-8)
    return model, loaded.tokenizer, picked, moments


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------------------- methods
def run_reference(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    import numpy as np
    import torch
    from trak.projectors import BasicProjector, ProjectionType

    from influence.data.formatting import encode_example
    from influence.features import adam_update
    from influence.lora import lora_parameters

    model, tokenizer, examples, moments = setup(args.rank, args.examples, args.seed)
    params = lora_parameters(model)
    dim = sum(p.numel() for _, p in params)
    # BasicProjector draws a fresh P x 128 random block per 128 output dims on every call, so
    # its cost is linear in d: --reference-projection-dim times fewer dims and scales up.
    sample_dim = args.reference_projection_dim or args.dim
    projector = BasicProjector(grad_dim=dim, proj_dim=sample_dim, seed=0, proj_type=ProjectionType.rademacher,
                               device=torch.device("cpu"), block_size=128, dtype=torch.float32)
    m = torch.cat([moments.exp_avg[n].reshape(-1) for n, _ in params])
    v = torch.cat([moments.exp_avg_sq[n].reshape(-1) for n, _ in params])
    features, pending = [], []
    grad_seconds = projection_seconds = 0.0

    def flush() -> None:
        nonlocal projection_seconds
        tick = time.perf_counter()
        projected = projector.project(torch.stack(pending), model_id=0)
        features.append(torch.nn.functional.normalize(projected, dim=1).half().numpy())
        pending.clear()
        projection_seconds += time.perf_counter() - tick

    started = time.perf_counter()
    for example in examples:
        tick = time.perf_counter()
        encoded = encode_example(example, tokenizer, args.max_length)
        loss = model(input_ids=torch.tensor([encoded.input_ids]), labels=torch.tensor([encoded.labels])).loss
        loss.backward()
        grad = torch.cat([p.grad.reshape(-1) for _, p in params])
        model.zero_grad(set_to_none=True)
        pending.append(adam_update(grad, m, v, step=moments.step, betas=moments.betas, eps=moments.eps))
        grad_seconds += time.perf_counter() - tick
        if len(pending) == args.project_interval:
            flush()
    if pending:
        flush()
    np.save(out_dir / "reference.npy", np.concatenate(features))
    seconds = time.perf_counter() - started
    scaled = projection_seconds * args.dim / sample_dim
    return {"examples": len(examples), "seconds": seconds - projection_seconds + scaled,
            "projection_seconds": scaled, "gradient_seconds": grad_seconds, "in_dim": dim,
            "projection_extrapolated_from_dim": sample_dim if sample_dim != args.dim else None}


def run_ours(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    import numpy as np

    from influence.features import FeaturizeStats, LoraGradients, SJLTProjector, featurize

    model, tokenizer, examples, moments = setup(args.rank, args.examples, args.seed)
    dim = LoraGradients(model).dim
    tick = time.perf_counter()
    projector = SJLTProjector(dim, args.dim, seed=0, sparsity=args.sparsity)
    projector._ensure_tables()  # drawn once per index, not per batch: reported apart
    setup_seconds = time.perf_counter() - tick
    stats = FeaturizeStats()
    store = np.zeros((len(examples), args.dim), dtype=np.float16)
    started = time.perf_counter()
    for batch in featurize(model, tokenizer, examples, projector, grad_type="adam", moments=moments,
                           batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens or None,
                           max_length=args.max_length, stats=stats):
        store[batch.indices] = batch.features.numpy().astype(np.float16)
    np.save(out_dir / "ours.npy", store)
    seconds = time.perf_counter() - started
    return {"examples": len(examples), "seconds": seconds, "projection_seconds": stats.projection_seconds,
            "gradient_seconds": stats.gradient_seconds, "setup_seconds": setup_seconds, "in_dim": dim,
            "truncated": stats.truncated}


def run_unprojected(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    from influence.features import FeaturizeStats, LoraGradients, featurize

    model, tokenizer, examples, moments = setup(args.rank, args.examples, args.seed)
    dim = LoraGradients(model).dim
    generator = torch.Generator().manual_seed(args.seed + 1)
    queries = torch.randn(args.subtasks, dim, generator=generator)  # unit rows, like subtask means of unit vectors
    queries /= queries.norm(dim=1, keepdim=True)
    stats = FeaturizeStats()
    cosines = np.zeros((len(examples), args.subtasks), dtype=np.float32)
    started = time.perf_counter()
    for batch in featurize(model, tokenizer, examples, None, grad_type="adam", moments=moments,
                           batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens or None,
                           max_length=args.max_length, stats=stats, queries=queries):
        cosines[batch.indices] = batch.cosines.numpy()
    np.save(out_dir / "unprojected.npy", cosines)
    seconds = time.perf_counter() - started
    return {"examples": len(examples), "seconds": seconds, "projection_seconds": stats.projection_seconds,
            "gradient_seconds": stats.gradient_seconds, "in_dim": dim, "subtasks": args.subtasks,
            "query_mb": queries.numel() * 4 / 2 ** 20}


def run_bergson(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    import math

    from datasets import Dataset

    from bergson import IndexConfig, collect_gradients
    from bergson.data import allocate_batches
    from bergson.gradients import GradientProcessor
    from bergson.utils.worker_utils import extract_peft_target_modules
    from influence.data.formatting import encode_example

    model, tokenizer, examples, _ = setup(args.rank, args.examples, args.seed)
    encoded = [encode_example(e, tokenizer, args.max_length) for e in examples]
    data = Dataset.from_dict({"input_ids": [e.input_ids for e in encoded], "labels": [e.labels for e in encoded],
                              "length": [len(e.input_ids) for e in encoded]})
    target_modules = extract_peft_target_modules(model)
    side = max(1, round(math.sqrt(args.dim / len(target_modules))))  # per-module k x k projection
    cfg = IndexConfig(run_path=str(out_dir / "bergson"), projection_dim=side, loss_reduction="mean",
                      token_batch_size=args.bergson_tokens)
    cfg.partial_run_path.mkdir(parents=True, exist_ok=True)
    processor = GradientProcessor({}, projection_dim=side, projection_type="rademacher")
    batches = allocate_batches(data["length"][:], cfg.token_batch_size)
    model.requires_grad_(False)
    model.get_input_embeddings().requires_grad_(True)
    started = time.perf_counter()
    collect_gradients(model, data, processor, cfg, batches=batches, target_modules=target_modules)
    seconds = time.perf_counter() - started
    return {"examples": len(examples), "seconds": seconds, "projection_seconds": None, "gradient_seconds": None,
            "dims": side * side * len(target_modules), "modules": len(target_modules)}


METHODS = {"reference": run_reference, "ours": run_ours, "unprojected": run_unprojected, "bergson": run_bergson}


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        result = METHODS[args.worker](args, Path(tmp))
    result.update(method=args.worker, rank=args.rank, peak_mb=peak_mb())
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------- driver
def bergson_site(args: argparse.Namespace) -> tuple[Path | None, str]:
    """A side directory where bergson imports, or None and why not."""
    site = Path(args.bergson_site)
    probe = "import bergson, torch; print(bergson.__version__, torch.__version__)"
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if not (site / "bergson").exists():
        print(f"installing bergson --no-deps into {site} ...", flush=True)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                               *BERGSON_PACKAGES], capture_output=True, text=True)
        if done.returncode != 0:
            return None, f"pip install failed: {done.stderr.strip().splitlines()[-1:]}"
    import torch

    check = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    if check.returncode != 0:
        return None, f"bergson does not import: {check.stderr.strip().splitlines()[-1:]}"
    version, torch_version = check.stdout.split()
    if torch_version != torch.__version__:
        return None, f"bergson's side directory brings torch {torch_version}, not ours ({torch.__version__})"
    return site, f"bergson {version}"


def run_one(args: argparse.Namespace, method: str, rank: int, site: Path | None) -> dict[str, Any] | None:
    command = [sys.executable, __file__, "--worker", method, "--rank", str(rank), "--examples", str(args.examples),
               "--dim", str(args.dim), "--batch-size", str(args.batch_size),
               "--max-batch-tokens", str(args.max_batch_tokens), "--max-length", str(args.max_length),
               "--sparsity", str(args.sparsity), "--seed", str(args.seed), "--threads", str(args.threads),
               "--project-interval", str(args.project_interval), "--bergson-tokens", str(args.bergson_tokens),
               "--reference-projection-dim", str(args.reference_projection_dim), "--subtasks", str(args.subtasks)]
    if method == "reference" and args.reference_examples:
        command[command.index("--examples") + 1] = str(min(args.examples, args.reference_examples))
    env = dict(os.environ)
    if method == "bergson" and site is not None:
        env["PYTHONPATH"] = f"{site}{os.pathsep}{env.get('PYTHONPATH', '')}"
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    print(f"  {method} r={rank} failed: {' | '.join(tail)}", flush=True)
    return None


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print()
    print(f"examples={args.examples}  d={args.dim}  batch={args.batch_size} (<= {args.max_batch_tokens} tokens)  sjlt sparsity={args.sparsity}  "
          f"threads={args.threads or 'default'}  repeats={args.repeats}  reference: TRAK call every "
          f"{args.project_interval} examples" + (f", projection timed at d={args.reference_projection_dim} and "
                                                 f"scaled to d={args.dim}" if args.reference_projection_dim else ""))
    header = f"{'rank':>4}  {'method':<11} {'runs':>4} {'ex/s (median)':>13} {'vs ref':>7} {'proj share':>10} " \
             f"{'peak GB':>8}"
    print(header)
    print("-" * len(header))
    for rank in args.ranks:
        rows = {}
        for method in args.methods:
            runs = [r for r in results if r["method"] == method and r["rank"] == rank]
            if runs:
                rows[method] = runs
        ref = None
        if "reference" in rows:
            ref = statistics.median(r["examples"] / r["seconds"] for r in rows["reference"])
        for method, runs in rows.items():
            rate = statistics.median(r["examples"] / r["seconds"] for r in runs)
            shares = [r["projection_seconds"] / r["seconds"] for r in runs if r.get("projection_seconds") is not None]
            share = f"{100 * statistics.median(shares):.1f}%" if shares else "n/a"
            ratio = f"{rate / ref:.1f}x" if ref else "n/a"
            peak = max(r["peak_mb"] for r in runs) / 1024
            print(f"{rank:>4}  {method:<11} {len(runs):>4} {rate:>13.3f} {ratio:>7} {share:>10} {peak:>8.2f}")
    print()
    print("proj share: projection (and normalisation) seconds / featurization seconds (unprojected: the query "
          "products); peak: max ru_maxrss of the run's process (model included; unprojected: with "
          f"{args.subtasks} float32 queries of P parameters).")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--examples", type=int, default=16, help="Alpaca examples per run")
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 128], help="LoRA ranks (alpha = 4 r)")
    parser.add_argument("--dim", type=int, default=8192, help="projection dimension")
    parser.add_argument("--methods", nargs="+", default=["reference", "ours", "unprojected", "bergson"],
                        choices=list(METHODS))
    parser.add_argument("--subtasks", type=int, default=27, help="unprojected: query vectors (bbh: 27 subtasks)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repetitions per method and rank")
    parser.add_argument("--batch-size", type=int, default=8, help="our examples per forward/backward")
    parser.add_argument("--max-batch-tokens", type=int, default=1024, help="our padded tokens per batch (0: no cap)")
    parser.add_argument("--sparsity", type=int, default=1, help="sjlt nonzeros per input coordinate")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--project-interval", type=int, default=16, help="reference: gradients per TRAK call")
    parser.add_argument("--reference-examples", type=int, default=0,
                        help="cap the reference's examples (0: all); its rate is per example")
    parser.add_argument("--reference-projection-dim", type=int, default=0,
                        help="time the reference's BasicProjector at this d (a multiple of 128) and scale its time "
                             "to --dim (its cost is linear in d); 0: project to --dim itself")
    parser.add_argument("--bergson-tokens", type=int, default=2048, help="bergson's token batch size")
    parser.add_argument("--bergson-site", default=str(Path(tempfile.gettempdir()) / "influence-bergson-site"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    parser.add_argument("--worker", choices=list(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return

    site = None
    if "bergson" in args.methods:
        site, why = bergson_site(args)
        print(f"bergson: {why}" + ("" if site else "; skipped"), flush=True)
        if site is None:
            args.methods = [m for m in args.methods if m != "bergson"]
    results = []
    for repeat in range(args.repeats):
        for rank in args.ranks:
            for method in args.methods:
                result = run_one(args, method, rank, site)
                if result:
                    results.append(result)
                    share = (f", projection {result['projection_seconds']:.1f} s"
                             if result.get("projection_seconds") is not None else "")
                    if result.get("dims"):
                        share += f", {result['dims']} dims over {result['modules']} modules"
                    print(f"  [{repeat + 1}/{args.repeats}] r={rank:<3} {method:<11} {result['examples']} ex in "
                          f"{result['seconds']:.1f} s{share}, peak {result['peak_mb'] / 1024:.2f} GB", flush=True)
    report(results, args)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
