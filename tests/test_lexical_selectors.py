"""BM25 and DSIR: planted target-like examples rank first; scores equal the libraries' own definitions."""

from __future__ import annotations

import bm25s
import numpy as np
import pytest
from click.testing import CliRunner
from data_selection.hashed_ngram_dsir import get_ngram_counts, wpt

from influence.cli import main
from influence.data import Example
from influence.data.example import example_text
from influence.data.pools import Pool
from influence.data.targets import Target
from influence.errors import SelectionError
from influence.scoring import mean_max_over_subtasks
from influence.selection import select
from influence.selectors import SELECTORS, SelectionContext, make_selector
from influence.selectors import bm25 as bm25_module
from tests.conftest import write_jsonl

FILLER = ["Write a short poem about the sea.", "List three colours of the rainbow.", "Give me a recipe for soup.",
          "Translate 'good morning' into French.", "What is the capital of Italy?", "Describe a sunny day.",
          "Name two animals that live in the desert.", "Suggest a title for a novel about friendship.",
          "Explain how to tie a shoelace.", "Summarise the plot of a fairy tale in one line."]
ASTRONOMY = [("Which planet has the largest moons and rings orbiting it?", "Saturn has rings; Jupiter has the "
              "largest moons among the planets orbiting the sun."),
             ("How do telescopes observe distant galaxies and nebulae?", "Telescopes collect light from galaxies "
              "and nebulae; larger mirrors observe fainter objects.")]
COOKING = [("How long should pasta boil before draining?", "Boil pasta in salted water for about ten minutes, "
            "then drain it.")]


def _pool(planted: list[tuple[str, str]]) -> tuple[Pool, list[str]]:
    filler = [Example(text, "", f"Here is my answer number {i}.") for i, text in enumerate(FILLER * 3)]
    filler = [Example(e.instruction + f" ({i})", "", e.output) for i, e in enumerate(filler)]
    planted_examples = [Example(q, "", a) for q, a in planted]
    examples = filler[:13] + planted_examples[:1] + filler[13:] + planted_examples[1:]
    return Pool(examples=examples), [e.id for e in planted_examples]


def _target() -> Target:
    return Target("planted", [Example(q, "", a, subtask="astronomy") for q, a in ASTRONOMY]
                  + [Example(q, "", a, subtask="cooking") for q, a in COOKING])


# ------------------------------------------------------------------------------------------ shared aggregation
def test_mean_max_over_subtasks_is_the_mean_within_then_the_max_across():
    per_target = np.array([[1.0, 3.0, 0.0],    # subtask a: mean 2, b: 0 -> 2
                           [0.0, 0.0, 5.0],    # a: 0, b: 5 -> 5
                           [4.0, 0.0, 1.0]])   # a: 2, b: 1 -> 2
    assert mean_max_over_subtasks(per_target, {"a": [0, 1], "b": [2]}).tolist() == [2.0, 5.0, 2.0]


# ------------------------------------------------------------------------------------------ bm25
def test_bm25_ranks_the_planted_target_like_examples_first():
    pool, planted = _pool([ASTRONOMY[0], (ASTRONOMY[1][0].upper(), "Galaxies and nebulae, through telescopes.")])
    selection = select(pool, 2, make_selector("bm25"), target=_target())
    assert sorted(e.id for e in selection.examples) == sorted(planted)


def test_bm25_scores_equal_bm25s_retrieval_scores_aggregated_like_less(monkeypatch):
    """Chunked tokenization into one vocabulary gives bm25s's own scores for each target query."""
    monkeypatch.setattr(bm25_module, "CHUNK", 4)
    pool, _ = _pool(ASTRONOMY + COOKING)
    target = _target()
    selector = make_selector("bm25")
    scores = selector.score(pool, SelectionContext(target=target)).values

    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    tokenize = dict(stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)
    index = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    index.index(bm25s.tokenize([example_text(e) for e in pool.examples], **tokenize), show_progress=False)
    queries = bm25s.tokenize([example_text(e) for e in target.examples], **tokenize)
    per_target = np.stack([index.get_scores(q) for q in queries], axis=1)
    expected = np.maximum(per_target[:, :2].mean(axis=1), per_target[:, 2])
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    assert selector.params()["k1"] == 1.5 and selector.params()["stemmer"] == "english"


def test_bm25_a_query_without_a_known_word_favours_no_example():
    """Not even the examples with no word at all, which bm25s gives the same empty token."""
    pool = Pool(examples=[Example("the a", "", "is it"), Example("cats purr", "", "yes they do"), Example("x", "", "y")])
    target = Target("t", [Example("zebra quux", "", "the", subtask="zoo"), Example("cats", "", "purr", subtask="pets")])
    scores = make_selector("bm25").score(pool, SelectionContext(target=target)).values
    assert scores[0] == scores[2] == 0.0 < scores[1]


# ------------------------------------------------------------------------------------------ dsir
def test_dsir_features_are_the_authors_hashed_ngram_counts():
    from influence.selectors.dsir import NgramBuckets

    featurize = NgramBuckets(ngrams=2, buckets=10000)
    for text in ["The cat sat on the mat.", "Hello, World! hello world", "", "Ünïcode — and punctuation..."]:
        expected = get_ngram_counts(text, n=2, num_buckets=10000, tokenizer=wpt.tokenize)
        np.testing.assert_array_equal(np.bincount(featurize(text), minlength=10000), expected)


def test_dsir_log_importance_is_the_hashed_ngram_estimator():
    """Against a dense reimplementation from the authors' featurizer: one target model per subtask."""
    pool, _ = _pool(ASTRONOMY + COOKING)
    target = _target()
    selector = make_selector("dsir", buckets=512, sampling="none", min_length=0)
    got = selector.log_importance(pool, SelectionContext(target=target))

    def counts(examples):
        return sum(get_ngram_counts(example_text(e), n=2, num_buckets=512, tokenizer=wpt.tokenize)
                   for e in examples).astype(float)

    pool_counts = counts(pool.examples)
    features = np.stack([get_ngram_counts(example_text(e), n=2, num_buckets=512, tokenizer=wpt.tokenize)
                         for e in pool.examples])
    for column, rows in enumerate([[0, 1], [2]]):
        subtask = counts([target.examples[r] for r in rows])
        log_diff = np.log(subtask / subtask.sum() + 1e-8) - np.log(pool_counts / pool_counts.sum() + 1e-8)
        np.testing.assert_allclose(got[:, column], features @ log_diff, rtol=1e-10)
    assert selector.score(pool, SelectionContext(target=target)).values.tolist() == got.max(axis=1).tolist()


def test_dsir_ranks_the_planted_target_like_examples_first():
    pool, planted = _pool(ASTRONOMY)
    selection = select(pool, 2, make_selector("dsir", sampling="none", min_length=0), target=_target())
    assert sorted(e.id for e in selection.examples) == sorted(planted)


def test_dsir_gumbel_sampling_is_reproducible_under_a_seed_and_varies_across_seeds():
    pool, _ = _pool(ASTRONOMY)
    target = _target()
    gumbel = make_selector("dsir", min_length=0)
    assert gumbel.params()["sampling"] == "gumbel"  # DSIR's own default: importance resampling
    first = gumbel.score(pool, SelectionContext(target=target, seed=1)).values
    again = gumbel.score(pool, SelectionContext(target=target, seed=1)).values
    other = gumbel.score(pool, SelectionContext(target=target, seed=2)).values
    plain = make_selector("dsir", sampling="none", min_length=0).score(pool, SelectionContext(target=target, seed=1)).values
    assert first.tolist() == again.tolist() != other.tolist()
    np.testing.assert_allclose(first - plain, np.random.default_rng(1).gumbel(size=len(pool)))


def test_dsir_per_subtask_models_keep_a_small_subtask_from_being_drowned():
    """A cooking example scores higher against cooking's own model than against all the target pooled."""
    pool, planted = _pool(COOKING)
    target = _target()
    row = [e.id for e in pool.examples].index(planted[0])
    per_subtask = make_selector("dsir", sampling="none", min_length=0).log_importance(pool, SelectionContext(target=target))
    pooled = make_selector("dsir", sampling="none", target_model="pooled", min_length=0).log_importance(
        pool, SelectionContext(target=target))
    assert per_subtask.shape == (len(pool), 2) and pooled.shape == (len(pool), 1)
    assert per_subtask[row].max() > pooled[row, 0]


def _long(words: int, topic: str) -> str:
    return " ".join(f"{topic}{i % 7}" for i in range(words))


def test_dsir_never_draws_an_example_under_the_authors_min_length_of_100_tokens():
    """The authors' resample drops examples under 100 tokens, counted from the n-gram features."""
    texts = ["stars", _long(60, "star"), _long(99, "galaxy"), _long(100, "galaxy"), _long(140, "soup"),
             _long(300, "galaxy")]
    pool = Pool(examples=[Example(text, "", "") for text in texts])
    target = Target("sky", [Example(_long(120, "galaxy"), "", "")])
    selector = make_selector("dsir", sampling="none")
    assert selector.min_length == 100 == selector.params()["min_length"]
    features = [get_ngram_counts(t, n=2, num_buckets=10000, tokenizer=wpt.tokenize) for t in texts]
    authors_length = [(f.sum() + 1) // 2 for f in features]  # their get_perexample_metadata, n=2
    assert authors_length == [1, 60, 99, 100, 140, 300]
    scores = selector.score(pool, SelectionContext(target=target))
    assert np.isnan(scores.values).tolist() == [True, True, True, False, False, False]
    assert scores.provenance["under_min_length"] == 3
    unfiltered = make_selector("dsir", sampling="none", min_length=0).score(pool, SelectionContext(target=target))
    assert not np.isnan(unfiltered.values).any()
    assert scores.values[3:].tolist() == unfiltered.values[3:].tolist()  # the filter leaves the weights alone
    chosen = select(pool, 2, selector, target=target)
    assert {e.instruction for e in chosen.examples} <= set(texts[3:])


def test_dsir_with_fewer_long_examples_than_k_fails_with_the_count():
    pool = Pool(examples=[Example(_long(150, "a"), "", ""), Example(_long(150, "b"), "", ""),
                          Example("short one", "", ""), Example("short two", "", "")])
    target = Target("t", [Example(_long(120, "a"), "", "")])
    with pytest.raises(SelectionError, match=r"dsir: only 2 of 4 pool examples have 100 or more word-punct tokens.*"
                                             r"fewer than k=3; lower --dsir-min-length"):
        select(pool, 3, make_selector("dsir"), target=target)
    assert len(select(pool, 3, make_selector("dsir", min_length=0), target=target).examples) == 3


@pytest.mark.parametrize("options, message", [({"ngrams": 0}, "ngrams"), ({"sampling": "top"}, "sampling"),
                                              ({"target_model": "mean"}, "target_model"),
                                              ({"min_length": -1}, "min_length")])
def test_dsir_refuses_bad_settings(options, message):
    with pytest.raises(ValueError, match=message):
        make_selector("dsir", **options)


@pytest.mark.parametrize("options, message", [({"b": 2.0}, "b must be"), ({"stemmer": "klingon"}, "stemmer")])
def test_bm25_refuses_bad_settings(options, message):
    with pytest.raises(ValueError, match=message):
        make_selector("bm25", **options)


# ------------------------------------------------------------------------------------------ registry and CLI
def test_lexical_selectors_are_registered_and_offered_by_select_and_compare():
    assert {"bm25", "dsir"} <= set(SELECTORS)
    help_text = CliRunner().invoke(main, ["select", "--help"]).output
    assert "bm25" in help_text and "dsir" in help_text
    from influence.compare import CompareSettings as CompareConfig

    config = CompareConfig(pools=["alpaca"], target="bbh", selectors=["bm25", "dsir", "random"])
    assert config.selectors == ["bm25", "dsir", "random"]


@pytest.mark.parametrize("name, flags, options", [
    ("bm25", [], {}),
    ("dsir", ["--dsir-sampling", "none", "--dsir-min-length", "0"], {"sampling": "none", "min_length": 0})])
def test_select_command_picks_the_planted_examples_and_records_the_settings(tmp_path, name, flags, options):
    import json

    pool = write_jsonl(tmp_path / "pool.jsonl", [{"instruction": e.instruction, "output": e.output}
                                                 for e in _pool(ASTRONOMY)[0].examples])
    target = write_jsonl(tmp_path / "target.jsonl", [{"instruction": q, "output": a, "subtask": "astronomy"}
                                                     for q, a in ASTRONOMY])
    out = tmp_path / "sel.jsonl"
    result = CliRunner().invoke(main, ["select", "--pool", str(pool), "--target", str(target), "--selector", name,
                                       "--k", "2", "--out", str(out), *flags], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["instruction"] for r in records} == {q for q, _ in ASTRONOMY}
    manifest = json.loads((tmp_path / ".sel.manifest.json").read_text())
    assert manifest["selector"]["name"] == name
    assert manifest["selector"]["params"] == make_selector(name, **options).params()
