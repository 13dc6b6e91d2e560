"""The one ranking rule every selector shares (and LESS's index search): top k, ties by id, k checked once."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from influence.errors import SelectionError


def check_k(k: Any, pool_size: int | None = None) -> int:
    """`k` as an int when it is a whole number in [1, pool_size]: the one check of k.

    Raises:
        SelectionError: k is not a positive integer, or exceeds `pool_size` (when given).
    """
    bounds = f"; k must be in [1, {pool_size:,}]" if pool_size is not None else ""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
        raise SelectionError(f"k must be positive, got {k!r}{bounds}")
    if pool_size is not None and k > pool_size:
        raise SelectionError(f"k={k:,} is larger than the pool ({pool_size:,} examples){bounds}")
    return int(k)


def top_k(scores: np.ndarray, ids: Sequence[Any], k: int) -> np.ndarray:
    """Indices of the k best scores, best first.

    Ties are broken by id (example ids are content hashes, so the order does not depend on
    the pool's order); NaN scores are never selected; a repeated id is selected once.

    Args:
        scores: one score per example.
        ids: one orderable key per score: the example ids.
        k: how many to select.

    Raises:
        SelectionError: k is not positive or exceeds the examples that can be selected.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(ids),):
        raise ValueError(f"expected {len(ids)} scores, got shape {scores.shape}")
    k = check_k(k, len(ids))
    valid = ~np.isnan(scores)
    id_array = np.asarray(ids)
    # lexsort sorts by the last key first: -score, then id
    order = np.lexsort((id_array[valid], -scores[valid]))
    candidates = np.flatnonzero(valid)[order]
    chosen, seen = [], set()
    for index in candidates:
        if ids[index] in seen:
            continue
        seen.add(ids[index])
        chosen.append(index)
        if len(chosen) == k:
            break
    if len(chosen) < k:
        raise SelectionError(f"only {len(chosen):,} examples have a valid score and a unique id; choose k <= "
                             f"{len(chosen):,}")
    return np.asarray(chosen, dtype=np.int64)
