"""Selection algorithms: how k pool examples are chosen from their scores, a separate axis from the scores.

`top-k` ranks one aggregated score per pool example (LESS's mean over each subtask's
target examples, then the max over subtasks). `round-robin` and `uot` need more: the
[pool, target] similarity matrix (`Similarities`), which the targeted selectors that
score one pair at a time (less, rds, embed, bm25) keep when asked.

    round-robin  each target example (or subtask) in turn takes its most similar pool example
                 not yet chosen (Nayak et al., arXiv 2602.14696, their released `round_robin.py`)
    uot          entropic unbalanced optimal transport from the target examples (each sends 1/M,
                 exactly) to the pool (a loose uniform marginal); pool examples ranked by the mass
                 they receive (the same paper's `uot.py`, through POT)

The code takes arrays and returns arrays; the registry `ALGORITHMS` is keyed by the CLI names.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from influence.errors import ConfigError, SelectionError, UnknownNameError
from influence.ranking import check_k, top_k

log = logging.getLogger(__name__)

TARGET, SUBTASK = "target", "subtask"   # what a similarity column stands for
COLUMN_UNITS = (TARGET, SUBTASK)
# The memory an algorithm may hold for the [pool, columns] similarities: 4 GiB is round-robin's float32
# matrix of a 1M pool against 1,000 target examples, or UOT's (about 52 bytes a pair) for 80k x 1,000.
# Past it the selection is refused before scoring: use top-k, a smaller pool (a prefilter) or fewer
# target examples.
SIMILARITY_BUDGET_BYTES = 4 << 30


@dataclass(frozen=True)
class Similarities:
    """Each pool example's similarity with each target example, or with each subtask where the
    score keeps no per-example similarity (LESS's exact score: its queries are subtask means).

    `values` [N, C] float32, higher is more similar, NaN never chosen; `columns` the unit of a
    column (`target` or `subtask`); `names` the columns' labels (target example ids or subtask
    names); `subtasks` subtask name -> its columns; `bounded` whether values are cosines in [-1, 1].
    """

    values: np.ndarray
    columns: str
    names: tuple[str, ...]
    subtasks: Mapping[str, Sequence[int]]
    bounded: bool = True

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float32)
        if values.ndim != 2 or values.shape[1] != len(self.names):
            raise ValueError(f"expected a [pool, {len(self.names)}] similarity matrix, got shape {values.shape}")
        if self.columns not in COLUMN_UNITS:
            raise ValueError(f"columns must be one of {COLUMN_UNITS}, got {self.columns!r}")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "names", tuple(self.names))

    def per_subtask(self) -> "Similarities":
        """One column per subtask: the mean over its target examples (the LESS score before the max)."""
        if self.columns == SUBTASK:
            return self
        names = list(self.subtasks)
        values = np.stack([self.values[:, np.asarray(self.subtasks[name])].mean(axis=1, dtype=np.float64)
                           for name in names], axis=1)
        return Similarities(values, SUBTASK, tuple(names), {name: [i] for i, name in enumerate(names)}, self.bounded)

    def aggregate(self) -> np.ndarray:
        """LESS's score from the matrix: mean over each subtask's columns, max over subtasks, [N] float64."""
        per_subtask = self.per_subtask().values.astype(np.float64)
        with np.errstate(invalid="ignore"):
            return per_subtask.max(axis=1)

    def describe(self) -> dict[str, Any]:
        return {"columns": self.columns, "count": len(self.names), "pool": int(self.values.shape[0]),
                "bounded": self.bounded}


def check_similarity_size(pool_size: int, columns: int, *, bytes_per_value: int = 4,
                          budget: int = SIMILARITY_BUDGET_BYTES) -> None:
    """Refuse, before any scoring, similarities that would take more than `budget` bytes to hold.

    Raises:
        SelectionError: pool_size x columns x bytes_per_value exceeds the budget.
    """
    need = int(pool_size) * int(columns) * bytes_per_value
    if need > budget:
        raise SelectionError(f"this algorithm needs {need / 2**30:.1f} GiB for the {pool_size:,} x {columns:,} "
                             f"[pool, target] similarities, more than the {budget / 2**30:.0f} GiB allowed; use "
                             "--algorithm top-k, a smaller pool, or fewer target examples")


def _id_ranks(ids: Sequence[Any]) -> np.ndarray:
    """Each id's rank in sorted order (equal ids share one): the tie-break every ranking here uses."""
    _, inverse = np.unique(np.asarray(ids), return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def _column_order(column: np.ndarray, id_ranks: np.ndarray, depth: int) -> np.ndarray:
    """Pool rows of the best `depth` valid values of `column`, best first, ties by id (all tied at the cut kept)."""
    valid = np.flatnonzero(~np.isnan(column))
    if depth < len(valid):
        cut = np.partition(column[valid], len(valid) - depth)[len(valid) - depth]
        valid = valid[column[valid] >= cut]
    return valid[np.lexsort((id_ranks[valid], -column[valid].astype(np.float64)))]


def round_robin(values: np.ndarray, ids: Sequence[Any], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns take turns, in column order, each taking its most similar pool row not yet chosen.

    As Nayak et al.'s code does: the turns cycle over the columns in their order (the target's
    example order), a row already taken by an earlier turn is passed over (it counts once, for
    the column whose turn came first), and the picks come out in the order they were taken.
    Ties go to the smaller id (the reference takes the first row; ids do not depend on the
    pool's order). A column with no valid row left loses its turns.

    Returns:
        The chosen rows in pick order, and the column each was picked for.

    Raises:
        SelectionError: bad k, or fewer than k rows with a valid similarity and a unique id.
    """
    values = np.asarray(values)
    n, width = values.shape
    k = check_k(k, n)
    ranks = _id_ranks(ids)
    depth = min(n, k)  # a column passes over at most the k - 1 rows others took before its own picks
    orders: list[np.ndarray] = []
    # a column of a row-major matrix is a strided read: copy blocks of columns to rows of about 64 MB
    block = max(1, (64 << 20) // (4 * max(n, 1)))
    for start in range(0, width, block):
        part = np.ascontiguousarray(values[:, start: start + block].T)
        orders += [_column_order(column, ranks, depth) for column in part]
    depths = [depth] * width
    pointers = [0] * width
    taken_rows = np.zeros(n, dtype=bool)
    taken_ids: set = set()
    picks: list[int] = []
    owners: list[int] = []
    live = [c for c in range(width) if len(orders[c])]
    while len(picks) < k and live:
        still = []
        for c in live:
            if len(picks) == k:
                still.append(c)
                continue
            row = _next_free(c, values, ranks, orders, depths, pointers, taken_rows, taken_ids, ids)
            if row is None:
                continue
            taken_rows[row] = True
            taken_ids.add(ids[row])
            picks.append(row)
            owners.append(c)
            still.append(c)
        live = still
    if len(picks) < k:
        raise SelectionError(f"only {len(picks):,} examples have a valid similarity and a unique id; choose k <= "
                             f"{len(picks):,}")
    return np.asarray(picks, dtype=np.int64), np.asarray(owners, dtype=np.int64)


def _next_free(c: int, values: np.ndarray, ranks: np.ndarray, orders: list[np.ndarray], depths: list[int],
               pointers: list[int], taken_rows: np.ndarray, taken_ids: set, ids: Sequence[Any]) -> int | None:
    """Column c's best row not yet taken (and whose id is not taken), or None; deepens its order when spent."""
    n = len(taken_rows)
    while True:
        order = orders[c]
        while pointers[c] < len(order):
            row = int(order[pointers[c]])
            pointers[c] += 1
            if not taken_rows[row] and ids[row] not in taken_ids:
                return row
        if depths[c] >= n:
            return None
        # passed-over duplicates of taken ids used up the prefix: take a deeper one, skipping what was read
        seen = len(order)
        depths[c] = min(n, 2 * depths[c])
        orders[c] = _column_order(values[:, c], ranks, depths[c])
        pointers[c] = seen if len(orders[c]) > seen else len(orders[c])


def uot_masses(values: np.ndarray, *, eps: float, target_marginal: float, pool_marginal: float,
               max_iterations: int = 1000) -> np.ndarray:
    """The mass each pool row receives in entropic unbalanced optimal transport from the columns, [N] float64.

    Cost (1 - s) / 2 for similarity s in [-1, 1]; each column sends 1/C (a KL penalty of
    `target_marginal` on its marginal, inf: exact); the pool's marginal is uniform with the KL
    penalty `pool_marginal` (small: loose). A row with a NaN similarity gets NaN.
    """
    # optional dependency (the `ot` extra), imported on use
    from ot.unbalanced import sinkhorn_unbalanced

    values = np.asarray(values, dtype=np.float64)
    invalid = np.isnan(values).any(axis=1)
    cost = (1.0 - np.where(np.isnan(values), -1.0, np.clip(values, -1.0, 1.0))) / 2.0
    n, width = values.shape
    plan = sinkhorn_unbalanced(np.full(width, 1.0 / width), np.full(n, 1.0 / n), cost.T, reg=eps,
                               reg_m=(target_marginal, pool_marginal), reg_type="kl", numItermax=max_iterations)
    masses = np.asarray(plan, dtype=np.float64).sum(axis=0)
    masses[invalid] = np.nan
    return masses


# --------------------------------------------------------------------------- the algorithms, by name


@dataclass(frozen=True)
class TopK:
    """The k best aggregated scores (LESS: mean over each subtask, max over subtasks), ties by id."""

    name: str = field(default="top-k", init=False)
    pairwise: bool = field(default=False, init=False)

    def choose(self, scores: np.ndarray, ids: Sequence[Any], k: int, similarities: Similarities | None
               ) -> tuple[np.ndarray, dict[str, Any]]:
        return top_k(scores, ids, k), self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ranks": "the aggregated score"}


def _over_columns(similarities: Similarities, over: str) -> tuple[Similarities, dict[str, Any]]:
    """`similarities` with one column per `over` (target example or subtask), and what was used.

    A score with subtask columns only (LESS exact scoring) serves `over=target` by subtask,
    logged and recorded.
    """
    if over == SUBTASK:
        return similarities.per_subtask(), {"over": SUBTASK}
    if similarities.columns == SUBTASK:
        log.warning("these scores keep one similarity per subtask, not per target example (LESS's exact score "
                    "uses subtask-mean target gradients); the algorithm runs over subtasks")
        return similarities, {"over": SUBTASK, "requested": TARGET,
                              "reason": "the score keeps per-subtask similarities only"}
    return similarities, {"over": TARGET}


def _require(similarities: Similarities | None, name: str) -> Similarities:
    if similarities is None:
        raise SelectionError(f"algorithm {name!r} needs the selector's per-target similarities, and it gave none")
    return similarities


@dataclass(frozen=True)
class RoundRobin:
    """Target examples (or subtasks) take turns choosing their most similar pool example not yet chosen."""

    over: str = field(default=TARGET, metadata={
        "help": "round-robin: turns go to each target example (as Nayak et al.'s code) or to each subtask "
                "(the mean over its examples).", "choices": COLUMN_UNITS})
    name: str = field(default="round-robin", init=False)
    pairwise: bool = field(default=True, init=False)
    bytes_per_pair: int = field(default=4, init=False)  # the float32 matrix

    def __post_init__(self) -> None:
        if self.over not in COLUMN_UNITS:
            raise ConfigError(f"round-robin turns go over one of {', '.join(COLUMN_UNITS)}, got {self.over!r}")

    def choose(self, scores: np.ndarray, ids: Sequence[Any], k: int, similarities: Similarities | None
               ) -> tuple[np.ndarray, dict[str, Any]]:
        used, record = _over_columns(_require(similarities, self.name), self.over)
        picks, owners = round_robin(used.values, ids, k)
        counts = np.bincount(owners, minlength=len(used.names))
        return picks, {**self.to_dict(), **record, "columns": len(used.names),
                       "picks_per_column": {"min": int(counts.min()), "max": int(counts.max())},
                       "order": "column order; ties by id"}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "over": self.over}


@dataclass(frozen=True)
class Uot:
    """Unbalanced optimal transport from the target examples to the pool; the k pool examples that
    receive the most mass (Nayak et al.'s defaults: eps 0.01, exact target marginal, pool 1e-4)."""

    eps: float = field(default=0.01, metadata={"help": "uot: entropic regularisation of the transport."})
    target_marginal: float = field(default=math.inf, metadata={
        "help": "uot: KL penalty on the target side's marginal (inf: every target example sends exactly 1/M)."})
    pool_marginal: float = field(default=1e-4, metadata={
        "help": "uot: KL penalty on the pool side's uniform marginal (small: mass goes where it is cheapest)."})
    over: str = field(default=TARGET, metadata={"help": "uot: transport from each target example or each subtask.",
                                                "choices": COLUMN_UNITS})
    name: str = field(default="uot", init=False)
    pairwise: bool = field(default=True, init=False)
    # the float32 matrix, and POT's dense float64 cost, kernel, plan and temporaries: about six of them
    bytes_per_pair: int = field(default=4 + 6 * 8, init=False)

    def __post_init__(self) -> None:
        if not self.eps > 0 or not math.isfinite(self.eps):
            raise ConfigError(f"uot eps must be a positive number, got {self.eps}")
        for what, value in (("target_marginal", self.target_marginal), ("pool_marginal", self.pool_marginal)):
            if not value > 0:
                raise ConfigError(f"uot {what} must be positive (inf for an exact marginal), got {value}")
        if self.over not in COLUMN_UNITS:
            raise ConfigError(f"uot transports from one of {', '.join(COLUMN_UNITS)}, got {self.over!r}")
        if importlib.util.find_spec("ot") is None:
            raise ConfigError("--algorithm uot needs the POT package; pip install 'influence[ot]' (or pot)")

    def choose(self, scores: np.ndarray, ids: Sequence[Any], k: int, similarities: Similarities | None
               ) -> tuple[np.ndarray, dict[str, Any]]:
        used, record = _over_columns(_require(similarities, self.name), self.over)
        values, scaled = used.values, None
        if not used.bounded:
            # the cost (1 - s) / 2 wants cosines: a score without a bound (BM25) is divided by each column's max
            peak = np.nanmax(np.abs(values), axis=0)
            values = values / np.where(peak > 0, peak, 1.0)
            scaled = "each column divided by its largest absolute value"
        masses = uot_masses(values, eps=self.eps, target_marginal=self.target_marginal,
                            pool_marginal=self.pool_marginal)
        return top_k(masses, ids, k), {**self.to_dict(), **record, "columns": len(used.names),
                                       "cost": "(1 - similarity) / 2", "scaled": scaled,
                                       "ranks": "transported mass, ties by id"}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "eps": self.eps, "target_marginal": _number(self.target_marginal),
                "pool_marginal": self.pool_marginal, "over": self.over}


def _number(value: float) -> float | str:
    """JSON has no infinity: inf is written as the text "inf"."""
    return "inf" if math.isinf(value) else value


# TopK | RoundRobin | Uot, or a registered one with name, pairwise, bytes_per_pair (when pairwise), choose, to_dict
Algorithm = Any

ALGORITHMS: dict[str, Callable[..., Algorithm]] = {"top-k": TopK, "round-robin": RoundRobin, "uot": Uot}
DEFAULT_ALGORITHM = "top-k"


def make_algorithm(name: str, **options: Any) -> Algorithm:
    """The algorithm `name` with its options.

    Raises:
        UnknownNameError: no such algorithm.
        ConfigError: an option it does not take, or a bad value.
    """
    if name not in ALGORITHMS:
        raise UnknownNameError("algorithm", name, list(ALGORITHMS))
    try:
        return ALGORITHMS[name](**options)
    except TypeError:
        raise ConfigError(f"algorithm {name!r} takes no option(s) {', '.join(sorted(options))}") from None


# the CLI's and compare rows' names for the algorithms' settings -> the setting (a field of the algorithm)
ALGORITHM_OPTIONS = {"algorithm_over": "over", "uot_eps": "eps", "uot_target_marginal": "target_marginal",
                     "uot_pool_marginal": "pool_marginal"}


def algorithm_from_options(name: str, options: Mapping[str, Any]) -> tuple[Algorithm, list[str]]:
    """The algorithm `name` made from those of `options` (keys of `ALGORITHM_OPTIONS`) it takes, and
    the option names it does not take, for the caller to name as ignored.

    Raises:
        UnknownNameError, ConfigError: as `make_algorithm`.
    """
    if name not in ALGORITHMS:
        raise UnknownNameError("algorithm", name, list(ALGORITHMS))
    takes = {item.name for item in fields(ALGORITHMS[name]) if item.init} if is_dataclass(ALGORITHMS[name]) else set()
    used, ignored = {}, []
    for option, value in options.items():
        setting = ALGORITHM_OPTIONS.get(option, option)
        if setting in takes:
            used[setting] = value
        else:
            ignored.append(option)
    return make_algorithm(name, **used), ignored
