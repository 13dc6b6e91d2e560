"""The one ranking rule every selector shares, and its diversity-aware walk."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from influence.errors import SelectionError


def ranked(scores: np.ndarray, ids: Sequence[str]) -> Iterator[int]:
    """Pool indices best first: by score, ties by example id; NaN never, a repeated id once.

    Ties are broken by example id (a content hash), so the order does not depend on the
    pool's order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(ids),):
        raise ValueError(f"expected {len(ids)} scores, got shape {scores.shape}")
    valid = ~np.isnan(scores)
    id_array = np.asarray(ids)
    # lexsort sorts by the last key first: -score, then id
    order = np.lexsort((id_array[valid], -scores[valid]))
    seen: set[str] = set()
    for index in np.flatnonzero(valid)[order]:
        if ids[index] in seen:
            continue
        seen.add(ids[index])
        yield int(index)


def _check_k(k: int, n: int) -> None:
    if k <= 0:
        raise SelectionError(f"k must be positive, got {k}")
    if k > n:
        raise SelectionError(f"k={k} is larger than the pool ({n:,} examples); choose k <= {n:,}")


def top_k(scores: np.ndarray, ids: Sequence[str], k: int) -> np.ndarray:
    """Indices of the k best scores, best first, in the order of `ranked`.

    Raises:
        SelectionError: k is not positive or exceeds the examples that can be selected.
    """
    _check_k(k, len(ids))
    chosen = []
    for index in ranked(scores, ids):
        chosen.append(index)
        if len(chosen) == k:
            break
    if len(chosen) < k:
        raise SelectionError(f"only {len(chosen):,} examples have a valid score and a unique id; choose k <= "
                             f"{len(chosen):,}")
    return np.asarray(chosen, dtype=np.int64)


def diverse_top_k(scores: np.ndarray, ids: Sequence[str], k: int, embeddings: Any, tau: float
                  ) -> tuple[np.ndarray, int]:
    """The first k examples of the ranking whose embedding has cosine at most `tau` with every one
    chosen before it (DEITA's representation filter, Liu et al., ICLR 2024), and how many were skipped.

    Args:
        embeddings: row-indexable [N, d] (a datastore's rows); rows are L2-normalised here.
        tau: the largest cosine allowed with an example already chosen.

    Raises:
        SelectionError: bad k, or the ranking runs out before k examples are chosen.
    """
    _check_k(k, len(ids))
    dim = int(embeddings.shape[1])
    chosen: list[int] = []
    kept = np.empty((k, dim), dtype=np.float32)
    skipped = 0
    for index in ranked(scores, ids):
        vector = np.asarray(embeddings[index], dtype=np.float32).reshape(dim)
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        if chosen and float((kept[: len(chosen)] @ vector).max()) > tau:
            skipped += 1
            continue
        kept[len(chosen)] = vector
        chosen.append(index)
        if len(chosen) == k:
            break
    if len(chosen) < k:
        raise SelectionError(f"only {len(chosen):,} examples are left once those with cosine above {tau} to one "
                             f"already chosen are skipped ({skipped:,} skipped); raise the diversity threshold or "
                             f"choose k <= {len(chosen):,}")
    return np.asarray(chosen, dtype=np.int64), skipped
