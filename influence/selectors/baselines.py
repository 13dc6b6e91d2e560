"""Untargeted baselines: the longest responses, a seeded random draw, and the whole pool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from influence.data.pools import Pool
from influence.selectors.base import Scores, SelectionContext, Selector

LENGTH_UNITS = ("chars", "words")


@dataclass
class LongestSelector(Selector):
    """"Long Is More for Alignment" (Zhao et al., arXiv 2402.04833): keep the longest responses.

    The paper ranks a pool by the length of each example's response and keeps the top
    1,000; the instruction and input do not count. We measure the response (the `output`,
    or a chat's last assistant turn) in Unicode characters by default, or in
    whitespace-separated words with unit="words", so that no tokenizer is needed and the
    ranking is the same for every model. Ties fall to the shared id tie-break.
    """

    unit: str = "chars"
    name: str = "longest"
    requires_target: bool = False

    def __post_init__(self) -> None:
        if self.unit not in LENGTH_UNITS:
            raise ValueError(f"unit must be one of {LENGTH_UNITS}, got {self.unit!r}")

    def score(self, pool: Pool, context: SelectionContext) -> Scores:
        if self.unit == "words":
            return Scores(np.array([len(e.response.split()) for e in pool.examples], dtype=np.float64))
        return Scores(np.array([len(e.response) for e in pool.examples], dtype=np.float64))

    def params(self) -> dict[str, Any]:
        return {"unit": self.unit}


@dataclass
class RandomSelector(Selector):
    """A uniform random subset, reproducible from the seed alone."""

    name: str = "random"
    requires_target: bool = False

    def score(self, pool: Pool, context: SelectionContext) -> Scores:
        return Scores(np.random.default_rng(context.seed).random(len(pool)))

    def params(self) -> dict[str, Any]:
        return {}


@dataclass
class FullSelector(Selector):
    """Every example of the (cleared) pool, whatever k: the whole-pool training row that LESS's Table 2
    sets beside its 5% selections, so a comparison shows what a selection gains or loses against all."""

    name: str = "full"
    requires_target: bool = False
    whole_pool: bool = True

    def score(self, pool: Pool, context: SelectionContext) -> Scores:
        return Scores(np.zeros(len(pool)))

    def params(self) -> dict[str, Any]:
        return {}
