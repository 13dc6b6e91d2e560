"""IFD: instruction-following difficulty (Li et al., "From Quantity to Quality", NAACL 2024; Cherry LLM)."""

from __future__ import annotations

from typing import Any

import numpy as np

from influence.data.pools import Pool
from influence.features.difficulty import ifd_from_losses
from influence.less.settings import LessSettings
from influence.representations import ifd_losses
from influence.selectors.base import Scores, SelectionContext, Selector


def ifd_ranking_scores(ifd: np.ndarray) -> np.ndarray:
    """Scores that rank by IFD, highest first, with IFD >= 1 after every IFD < 1 (as score -IFD).

    An IFD of 1 or more says the instruction does not make the response easier to
    predict, so the paper drops such examples; here they rank last rather than vanish.
    """
    ifd = np.asarray(ifd, dtype=np.float64)
    return np.where(ifd >= 1, -ifd, ifd)


class IfdSelector(Selector):
    """Untargeted: the response's loss given its instruction over its loss given none, highest below 1 first."""

    name = "ifd"
    requires_target = False

    def __init__(self, settings: LessSettings | None = None, *, loaded: Any = None, **changes: Any):
        settings = settings or LessSettings()
        self.settings = settings.with_(**changes) if changes else settings
        self._loaded = loaded

    def score(self, pool: Pool, context: SelectionContext) -> Scores:
        losses, store = ifd_losses(pool, self.settings, loaded=self._loaded)
        ifd = ifd_from_losses(losses)
        return Scores(ifd_ranking_scores(ifd), {"ifd": {
            **store, "at_least_one": int(np.sum(ifd >= 1)), "undefined": int(np.isnan(ifd).sum()),
            "median": float(np.nanmedian(ifd)) if np.isfinite(ifd).any() else None}})

    def params(self) -> dict[str, Any]:
        return {"model": self.settings.model, "max_length": self.settings.max_length}
