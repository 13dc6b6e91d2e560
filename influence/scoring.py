"""The LESS influence score, exact, and its top-k through a FAISS index.

With pool features P_c [N, d_c] and target features T_c [M, d_c] per checkpoint c
(L2-normalised, so inner products are cosines), checkpoint weights w_c = lr_c / sum(lr),
and subtasks s (sets of target rows)::

    score(i) = max_s  mean_{j in s}  sum_c  w_c <P_c[i], T_c[j]>

The score is linear in the target side, so for each subtask it is one inner product
<p_i, u_s> of the concatenated pool vector p_i = [P_1[i], ..., P_C[i]] with the query
u_s = [w_1 mean_{j in s} T_1[j], ..., w_C mean_{j in s} T_C[j]] (the weights sit on the
target side). `less_scores` uses this in float64, chunk by chunk over pool rows;
`less_top_k` searches an inner-product index once per subtask and rescores the union of
the hits exactly. `unprojected_scores` takes the same score from cosines of unprojected
gradients with the subtask queries (`influence.features.subtask_queries`), computed during
the pool's backward. The code here takes arrays and returns arrays: no paths, no settings files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from influence.errors import ConfigError, DataError, ManifestMismatchError, SelectionError
from influence.index import EXACT_KINDS, build_index, describe_index, search
from influence.ranking import check_k, top_k

log = logging.getLogger(__name__)

DEFAULT_MEMORY_BYTES = 64 << 20  # working memory per chunk of pool rows
_FLOAT32_EPS = float(np.finfo(np.float32).eps)


# --------------------------------------------------------------------------- inputs


def _per_checkpoint(features: Any, what: str) -> list[Any]:
    """A list of [rows, d] arrays, one per checkpoint; a single 2-d array means one checkpoint."""
    shape = getattr(features, "shape", None)
    if shape is not None and len(shape) == 2:
        return [features]
    items = list(features)
    for c, item in enumerate(items):
        item_shape = getattr(item, "shape", None)
        if item_shape is None or len(item_shape) != 2:
            raise DataError(f"{what} features of checkpoint {c} must be a 2-d [examples, dim] array, "
                            f"got shape {item_shape}")
    return items


def subtask_rows(subtasks: Mapping[str, Sequence[int]], num_targets: int) -> list[tuple[str, np.ndarray]]:
    """Checked (name, sorted target rows) of every subtask.

    Raises:
        DataError: no subtasks, an empty one, or rows that are not integers in [0, num_targets).
    """
    if not isinstance(subtasks, Mapping) or not subtasks:
        raise DataError("no subtasks given; pass {'all': range(num_targets)} for a target without subtasks")
    checked = []
    for name, rows in subtasks.items():
        rows = np.asarray(list(rows))
        if rows.size == 0:
            raise DataError(f"subtask {name!r} has no target examples; drop it or add examples")
        if not np.issubdtype(rows.dtype, np.integer) or rows.ndim != 1:
            raise DataError(f"subtask {name!r}: target rows must be a list of integers")
        if rows.min() < 0 or rows.max() >= num_targets:
            raise DataError(f"subtask {name!r} refers to target row {int(rows.max() if rows.max() >= num_targets else rows.min())}, "
                            f"but the target has rows 0..{num_targets - 1}")
        checked.append((str(name), np.sort(rows)))
    return checked


def mean_max_over_subtasks(per_target: np.ndarray, subtasks: Mapping[str, Sequence[int]]) -> np.ndarray:
    """LESS's aggregation of any pairwise score: the mean over each subtask's target examples,
    then the max over subtasks.

    Args:
        per_target: [N, M], the score of each pool example against each target example.
        subtasks: subtask name -> target rows (columns of `per_target`).

    Returns:
        [N] float64.

    Raises:
        DataError: see `subtask_rows`; `per_target` is not 2-d.
    """
    per_target = np.asarray(per_target)
    if per_target.ndim != 2:
        raise DataError(f"per-target scores must be a 2-d [pool, target] array, got shape {per_target.shape}")
    out = np.full(per_target.shape[0], -np.inf)
    for _, rows in subtask_rows(subtasks, per_target.shape[1]):
        np.maximum(out, per_target[:, rows].mean(axis=1, dtype=np.float64), out=out)
    return out


def checkpoint_weights(learning_rates: Sequence[float]) -> np.ndarray:
    """w_c = lr_c / sum(lr), float64.

    Raises:
        ConfigError: no learning rates, a negative or non-finite one, or all zero.
    """
    lrs = np.asarray(learning_rates, dtype=np.float64).reshape(-1)
    if lrs.size == 0:
        raise ConfigError("no checkpoint learning rates given; the warmup run must record one per checkpoint")
    if not np.isfinite(lrs).all() or (lrs < 0).any() or lrs.sum() <= 0:
        raise ConfigError(f"checkpoint learning rates must be finite, non-negative and not all zero, got "
                          f"{lrs.tolist()}")
    return lrs / lrs.sum()


@dataclass(frozen=True)
class Problem:
    """Validated LESS inputs: per-checkpoint pool features, and one query per subtask."""

    pool: list[Any]              # per checkpoint, [N, d_c], possibly memory-mapped
    subtasks: list[str]          # names, in the order of the queries
    queries: np.ndarray          # [S, sum d_c] float64, checkpoint weights folded in
    dims: list[int]
    num_rows: int

    def queries_of(self, checkpoint: int) -> np.ndarray:
        start = sum(self.dims[:checkpoint])
        return self.queries[:, start: start + self.dims[checkpoint]]


def scoring_problem(pool_features: Any, target_features: Any, learning_rates: Sequence[float],
            subtasks: Mapping[str, Sequence[int]]) -> Problem:
    """Check the inputs agree and build the subtask queries u_s.

    Raises:
        DataError: a target with no examples, an empty or out-of-range subtask, a pool with no rows.
        ManifestMismatchError: checkpoint counts, pool sizes or dimensions disagree.
        ConfigError: bad learning rates.
    """
    pool = _per_checkpoint(pool_features, "pool")
    target = _per_checkpoint(target_features, "target")
    weights = checkpoint_weights(learning_rates)
    if not (len(pool) == len(target) == len(weights)):
        raise ManifestMismatchError(
            f"checkpoint counts disagree: pool features for {len(pool)}, target features for {len(target)}, "
            f"{len(weights)} learning rate(s); featurize the pool and the target at the same checkpoints")
    sizes = {int(p.shape[0]) for p in pool}
    if len(sizes) != 1:
        raise ManifestMismatchError(f"the pool has a different number of rows per checkpoint "
                                    f"({[int(p.shape[0]) for p in pool]}); featurize every checkpoint over the same pool")
    (num_rows,) = sizes
    if num_rows == 0:
        raise DataError("the pool has no examples to score")
    counts = {int(t.shape[0]) for t in target}
    if len(counts) != 1:
        raise ManifestMismatchError(f"the target has a different number of rows per checkpoint "
                                    f"({[int(t.shape[0]) for t in target]}); featurize every checkpoint over the same target")
    (num_targets,) = counts
    if num_targets == 0:
        raise DataError("the target has no examples; LESS needs at least one target example per subtask")
    dims = []
    for c, (p, t) in enumerate(zip(pool, target)):
        if p.shape[1] != t.shape[1]:
            raise ManifestMismatchError(f"checkpoint {c}: pool features have dimension {p.shape[1]} but target "
                                        f"features {t.shape[1]}; use features made with the same projector")
        dims.append(int(p.shape[1]))
    names, queries = [], []
    for name, rows in subtask_rows(subtasks, num_targets):
        parts = [w * np.asarray(t[rows], dtype=np.float64).mean(axis=0) for w, t in zip(weights, target)]
        names.append(name)
        queries.append(np.concatenate(parts))
    queries = np.stack(queries)
    if not np.isfinite(queries).all():
        raise DataError("target features contain NaN or inf; featurize the target again")
    return Problem(pool=pool, subtasks=names, queries=queries, dims=dims, num_rows=num_rows)


def _chunk_rows(problem: Problem, memory_bytes: int) -> int:
    per_row = 8 * (max(problem.dims) + 2 * len(problem.subtasks)) + 8
    return max(1, int(memory_bytes) // per_row)


def _subtask_block(problem: Problem, rows: Any) -> np.ndarray:
    """[len(rows), S] float64 subtask scores of pool `rows` (a slice or an index array)."""
    out = None
    for c, pool in enumerate(problem.pool):
        block = np.asarray(pool[rows], dtype=np.float64) @ problem.queries_of(c).T
        out = block if out is None else out + block
    return out


def _iter_subtask_scores(problem: Problem, memory_bytes: int) -> Iterator[tuple[int, np.ndarray]]:
    step = _chunk_rows(problem, memory_bytes)
    for start in range(0, problem.num_rows, step):
        stop = min(start + step, problem.num_rows)
        yield start, _subtask_block(problem, slice(start, stop))


# --------------------------------------------------------------------------- exact scores


def subtask_scores(pool_features: Any, target_features: Any, learning_rates: Sequence[float],
                   subtasks: Mapping[str, Sequence[int]], *,
                   memory_bytes: int = DEFAULT_MEMORY_BYTES) -> tuple[list[str], np.ndarray]:
    """Each pool example's score for each subtask, before the max: (names, [N, S] float64)."""
    problem = scoring_problem(pool_features, target_features, learning_rates, subtasks)
    out = np.empty((problem.num_rows, len(problem.subtasks)), dtype=np.float64)
    for start, block in _iter_subtask_scores(problem, memory_bytes):
        out[start: start + len(block)] = block
    return problem.subtasks, out


def less_scores(pool_features: Any, target_features: Any, learning_rates: Sequence[float],
                subtasks: Mapping[str, Sequence[int]], *, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> np.ndarray:
    """The exact LESS score of every pool example, float64 [N].

    Pool rows are read in chunks of about `memory_bytes` of float64, so memory-mapped
    features larger than memory work.

    Args:
        pool_features: per checkpoint, [N, d_c] (a single 2-d array means one checkpoint).
        target_features: per checkpoint, [M, d_c], same checkpoints in the same order.
        learning_rates: per checkpoint, the learning rate its weight is proportional to.
        subtasks: subtask name -> target rows (use {"all": range(M)} for no subtasks).
        memory_bytes: working memory per chunk.

    Raises:
        DataError, ManifestMismatchError, ConfigError: see `scoring_problem`.
    """
    problem = scoring_problem(pool_features, target_features, learning_rates, subtasks)
    out = np.empty(problem.num_rows, dtype=np.float64)
    for start, block in _iter_subtask_scores(problem, memory_bytes):
        out[start: start + len(block)] = block.max(axis=1)
    return out


def _unprojected_blocks(cosines: Sequence[Sequence[Any]], learning_rates: Sequence[float],
                        memory_bytes: int) -> tuple[int, Iterator[tuple[slice, np.ndarray]]]:
    """Check the inputs of `unprojected_scores`; the pool's row count and its (rows, [rows, S] float64
    subtask scores) chunks."""
    weights = checkpoint_weights(learning_rates)
    if len(cosines) != len(weights):
        raise ManifestMismatchError(f"cosines for {len(cosines)} checkpoint(s) but {len(weights)} learning rate(s); "
                                    "take them at the same checkpoints")
    shapes = [[tuple(int(x) for x in group.shape) for group in groups] for groups in cosines]
    if not shapes or not shapes[0] or any(s != shapes[0] for s in shapes) or len({s[0] for s in shapes[0]}) != 1:
        raise ManifestMismatchError(f"the cosine arrays disagree across checkpoints or groups ({shapes}); take every "
                                    "checkpoint over the same pool and subtasks")
    num_rows = shapes[0][0][0]
    if num_rows == 0:
        raise DataError("the pool has no examples to score")
    width = sum(s[1] for s in shapes[0])
    step = max(1, int(memory_bytes) // (16 * width + 8))

    def blocks() -> Iterator[tuple[slice, np.ndarray]]:
        for start in range(0, num_rows, step):
            rows = slice(start, min(start + step, num_rows))
            yield rows, sum(w * np.concatenate([np.asarray(g[rows], dtype=np.float64) for g in groups], axis=1)
                            for w, groups in zip(weights, cosines))

    return num_rows, blocks()


def unprojected_scores(cosines: Sequence[Sequence[Any]], learning_rates: Sequence[float], *,
                       memory_bytes: int = DEFAULT_MEMORY_BYTES) -> np.ndarray:
    """The exact LESS score from precomputed subtask cosines, float64 [N].

    ``cosines[c][g]`` is [N, S_g]: at checkpoint c, each pool example's cosine with the
    queries of the subtasks in group g (the same groups, in the same order, at every
    checkpoint). The score is ``max_s sum_c w_c cos_c[:, s]``: the definition above with
    unprojected gradients, the mean over a subtask already inside its query.

    Raises:
        ManifestMismatchError: checkpoints, groups or row counts disagree.
        ConfigError: bad learning rates.
    """
    num_rows, blocks = _unprojected_blocks(cosines, learning_rates, memory_bytes)
    out = np.empty(num_rows, dtype=np.float64)
    for rows, total in blocks:
        out[rows] = total.max(axis=1)
    return out


def unprojected_subtask_scores(cosines: Sequence[Sequence[Any]], learning_rates: Sequence[float], *,
                               memory_bytes: int = DEFAULT_MEMORY_BYTES) -> np.ndarray:
    """`unprojected_scores` before the max: each pool example's score per subtask, [N, S] float32,
    columns in the groups' order. Per-target-example similarities do not exist for this score:
    its queries are subtask means of the target gradients. Raises as `unprojected_scores`."""
    num_rows, blocks = _unprojected_blocks(cosines, learning_rates, memory_bytes)
    out = np.empty((num_rows, sum(int(g.shape[1]) for g in cosines[0])), dtype=np.float32)
    for rows, total in blocks:
        out[rows] = total
    return out


def pairwise_scores(pool_features: Any, target_features: Any, learning_rates: Sequence[float], *,
                    memory_bytes: int = DEFAULT_MEMORY_BYTES) -> np.ndarray:
    """Each pool example's score with each target example, ``sum_c w_c <P_c[i], T_c[j]>``, [N, M] float32.

    The LESS score before the mean over a subtask (for one checkpoint of weight 1, the cosine of
    RDS or sentence-embedding features). Computed in float64 a chunk of pool rows at a time;
    the result holds N x M float32.

    Raises:
        DataError, ManifestMismatchError, ConfigError: as `scoring_problem`.
    """
    num_targets = int(_per_checkpoint(target_features, "target")[0].shape[0])
    if num_targets == 0:
        raise DataError("the target has no examples")
    # one subtask per target example: the queries are then the weighted target rows themselves
    problem = scoring_problem(pool_features, target_features, learning_rates,
                              {str(j): [j] for j in range(num_targets)})
    out = np.empty((problem.num_rows, num_targets), dtype=np.float32)
    for start, block in _iter_subtask_scores(problem, memory_bytes):
        out[start: start + len(block)] = block
    return out


# --------------------------------------------------------------------------- top-k by index


@dataclass
class LessTopK:
    """The k best pool examples by LESS score, and how they were found.

    `candidates` (with `candidate_scores`, exact) are every row any subtask search
    returned; when `exact` is true every other row scores strictly below the k-th best,
    so ranking the candidates alone (ties included) gives the same top k as ranking the
    whole pool.
    """

    indices: np.ndarray            # [k] int64, best first (ties: by id, else by row)
    scores: np.ndarray             # [k] float64 exact LESS scores
    candidates: np.ndarray         # int64, ascending
    candidate_scores: np.ndarray   # float64, exact
    exact: bool
    searched_k: int                # hits asked per subtask in the last search


class _ConcatenatedRows:
    """Row-sliceable [N, sum d_c] float32 view of per-checkpoint features, built chunk by chunk."""

    def __init__(self, pool: list[Any]):
        self._pool = pool
        self.shape = (int(pool[0].shape[0]), sum(int(p.shape[1]) for p in pool))

    def __getitem__(self, rows: Any) -> np.ndarray:
        return np.concatenate([np.asarray(p[rows], dtype=np.float32) for p in self._pool], axis=1)


def concatenated_pool(pool_features: Any) -> _ConcatenatedRows:
    """The pool as one [N, sum d_c] row-sliceable array, for `influence.index.build_index`."""
    return _ConcatenatedRows(_per_checkpoint(pool_features, "pool"))


def less_top_k(pool_features: Any, target_features: Any, learning_rates: Sequence[float],
               subtasks: Mapping[str, Sequence[int]], k: int, *, index: Any = None, index_kind: str = "flat",
               device: str = "auto", ids: Sequence[str] | None = None, margin: int | None = None,
               memory_bytes: int = DEFAULT_MEMORY_BYTES, **index_options: Any) -> LessTopK:
    """The k best pool examples by LESS score: one index search per subtask, exact rescoring.

    An example in the true top k has its best subtask's score at or above the k-th best
    score, so it is in that subtask's top k: the union of the per-subtask top-k hits holds
    the answer. Searches ask for k + `margin` hits; the rescored candidates prove the
    answer exact when the k-th best exact score beats every subtask's lowest hit plus a
    bound on float32 rounding, otherwise the search is repeated with twice the hits.
    With an approximate index kind the result is the best found, ``exact=False``.

    Args:
        pool_features, target_features, learning_rates, subtasks: as for `less_scores`.
        k: examples to return.
        index: a prebuilt index over the concatenated pool (`concatenated_pool`), rows in
            pool order; built here (kind `index_kind`, on `device`) when None.
        ids: example ids, to break ties as `influence.ranking.top_k` does.
        margin: extra hits per subtask search (default max(16, k // 8)).
        **index_options: passed to `build_index` (e.g. nlist, nprobe for "ivf-flat").

    Raises:
        SelectionError: k is not in [1, N].
        DataError, ManifestMismatchError, ConfigError: see `scoring_problem`; an index that does
            not match the pool.
    """
    problem = scoring_problem(pool_features, target_features, learning_rates, subtasks)
    n = problem.num_rows
    k = check_k(k, n)
    if ids is not None and len(ids) != n:
        raise DataError(f"got {len(ids):,} ids for a pool of {n:,} examples")
    total_dim = sum(problem.dims)
    if index is None:
        index = build_index(concatenated_pool(problem.pool), index_kind, device=device, **index_options)
        exact_index = index_kind in EXACT_KINDS
    else:
        if int(index.d) != total_dim or int(index.ntotal) != n:
            raise DataError(f"the index holds {int(index.ntotal):,} vectors of dimension {int(index.d)}, but the "
                            f"pool has {n:,} of {total_dim} (all checkpoints concatenated); rebuild the index")
        kind = describe_index(index)["kind"]
        if kind == "other":
            raise DataError(f"less_top_k needs an inner-product index from influence.index.build_index, got "
                            f"{type(index).__name__}")
        exact_index = kind in EXACT_KINDS
    # Bound on |float32 search score - exact score|, per subtask: rows are concatenations of
    # unit vectors (norm sqrt(C)); rounding grows like sqrt(D) in blocked BLAS sums, and the
    # factor 8 and the observed error keep a wide safety margin.
    row_norm = np.sqrt(len(problem.pool)) * 1.01
    rounding = 8 * np.sqrt(total_dim) * _FLOAT32_EPS * row_norm * np.linalg.norm(problem.queries, axis=1)
    queries32 = problem.queries.astype(np.float32)
    searched = min(n, k + (max(16, k // 8) if margin is None else int(margin)))
    while True:
        hit_scores, hit_ids = search(index, queries32, searched)
        candidates = np.unique(hit_ids[hit_ids >= 0])
        exact_block = _subtask_block(problem, candidates) if len(candidates) else np.empty((0, len(queries32)))
        candidate_scores = exact_block.max(axis=1)
        certified = searched >= n
        if exact_index and not certified and len(candidates) >= k:
            observed = np.zeros(len(queries32))
            position = np.searchsorted(candidates, np.where(hit_ids >= 0, hit_ids, candidates[0]))
            for s in range(len(queries32)):
                valid = hit_ids[s] >= 0
                observed[s] = np.abs(hit_scores[s][valid] - exact_block[position[s][valid], s]).max(initial=0.0)
            kth = np.partition(candidate_scores, len(candidates) - k)[len(candidates) - k]
            bound = hit_scores[:, -1].astype(np.float64) + rounding + 2 * observed
            certified = bool(kth > bound.max())
        if certified or not exact_index:
            break
        searched = min(n, 2 * searched)
        log.info("LESS top-k: widening the per-subtask search to %d hits", searched)
    if len(candidates) < k:
        raise SelectionError(f"the index returned only {len(candidates):,} examples for k={k:,}; use an exact "
                             f"index kind (flat) or search more cells (nprobe)")
    order = top_k(candidate_scores, [ids[i] for i in candidates] if ids is not None else candidates, k)
    return LessTopK(indices=candidates[order], scores=candidate_scores[order], candidates=candidates,
                    candidate_scores=candidate_scores, exact=bool(exact_index and certified), searched_k=searched)
