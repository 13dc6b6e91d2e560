"""The selector interface: a selector only scores; ranking and writing are shared."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from influence.data.pools import Pool
from influence.data.targets import Target


@dataclass
class SelectionContext:
    """What a selector may look at besides the pool."""

    target: Target | None = None
    seed: int = 0
    k: int | None = None  # how many will be kept; a selector may use it to skip hopeless examples (NaN)


@runtime_checkable
class Selector(Protocol):
    """Scores every pool example; higher means more worth selecting.

    A selector whose work spreads over torch.distributed ranks may also define
    `prepare(pool, context)`: under torchrun, the ranks other than 0 call it while rank 0
    calls `score`, which must run the same collective steps before scoring alone.
    """

    name: str
    requires_target: bool

    def score(self, pool: Pool, context: SelectionContext) -> np.ndarray:
        """One finite float per pool example, in pool order."""
        ...

    def params(self) -> dict[str, Any]:
        """The settings that determine the scores, recorded in the manifest."""
        ...
