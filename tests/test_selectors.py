"""Selectors only score; one shared top_k ranks them all."""

from __future__ import annotations

import numpy as np
import pytest

from influence.data import Example, load_pool
from influence.data.pools import Pool
from influence.errors import SelectionError, UnknownNameError
from influence.selection import select
from influence.selectors import (SELECTORS, LongestSelector, RandomSelector, Scores, Selector, make_selector,
                                 top_k)


def _pool(outputs: list[str]) -> Pool:
    return Pool(examples=[Example(f"q{i}", "", out) for i, out in enumerate(outputs)])


def test_top_k_ranks_by_score_then_breaks_ties_by_id():
    ids = ["d", "b", "c", "a"]
    assert top_k(np.array([1.0, 5.0, 5.0, 0.0]), ids, 2).tolist() == [1, 2]   # b before c
    assert top_k(np.array([2.0, 2.0, 2.0, 2.0]), ids, 4).tolist() == [3, 1, 2, 0]  # a, b, c, d


def test_top_k_never_selects_nan_or_a_repeated_id():
    assert top_k(np.array([np.nan, 1.0, 3.0]), ["a", "b", "c"], 2).tolist() == [2, 1]
    assert top_k(np.array([3.0, 3.0, 1.0]), ["x", "x", "y"], 2).tolist() == [0, 2]
    with pytest.raises(SelectionError, match="only 1 examples have a valid score"):
        top_k(np.array([np.nan, 1.0]), ["a", "b"], 2)


@pytest.mark.parametrize("k, message", [(0, "k must be positive"), (-3, "k must be positive"),
                                        (4, r"larger than the pool \(3 examples\)")])
def test_bad_k_is_refused(k, message):
    with pytest.raises(SelectionError, match=message):
        top_k(np.zeros(3), ["a", "b", "c"], k)


def test_longest_takes_the_longest_responses_and_ignores_instructions():
    pool = Pool(examples=[Example("a very very long instruction indeed", "", "short"),
                          Example("q", "", "a much longer response"), Example("q2", "", "mid size")])
    chosen = select(pool, 2, LongestSelector())
    assert [e.response for e in chosen.examples] == ["a much longer response", "mid size"]
    words = select(pool, 1, LongestSelector(unit="words"))
    assert words.examples[0].response == "a much longer response"


def test_random_is_reproducible_under_a_seed_and_varies_across_seeds():
    pool = _pool([f"answer {i}" for i in range(200)])
    first = select(pool, 20, RandomSelector(), seed=7).indices.tolist()
    again = select(pool, 20, RandomSelector(), seed=7).indices.tolist()
    other = select(pool, 20, RandomSelector(), seed=8).indices.tolist()
    assert first == again != other


MODEL_BASED = {"ifd"}  # runs the default model over the pool: tested on a tiny model in test_representations


@pytest.mark.parametrize("name", sorted(n for n in SELECTORS if n not in MODEL_BASED
                                        and not make_selector(n).requires_target and not make_selector(n).whole_pool))
def test_every_untargeted_selector_returns_k_unique_valid_examples(name):
    pool = load_pool("alpaca")
    selection = select(pool, 300, make_selector(name), seed=3)
    assert len(selection.indices) == 300 == len({pool.examples[i].id for i in selection.indices})
    assert all(0 <= i < len(pool) for i in selection.indices)
    assert np.isfinite(selection.scores).all()


def test_full_keeps_every_example_the_contamination_guard_leaves_whatever_k():
    from influence.data import load_target
    from tests.test_contamination import _planted_copy, _pool_with

    planted = _planted_copy()  # a held-out MMLU question inside a pool example
    pool = _pool_with(planted)
    selection = select(pool, 3, make_selector("full"), target=load_target("mmlu"))
    assert sorted(e.id for e in selection.examples) == sorted(e.id for e in pool.examples if e.id != planted.id)
    assert selection.manifest("alpaca")["k"] == len(pool) - 1


def test_unknown_selector_names_the_choices():
    with pytest.raises(UnknownNameError, match="unknown selector 'longer'"):
        make_selector("longer")


class _Planted(Selector):
    """A third-party selector: scores by a planted table, provenance names it."""

    name = "planted"

    def __init__(self, values):
        self.values = values

    def score(self, pool, context):
        return Scores(np.asarray(self.values, dtype=float), {"planted": {"table": "v1"}})

    def params(self):
        return {"table": "v1"}


def test_a_declared_selector_ranks_through_top_k_and_its_provenance_reaches_the_manifest():
    pool = _pool(["a", "b", "c"])
    selection = select(pool, 2, _Planted([0.1, 0.9, 0.5]))
    assert selection.indices.tolist() == [1, 2]
    assert selection.manifest("alpaca")["planted"] == {"table": "v1"}
    assert _Planted([0, 0, 0]).prepare(pool, None) is None  # nothing to share by default


def test_a_selector_returning_a_bare_array_is_refused():
    class Bare(_Planted):
        def score(self, pool, context):
            return np.zeros(len(pool))

    with pytest.raises(SelectionError, match="must return influence.selectors.Scores"):
        select(_pool(["a", "b"]), 1, Bare([0, 0]))


def test_a_selector_must_declare_score_and_params():
    class Incomplete(Selector):
        name = "incomplete"

    with pytest.raises(TypeError):
        Incomplete()
