"""The selector interface: a selector only scores; ranking and writing are shared."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from influence.algorithms import Similarities
from influence.data.pools import Pool
from influence.data.targets import Target


@dataclass
class SelectionContext:
    """What a selector may look at besides the pool."""

    target: Target | None = None
    seed: int = 0
    k: int | None = None  # how many will be kept; a selector may use it to skip hopeless examples (NaN)
    pairwise: bool = False  # the algorithm needs the [pool, target] similarities (Scores.similarities)


@dataclass(frozen=True)
class Scores:
    """One score per pool example (higher is better, NaN never selected) and where they came from.

    `provenance` goes into the selection manifest as it is (for LESS: the datastores used).
    `similarities`: the scores before aggregation, given when the context asks (`pairwise`).
    """

    values: np.ndarray
    provenance: dict[str, Any] = field(default_factory=dict)
    similarities: Similarities | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", np.asarray(self.values, dtype=np.float64))


class Selector(abc.ABC):
    """Scores every pool example; `top_k` and the writer do the rest, the same for every selector.

    Subclasses set `name` (the registry key), `requires_target` and `pairwise` (the score is an
    aggregate of per-target-example similarities, which `score` returns when the context asks,
    so that the selection algorithms other than top-k can use them), and implement `score`
    and `params`. `prepare` is for selectors whose work spreads over torch.distributed ranks:
    under torchrun the ranks other than 0 call it while rank 0 calls `score`, which must run
    the same collective steps before scoring alone. By default there is nothing to share.
    """

    name: str
    requires_target: bool = False
    pairwise: bool = False
    whole_pool: bool = False  # keeps every example whatever k: the `full` row, training on the whole pool

    @abc.abstractmethod
    def score(self, pool: Pool, context: SelectionContext) -> Scores:
        """One float per pool example, in pool order, with its provenance."""

    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """The settings that determine the scores, recorded in the manifest."""

    def prepare(self, pool: Pool, context: SelectionContext) -> None:
        """This rank's share of the distributed work (see the class docstring); nothing by default."""
