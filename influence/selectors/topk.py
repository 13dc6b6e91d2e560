"""The one ranking rule every selector shares."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from influence.errors import SelectionError


def top_k(scores: np.ndarray, ids: Sequence[str], k: int) -> np.ndarray:
    """Indices of the k best scores, best first.

    Ties are broken by example id (a content hash), so the order does not depend on the
    pool's order; NaN scores are never selected; a repeated id is selected once.

    Raises:
        SelectionError: k is not positive or exceeds the examples that can be selected.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(ids),):
        raise ValueError(f"expected {len(ids)} scores, got shape {scores.shape}")
    if k <= 0:
        raise SelectionError(f"k must be positive, got {k}")
    if k > len(ids):
        raise SelectionError(f"k={k} is larger than the pool ({len(ids):,} examples); choose k <= {len(ids):,}")
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
