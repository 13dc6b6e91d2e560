"""Evaluation speed: `influence evaluate` before and after prefix reuse and cached, stopping generation.

"Before" is the package as it was at a baseline commit (default: the last one before these
changes), unpacked with `git archive` into a temporary directory; "after" is this checkout.
Each case runs both ways as `python -m influence.cli evaluate ...` subprocesses, interleaved,
on the same items (a seeded --limit subset), and the script prints wall time (model loading
included), the speed-up, and whether the numbers agree: the largest per-item difference in
target loss and the share of items with the same prediction.

    python benchmarks/eval_speed.py                              # the four cases below, bundled model
    python benchmarks/eval_speed.py --cases tydiqa mmlu          # some of them
    python benchmarks/eval_speed.py --tiny --cases tydiqa bbh    # a smoke test on a tiny random model

Cases:
- mmlu: 5-shot MMLU, --limit 200 (target loss and accuracy by option log-likelihood; no generation);
- bbh: BBH without exemplars, --limit 100 (target loss and short greedy answers);
- bbh-cot: BBH with its 3-shot chain-of-thought prompt, --limit 20 (answers of up to 256 tokens);
- tydiqa: TyDi QA, --limit 20 (only 4 held-out items ship offline, so all 4; --qa-file FILE adds a
  case on a GoldP file of your own).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "85f2635"   # the last commit before prefix reuse and cached, stopping generation
CASES = {
    "mmlu": ["--target", "mmlu", "--limit", "200"],
    "bbh": ["--target", "bbh", "--limit", "100"],
    "bbh-cot": ["--target", "bbh", "--cot", "--limit", "20"],
    "tydiqa": ["--target", "tydiqa", "--limit", "20"],
}


def unpack_baseline(ref: str, into: Path) -> Path:
    """The `influence` package at git revision `ref`, extracted under `into`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref, "influence"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_case(code: Path, args: list[str], out: Path, model: str | None) -> tuple[float, dict[str, Any]]:
    """Wall seconds of one `influence evaluate` run with the package found at `code`, and its results."""
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "influence.cli", "evaluate", *args, "--out", str(out)]
    if model:
        command += ["--model", model]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (PYTHONPATH={code}):\n{done.stderr[-3000:]}")
    return seconds, json.loads(out.read_text(encoding="utf-8"))


def agreement(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """How far the two runs' per-item numbers are apart."""
    pairs = list(zip(before["predictions"], after["predictions"]))
    loss = max((abs(a["target_loss"] - b["target_loss"]) for a, b in pairs), default=0.0)
    same = sum(a["prediction"] == b["prediction"] for a, b in pairs)
    metric = before["primary_metric"]
    return {"items": len(pairs), "max_loss_difference": loss, "same_predictions": same, "metric": metric,
            "before": before["metrics"].get(metric), "after": after["metrics"].get(metric),
            "target_loss_before": before["metrics"]["target_loss"],
            "target_loss_after": after["metrics"]["target_loss"]}


def tiny_model(into: Path) -> str:
    """A tiny random model saved as a directory (for a smoke test of this script, not for figures)."""
    from influence.testing import tiny_model_and_tokenizer

    model, tokenizer = tiny_model_and_tokenizer()
    model.save_pretrained(into)
    tokenizer.save_pretrained(into)
    return str(into)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--baseline", default=BASELINE, help="git revision measured as 'before'")
    parser.add_argument("--model", default=None, help="model spec or directory [default: the bundled model]")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model: a smoke test of the script")
    parser.add_argument("--limit", type=int, default=None, help="replace every case's --limit")
    parser.add_argument("--qa-file", default=None, help="also time a question-answering file (TyDi GoldP form)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table as JSON here")
    args = parser.parse_args()

    cases = {name: list(CASES[name]) for name in args.cases}
    if args.qa_file:
        cases["qa-file"] = ["--target", args.qa_file, "--limit", "20"]
    if args.limit is not None:
        for case in cases.values():
            case[case.index("--limit") + 1] = str(args.limit)
    rows = []
    with tempfile.TemporaryDirectory(prefix="eval_speed_") as tmp:
        work = Path(tmp)
        baseline = unpack_baseline(args.baseline, work / "baseline")
        model = tiny_model(work / "tiny") if args.tiny else args.model
        print(f"before: {args.baseline} ({baseline}); after: {ROOT}; model: {model or 'bundled default'}; "
              f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
        for name, case in cases.items():
            timing = {}
            for label, code in (("before", baseline), ("after", ROOT)):
                timing[label], results = run_case(code, case, work / f"{name}-{label}.json", model)
                timing[label + "_results"] = results
                print(f"  {name:8s} {label:6s} {timing[label]:8.1f} s", flush=True)
            rows.append({"case": name, "args": " ".join(case), "before_s": round(timing["before"], 1),
                         "after_s": round(timing["after"], 1), "speedup": timing["before"] / timing["after"],
                         **agreement(timing["before_results"], timing["after_results"])})

    print(f"\n{'case':8s} {'items':>5s} {'before s':>9s} {'after s':>8s} {'speed-up':>8s} {'max |dloss|':>11s} "
          f"{'same pred':>9s}  metric before -> after")
    for row in rows:
        print(f"{row['case']:8s} {row['items']:5d} {row['before_s']:9.1f} {row['after_s']:8.1f} "
              f"{row['speedup']:7.2f}x {row['max_loss_difference']:11.2e} {row['same_predictions']:>4d}/"
              f"{row['items']:<4d}  {row['metric']} {_number(row['before'])} -> {_number(row['after'])}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    main()
