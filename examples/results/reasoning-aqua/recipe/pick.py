"""The recipe check's figures: each model's mean answer-only loss on the validation items, and 2e-4 minus
1e-4 with the comparison's own paired bootstrap interval (`influence.compare.paired`). Run from this folder."""
import json
import statistics

from influence.compare.paired import paired_difference


def per_item(name: str) -> dict[int, float]:
    """Item position -> loss (every file scores the same validation items in the same order)."""
    results = json.load(open(f"{name}-validation.json", encoding="utf-8"))
    return {n: p["target_loss"] for n, p in enumerate(results["predictions"])}


runs = {name: per_item(name) for name in ("base", "lr1e-4-ep2", "lr2e-4-ep2")}
for name, losses in runs.items():
    print(f"{name}: {statistics.fmean(losses.values()):.4f} over {len(losses)} items")
found = paired_difference({0: runs["lr2e-4-ep2"]}, {0: runs["lr1e-4-ep2"]}, lower_better=True)
print(f"2e-4 minus 1e-4: {found.difference:+.4f} [{found.low:+.4f}, {found.high:+.4f}] {found.verdict}")
for lr in ("1e-4", "2e-4"):
    found = paired_difference({0: runs[f"lr{lr}-ep2"]}, {0: runs["base"]}, lower_better=True)
    print(f"{lr} minus base: {found.difference:+.4f} [{found.low:+.4f}, {found.high:+.4f}] {found.verdict}")
