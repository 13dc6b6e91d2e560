"""The unprojected LESS score: subtask queries, exact cosines inside the backward, and the pipeline
around them (subtask groups past the memory budget, reuse, resume, reading them back)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from influence.data import Example
from influence.data.formatting import collate
from influence.errors import ConfigError, DatastoreError
from influence.features import (AdamMoments, LoraGradients, SJLTProjector, SubtaskQueries, featurize,
                                per_example_gradients, subtask_queries)
from influence.features.datastore import FeatureStore
from influence.less import LessSettings, build_features, less_run
from influence.lora import lora_parameters
from influence.scoring import unprojected_scores
from tests.test_grads import EXAMPLES, MaterializingProjector, encode, lora_model, reference_gradients  # noqa: F401
from tests.test_less import TARGET, _loaded, _pool

SUBTASKS = {"short": [0, 3], "long": [1, 2, 4]}


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=1, keepdim=True)


def _moments(model) -> AdamMoments:
    generator = torch.Generator().manual_seed(2)
    named = lora_parameters(model)
    return AdamMoments({n: torch.randn(p.shape, generator=generator) * 1e-3 for n, p in named},
                       {n: torch.rand(p.shape, generator=generator) * 1e-6 for n, p in named}, step=5)


def test_subtask_queries_are_the_means_of_normalised_gradients(lora_model):
    model, tokenizer = lora_model
    queries = subtask_queries(model, tokenizer, EXAMPLES, SUBTASKS, batch_size=2)
    unit = _unit(reference_gradients(model, encode(EXAMPLES, tokenizer)))
    want = torch.stack([unit[rows].mean(dim=0) for rows in SUBTASKS.values()])
    assert queries.dtype == torch.float32 and queries.shape == (2, LoraGradients(model).dim)
    torch.testing.assert_close(queries, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("projected", [None, "streaming", "materializing"])
def test_featurize_cosines_equal_full_gradient_cosines_with_or_without_a_projection(lora_model, projected):
    model, tokenizer = lora_model
    moments = _moments(model)
    queries = subtask_queries(model, tokenizer, EXAMPLES, SUBTASKS)
    projector = SJLTProjector(LoraGradients(model).dim, 32, seed=0)
    projector = {None: None, "streaming": projector, "materializing": MaterializingProjector(projector)}[projected]
    got = {}
    for batch in featurize(model, tokenizer, EXAMPLES, projector, grad_type="adam", moments=moments, batch_size=2,
                           queries=queries):
        assert batch.cosines.dtype == torch.float64 and (batch.features is None) == (projected is None)
        got.update(zip(batch.indices, batch.cosines))
    batch = collate(encode(EXAMPLES, tokenizer), tokenizer.pad_token_id)
    updates = per_example_gradients(model, batch, "adam", moments).double()
    want = _unit(updates) @ queries.double().T
    torch.testing.assert_close(torch.stack([got[i] for i in range(len(EXAMPLES))]), want, rtol=1e-5, atol=1e-7)


def test_the_queries_formed_inside_a_projecting_pass_equal_those_of_their_own_pass(lora_model):
    model, tokenizer = lora_model
    projector = SJLTProjector(LoraGradients(model).dim, 32, seed=0)
    found = SubtaskQueries(SUBTASKS, len(EXAMPLES), projector.in_dim)
    for _ in featurize(model, tokenizer, EXAMPLES, projector, batch_size=3, indices=[0, 1, 2],
                       on_gradients=found.add):
        pass
    assert not found.complete  # a resumed pass sees some examples only; the rest added once each below
    batches = list(featurize(model, tokenizer, EXAMPLES, projector, batch_size=3, on_gradients=found.add))
    assert found.complete and all(b.features is not None for b in batches)
    torch.testing.assert_close(found.queries, subtask_queries(model, tokenizer, EXAMPLES, SUBTASKS),
                               rtol=1e-5, atol=1e-7)


def test_featurize_needs_a_projector_or_queries_of_the_gradient_dimension(lora_model):
    model, tokenizer = lora_model
    with pytest.raises(ConfigError, match="projector, queries, or both"):
        next(featurize(model, tokenizer, EXAMPLES, None))
    with pytest.raises(ConfigError, match="queries must be"):
        next(featurize(model, tokenizer, EXAMPLES, None, queries=torch.zeros(2, 7)))


def test_unprojected_scores_are_the_weighted_sum_and_the_max_over_subtasks():
    rng = np.random.default_rng(0)
    cos = [[rng.uniform(-1, 1, (50, 2)), rng.uniform(-1, 1, (50, 1))] for _ in range(3)]
    lrs = [1.0, 2.0, 1.0]
    want = sum(w * np.concatenate(c, axis=1) for w, c in zip([0.25, 0.5, 0.25], cos)).max(axis=1)
    np.testing.assert_allclose(unprojected_scores(cos, lrs, memory_bytes=200), want, rtol=1e-12)


@pytest.fixture
def settings(tmp_path) -> LessSettings:
    return LessSettings.for_tests(index_root=tmp_path / "indexes", scoring="unprojected")


TWO_SUBTASKS = type(TARGET)("two", [Example("What is 5 plus 7?", "", "5 plus 7 is 12.", subtask="sums"),
                                    Example("What is 8 plus 9?", "", "8 plus 9 is 17.", subtask="sums"),
                                    Example("Write about the river.", "", "The river runs.", subtask="words")])


def test_subtasks_past_the_memory_budget_go_in_several_passes_with_the_same_scores(settings, monkeypatch, caplog):
    import influence.less.pipeline as pipeline

    pool, loaded = _pool(), _loaded()
    whole = less_run(pool, TWO_SUBTASKS, settings, loaded=loaded)
    dim = whole.stats["unprojected"]["lora_params"]
    monkeypatch.setattr(pipeline, "query_budget", lambda device: dim * 4)  # one subtask's query at a time
    with caplog.at_level("WARNING"):
        split = less_run(pool, TWO_SUBTASKS, settings.with_(name="split"), loaded=loaded)
    assert "the pool is passed 2 times" in caplog.text
    assert [len(groups) for groups in split.cosine_stores] == [2] * settings.warmup_epochs
    assert split.stats["featurized"]["pool"]["done"] == 2 * len(pool) * settings.warmup_epochs
    np.testing.assert_allclose(split.scores, whole.scores, rtol=1e-5, atol=1e-7)  # float32 GEMMs of other widths
    monkeypatch.setattr(pipeline, "query_budget", lambda device: dim)
    with pytest.raises(ConfigError, match="--scoring faiss"):
        less_run(pool, TWO_SUBTASKS, settings.with_(name="none"), loaded=loaded)


def test_one_pass_writes_cosines_and_projected_features_and_a_rerun_reuses_them(settings, monkeypatch):
    import shutil

    import influence.less.pipeline as pipeline

    calls = []
    real = pipeline.subtask_queries
    monkeypatch.setattr(pipeline, "subtask_queries", lambda *a, **k: calls.append(1) or real(*a, **k))
    pool, loaded = _pool(), _loaded()
    both = settings.with_(store_features=True)
    first = less_run(pool, TARGET, both, k=4, loaded=loaded)
    assert calls == []  # the queries came from the target pass that projected it
    # one pass each: the pool's gives cosines and features, the target's features and queries
    assert first.stats["featurized"]["pool"]["done"] == len(pool) * settings.warmup_epochs
    assert first.stats["featurized"]["target"]["done"] == len(TARGET) * settings.warmup_epochs
    assert len(first.pool_stores) == len(first.cosine_stores) == settings.warmup_epochs
    again = less_run(pool, TARGET, both, k=4, loaded=loaded)
    assert again.stats["featurized"]["pool"]["done"] == again.stats["featurized"]["target"]["done"] == 0
    np.testing.assert_array_equal(again.scores, first.scores)
    # the projected datastores serve FAISS scoring later, without another pass
    faiss = less_run(pool, TARGET, settings.with_(scoring="faiss"), k=4, loaded=loaded, existing_only=True)
    assert faiss.stats["scoring"]["method"] == "faiss" and np.isfinite(faiss.scores).sum() >= 4
    assert faiss.pool_stores == first.pool_stores
    # and the stored cosines serve the unprojected score (what `influence score --scoring unprojected` reads)
    stored = less_run(pool, TARGET, settings, k=4, loaded=loaded, existing_only=True)
    np.testing.assert_array_equal(stored.scores, first.scores)
    # the target's features are there, a checkpoint's cosines are not: its queries are formed anew
    shutil.rmtree(first.cosine_stores[-1][0])
    redone = less_run(pool, TARGET, both, k=4, loaded=loaded)
    # forming them again is target work, and the manifest counts it
    assert calls == [1] and redone.stats["featurized"]["target"]["done"] == len(TARGET)
    np.testing.assert_allclose(redone.scores, first.scores, rtol=1e-5, atol=1e-7)


def test_a_killed_run_keeps_the_finished_checkpoints_cosines(settings, monkeypatch):
    import influence.less.pipeline as pipeline

    pool, loaded = _pool(), _loaded()
    clean = less_run(pool, TARGET, settings.with_(name="clean"), loaded=loaded)
    calls = {"n": 0}
    real = pipeline.featurize_examples

    def dies_on_the_second_checkpoint(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "featurize_examples", dies_on_the_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        less_run(pool, TARGET, settings, loaded=loaded)
    monkeypatch.setattr(pipeline, "featurize_examples", real)
    with pytest.raises(DatastoreError, match="missing or incomplete"):
        build_features(pool, TARGET, settings, loaded=loaded, existing_only=True)
    resumed = less_run(pool, TARGET, settings, loaded=loaded)
    assert resumed.stats["featurized"]["pool"]["done"] == len(pool) * (settings.warmup_epochs - 1)
    np.testing.assert_array_equal(resumed.scores, clean.scores)
    assert FeatureStore.open(resumed.cosine_stores[0][0]).dtype == np.float32
