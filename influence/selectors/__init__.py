"""Selectors by name. A third-party selector registers with `register_selector`."""

from __future__ import annotations

from typing import Any, Callable

from influence.errors import UnknownNameError
from influence.ranking import check_k, top_k
from influence.selectors.base import Scores, SelectionContext, Selector
from influence.selectors.baselines import FullSelector, LongestSelector, RandomSelector
from influence.selectors.dsir import DsirSelector  # its heavy part (nltk) loads on first use


def _less(**options: Any) -> Selector:
    """LESS (arXiv 2402.04333), imported on use: it brings torch and the model stack."""
    # loads torch: imported on use, not at start-up
    from influence.selectors.less import LessSelector

    return LessSelector(**options)


def _bm25(**options: Any) -> Selector:
    """BM25 relevance to the target, imported on use: bm25s and PyStemmer are not needed by the others."""
    # optional and heavy: imported on use
    from influence.selectors.bm25 import Bm25Selector

    return Bm25Selector(**options)


def _rds(**options: Any) -> Selector:
    """RDS, LESS's representation baseline: cosine of final hidden states; imported on use (the model stack)."""
    # loads the model stack: imported on use, not at start-up
    from influence.selectors.representation import RdsSelector

    return RdsSelector(**options)


def _embed(**options: Any) -> Selector:
    """Cosine of sentence embeddings; imported on use (sentence-transformers)."""
    # loads the model stack: imported on use, not at start-up
    from influence.selectors.representation import EmbedSelector

    return EmbedSelector(**options)


def _ifd(**options: Any) -> Selector:
    """Instruction-following difficulty (Cherry LLM, NAACL 2024); imported on use (the model stack)."""
    # loads the model stack: imported on use, not at start-up
    from influence.selectors.ifd import IfdSelector

    return IfdSelector(**options)


# name -> factory taking the selector's own keyword options
SELECTORS: dict[str, Callable[..., Selector]] = {
    "longest": LongestSelector,
    "random": RandomSelector,
    "full": FullSelector,
    "less": _less,
    "bm25": _bm25,
    "dsir": DsirSelector,
    "rds": _rds,
    "embed": _embed,
    "ifd": _ifd,
}


def register_selector(name: str, factory: Callable[..., Selector]) -> None:
    """Make a selector available by name to `select` and the CLI."""
    SELECTORS[name] = factory


def make_selector(name: str, **options: Any) -> Selector:
    if name not in SELECTORS:
        raise UnknownNameError("selector", name, list(SELECTORS))
    return SELECTORS[name](**options)


__all__ = ["SELECTORS", "Scores", "SelectionContext", "Selector", "LongestSelector", "RandomSelector", "FullSelector",
           "make_selector", "register_selector", "top_k", "check_k"]
