"""Selectors by name. A third-party selector registers with `register_selector`."""

from __future__ import annotations

from typing import Any, Callable

from influence.errors import UnknownNameError
from influence.selectors.base import Scores, SelectionContext, Selector
from influence.selectors.baselines import LongestSelector, RandomSelector
from influence.selectors.topk import top_k


def _less(**options: Any) -> Selector:
    """LESS (arXiv 2402.04333), imported on use: it brings torch and the model stack."""
    from influence.selectors.less import LessSelector

    return LessSelector(**options)


# name -> factory taking the selector's own keyword options
SELECTORS: dict[str, Callable[..., Selector]] = {
    "longest": LongestSelector,
    "random": RandomSelector,
    "less": _less,
}


def register_selector(name: str, factory: Callable[..., Selector]) -> None:
    """Make a selector available by name to `select` and the CLI."""
    SELECTORS[name] = factory


def make_selector(name: str, **options: Any) -> Selector:
    if name not in SELECTORS:
        raise UnknownNameError("selector", name, list(SELECTORS))
    return SELECTORS[name](**options)


__all__ = ["SELECTORS", "Scores", "SelectionContext", "Selector", "LongestSelector", "RandomSelector", "make_selector",
           "register_selector", "top_k"]
