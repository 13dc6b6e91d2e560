"""Paired differences between comparison rows: item by item and seed by seed, with a hierarchical
bootstrap interval whose verdict says whether the difference excludes zero."""

from __future__ import annotations

import numpy as np
import pytest

from influence.compare.paired import (BETTER, NO_DIFFERENCE, SHARED_REFERENCE, WORSE, bootstrap_interval,
                                      lower_is_better, paired_difference)


def _row(seeds=(0, 1, 2), items=300, seed=0, shift=0.0, noise=0.0, base=None):
    """Per seed, each item's value: a shared item difficulty (so rows correlate item by item), plus a
    shift and per-run noise."""
    rng = np.random.default_rng(seed)
    difficulty = np.random.default_rng(1234).normal(2.0, 1.0, size=items)
    return {s: {f"item-{i}": float(difficulty[i] + shift + (rng.normal(0.0, noise) if noise else 0.0))
                for i in range(items)} for s in seeds}


def test_two_identical_rows_plus_symmetric_noise_have_an_interval_holding_zero():
    reference = _row()
    rng = np.random.default_rng(7)
    # noise symmetric around zero: each item's +e under one seed is a -e under another item
    noise = rng.normal(0.0, 0.05, size=150)
    signs = np.concatenate([noise, -noise])
    row = {s: {item: value + signs[(n + 37 * s) % 300] for n, (item, value) in enumerate(values.items())}
           for s, values in reference.items()}
    found = paired_difference(row, reference, lower_better=True)
    assert found.low < 0.0 < found.high
    assert found.difference == pytest.approx(0.0, abs=1e-12)
    assert found.verdict == NO_DIFFERENCE
    assert paired_difference(reference, reference, lower_better=True).verdict == NO_DIFFERENCE  # exactly equal


def test_a_planted_shift_gives_an_interval_excluding_zero_and_the_verdict_follows_the_direction():
    reference = _row(noise=0.1, seed=1)
    lower = _row(noise=0.1, seed=2, shift=-0.1)
    found = paired_difference(lower, reference, lower_better=True)
    assert found.high < 0.0 and found.difference == pytest.approx(-0.1, abs=0.02)
    assert found.verdict == BETTER                                                       # a lower loss
    assert paired_difference(lower, reference, lower_better=False).verdict == WORSE       # a lower accuracy
    assert paired_difference(reference, lower, lower_better=False).verdict == BETTER
    assert lower_is_better("target_loss") and not lower_is_better("accuracy") and not lower_is_better("f1")


def test_the_interval_is_deterministic_under_the_bootstrap_seed():
    reference, row = _row(noise=0.3, seed=3), _row(noise=0.3, seed=4, shift=0.02)
    first = paired_difference(row, reference, lower_better=True, seed=5)
    assert paired_difference(row, reference, lower_better=True, seed=5) == first
    other = paired_difference(row, reference, lower_better=True, seed=6)
    assert (other.low, other.high) != (first.low, first.high) and other.difference == first.difference
    assert first.resamples == 2000 and first.bootstrap_seed == 5 and first.level == 0.95


def test_items_pair_by_identity_not_by_order():
    reference, row = _row(noise=0.2, seed=8), _row(noise=0.2, seed=9, shift=0.05)
    order = np.random.default_rng(0).permutation(300)
    shuffled = {s: dict(list(values.items())[i] for i in order) for s, values in row.items()}
    assert list(shuffled[0]) != list(row[0])
    assert paired_difference(shuffled, reference, lower_better=True) == \
        paired_difference(row, reference, lower_better=True)
    # pairing by position instead would compare unrelated items: the item difficulty would not cancel
    by_position = np.array([[a - b for a, b in zip(shuffled[s].values(), reference[s].values())] for s in row])
    assert by_position.std() > 4 * np.array([[row[s][i] - reference[s][i] for i in row[s]] for s in row]).std()


def test_runs_without_a_partner_are_left_out_and_named_and_only_shared_items_count():
    reference = _row(seeds=(0, 1), noise=0.1, seed=10)
    row = _row(seeds=(0, 1, 2), noise=0.1, seed=11, shift=0.3)
    row[2] = {item: 100.0 for item in row[2]}  # seed 2 has no reference run: it must not count
    del row[1]["item-0"]                       # an item one evaluation lacks is left out of every seed
    found = paired_difference(row, reference, lower_better=True)
    assert found.seeds == 2 and found.unpaired == [2] and found.items == 299
    assert found.difference == pytest.approx(0.3, abs=0.03)
    assert paired_difference({5: row[0]}, reference, lower_better=True) is None  # no seed pairs
    assert paired_difference(row, {0: {"other": 1.0}, 1: {"other": 1.0}}, lower_better=True) is None


def test_the_untrained_model_pairs_with_every_seed():
    untrained = _row(seeds=(0,), seed=12)[0]
    row = _row(seeds=(0, 1, 2), noise=0.1, seed=13, shift=-0.2)
    found = paired_difference(row, {SHARED_REFERENCE: untrained}, lower_better=True)
    assert found.seeds == 3 and found.unpaired == [] and found.verdict == BETTER


def test_the_bootstrap_resamples_seeds_then_items():
    """With one seed far from the others the interval must be wide (seeds are resampled), and with one
    item far from the others too (items are resampled); a matrix with no spread has a point interval."""
    flat = np.zeros((3, 50))
    assert bootstrap_interval(flat) == (0.0, 0.0)
    seed_effect = flat.copy()
    seed_effect[0] = 1.0
    low, high = bootstrap_interval(seed_effect)
    assert low == pytest.approx(0.0) and high == pytest.approx(1.0)
    item_effect = flat.copy()
    item_effect[:, 0] = 50.0
    low, high = bootstrap_interval(item_effect)
    assert low == pytest.approx(0.0) and high >= 2.0
