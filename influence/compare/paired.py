"""Paired differences between two rows of a comparison, with a hierarchical bootstrap interval.

Every row is evaluated on the same held-out items, so a row is compared with a reference item by
item: row R's run with training seed s against the reference's run with seed s (random), or against
the reference's one evaluation (the untrained model). The difference is the mean over the paired
seeds and items of (R - reference); its 95% interval comes from a bootstrap that resamples the seeds
and then the items, with a fixed number of resamples and a fixed seed, so it is deterministic.

One draw of items serves every drawn seed of a resample: the same items are measured under every
seed (a crossed design), so an item that is easy for one row is easy under all its seeds, and drawing
the items anew per seed would let that item-to-item variation average out over seeds when it does not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

RESAMPLES = 2000       # bootstrap resamples of each interval
BOOTSTRAP_SEED = 0     # the seed of the bootstrap's draws
LEVEL = 0.95           # the interval's coverage
_CHUNK = 250           # resamples drawn at once (memory: CHUNK x items counts)

BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no difference at this size"
SHARED_REFERENCE = None  # the key of a reference measured once and paired with every seed (the untrained model)

# per training seed (or SHARED_REFERENCE), each item's value: {seed: {item id: value}}
PerItem = Mapping[Any, Mapping[str, float]]


def lower_is_better(measure: str) -> bool:
    """A loss falls as a model improves; accuracy, exact match and F1 rise."""
    return measure.endswith("loss")


@dataclass(frozen=True)
class PairedDifference:
    """Row minus reference, paired by seed and item, with its bootstrap interval and what it means."""

    difference: float              # mean over paired seeds and items of (row - reference)
    low: float                     # the interval's bounds
    high: float
    verdict: str                   # better, worse, or no difference at this size
    seeds: int                     # training seeds paired
    items: int                     # items paired (those every paired evaluation measured)
    unpaired: list[Any]            # the row's runs without a reference run to pair with, left out
    resamples: int
    bootstrap_seed: int
    level: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_difference(row: PerItem, reference: PerItem, *, lower_better: bool, resamples: int = RESAMPLES,
                      seed: int = BOOTSTRAP_SEED, level: float = LEVEL) -> PairedDifference | None:
    """The row's difference to the reference over the items and seeds both measured.

    Seeds pair by their training seed; a reference holding only SHARED_REFERENCE (the untrained model)
    pairs with every seed of the row. A seed that only one side ran is left out and named in
    `unpaired`; items pair by their id, whatever their order, and only items that every paired
    evaluation measured count.

    Returns:
        None when no seed or no item pairs.
    """
    shared = set(reference) == {SHARED_REFERENCE}
    seeds = [s for s in row if shared or s in reference]
    unpaired = [s for s in row if s not in seeds]
    if not seeds:
        return None
    partners = [reference[SHARED_REFERENCE] if shared else reference[s] for s in seeds]
    common = set.intersection(*(set(row[s]) & set(p) for s, p in zip(seeds, partners)))
    items = sorted(common)
    if not items:
        return None
    differences = np.array([[row[s][i] - p[i] for i in items] for s, p in zip(seeds, partners)], dtype=np.float64)
    low, high = bootstrap_interval(differences, resamples=resamples, seed=seed, level=level)
    return PairedDifference(difference=float(differences.mean()), low=low, high=high,
                            verdict=verdict(low, high, lower_better=lower_better), seeds=len(seeds),
                            items=len(items), unpaired=unpaired, resamples=resamples, bootstrap_seed=seed,
                            level=level)


def bootstrap_interval(differences: np.ndarray, *, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of the mean of a seeds x items matrix, resampling seeds, then items.

    Each resample draws the seeds with replacement and one set of items with replacement, and takes the
    mean of the drawn cells; as counts, that mean is seed_counts @ differences @ item_counts / (S * I).
    """
    n_seeds, n_items = differences.shape
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=size)
        item_counts = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=size)
        means[start:start + size] = np.einsum("bs,si,bi->b", seed_counts, differences, item_counts) \
            / (n_seeds * n_items)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def verdict(low: float, high: float, *, lower_better: bool) -> str:
    """better or worse when the interval excludes zero (in the measure's good direction or not)."""
    if low > 0 or high < 0:
        improved = high < 0 if lower_better else low > 0
        return BETTER if improved else WORSE
    return NO_DIFFERENCE
