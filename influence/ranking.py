"""The one ranking rule every selector shares (and LESS's index search): top k, ties by id, k checked once;
and its diversity-aware walk."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from influence.errors import InfluenceError, SelectionError


def check_k(k: Any, pool_size: int | None = None, *, error: type[InfluenceError] = SelectionError) -> int:
    """`k` as an int when it is a whole number in [1, pool_size]: the one check of k.

    `error` is the type raised: a selection's k is a SelectionError, an index search's a DataError.

    Raises:
        SelectionError (or `error`): k is not a positive integer, or exceeds `pool_size` (when given).
    """
    bounds = f"; k must be in [1, {pool_size:,}]" if pool_size is not None else ""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
        raise error(f"k must be positive, got {k!r}{bounds}")
    if pool_size is not None and k > pool_size:
        raise error(f"k={k:,} is larger than the pool ({pool_size:,} examples){bounds}")
    return int(k)


def ranked(scores: np.ndarray, ids: Sequence[Any]) -> Iterator[int]:
    """Pool indices best first: by score, ties by id; NaN never, a repeated id once.

    Ties are broken by id (example ids are content hashes, so the order does not depend on
    the pool's order).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(ids),):
        raise ValueError(f"expected {len(ids)} scores, got shape {scores.shape}")
    valid = ~np.isnan(scores)
    id_array = np.asarray(ids)
    # lexsort sorts by the last key first: -score, then id
    order = np.lexsort((id_array[valid], -scores[valid]))
    seen: set = set()
    for index in np.flatnonzero(valid)[order]:
        if ids[index] in seen:
            continue
        seen.add(ids[index])
        yield int(index)


def top_k(scores: np.ndarray, ids: Sequence[Any], k: int) -> np.ndarray:
    """Indices of the k best scores, best first, in the order of `ranked`.

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
    chosen = []
    for index in ranked(scores, ids):
        chosen.append(index)
        if len(chosen) == k:
            break
    if len(chosen) < k:
        raise SelectionError(f"only {len(chosen):,} examples have a valid score and a unique id; choose k <= "
                             f"{len(chosen):,}")
    return np.asarray(chosen, dtype=np.int64)


def diverse_top_k(scores: np.ndarray, ids: Sequence[Any], k: int, embeddings: Any, tau: float
                  ) -> tuple[np.ndarray, int, float | None]:
    """The first k examples of the ranking whose embedding has cosine at most `tau` with every one
    chosen before it (DEITA's representation filter, Liu et al., ICLR 2024), how many were skipped, and
    the largest cosine between two of those chosen (None for k=1): a `tau` at or above it changes nothing.

    Args:
        embeddings: row-indexable [N, d] (a datastore's rows); rows are L2-normalised here.
        tau: the largest cosine allowed with an example already chosen.

    Raises:
        SelectionError: bad k, or the ranking runs out before k examples are chosen.
    """
    k = check_k(k, len(ids))
    dim = int(embeddings.shape[1])
    chosen: list[int] = []
    kept = np.empty((k, dim), dtype=np.float32)
    skipped, closest = 0, None
    for index in ranked(scores, ids):
        vector = np.asarray(embeddings[index], dtype=np.float32).reshape(dim)
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        if chosen:
            nearest = float((kept[: len(chosen)] @ vector).max())
            if nearest > tau:
                skipped += 1
                continue
            closest = nearest if closest is None else max(closest, nearest)
        kept[len(chosen)] = vector
        chosen.append(index)
        if len(chosen) == k:
            break
    if len(chosen) < k:
        raise SelectionError(f"only {len(chosen):,} examples are left once those with cosine above {tau} to one "
                             f"already chosen are skipped ({skipped:,} skipped); raise the diversity threshold or "
                             f"choose k <= {len(chosen):,}")
    return np.asarray(chosen, dtype=np.int64), skipped, closest
