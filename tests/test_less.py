"""The LESS pipeline end to end on a tiny random model: it finds planted examples, reuses and
resumes its datastores, and refuses to mix features made under other settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from influence.data import Example
from influence.data.pools import Pool, PoolSource
from influence.data.targets import Target
from influence.errors import ConfigError, DataError, DatastoreError, ManifestMismatchError
from influence.features.datastore import FeatureStore
from influence.less import LessSettings, build_features, less_run
from influence.models import LoadedModel
from influence.selection import select
from influence.selectors.less import LessSelector
from influence.testing import tiny_model_and_tokenizer


def _loaded(seed: int = 0) -> LoadedModel:
    model, tokenizer = tiny_model_and_tokenizer(seed=seed)
    return LoadedModel(model=model, tokenizer=tokenizer, spec="tiny", weights_sha256=f"tiny-{seed}")


WORDS = ["red", "blue", "green", "apple", "river", "stone", "cloud", "music", "paper", "light", "tiger", "ocean"]


def _pool(planted: int = 4, noise: int = 28) -> Pool:
    """Sums (like the target) hidden among short texts about other things."""
    rng = np.random.default_rng(1)
    sums = [Example(f"What is {a} plus {b}?", "", f"{a} plus {b} is {a + b}.")
            for a, b in zip(range(11, 11 + planted), range(31, 31 + planted))]
    other = [Example(f"Write about the {rng.choice(WORDS)}.", "", " ".join(rng.choice(WORDS, 10)) + ".")
             for _ in range(noise)]
    examples = list({e.id: e for e in other[: noise // 2] + sums + other[noise // 2:]}.values())
    return Pool(examples=examples, sources=[PoolSource("toy", "test", len(examples), 0, len(examples))])


TARGET = Target("sums", [Example("What is 5 plus 7?", "", "5 plus 7 is 12.", subtask="sums"),
                         Example("What is 8 plus 9?", "", "8 plus 9 is 17.", subtask="sums")])


@pytest.fixture
def settings(tmp_path) -> LessSettings:
    """Projected scoring, whose datastores most tests here exercise; unprojected runs ask for it."""
    return LessSettings.for_tests(index_root=tmp_path / "indexes", scoring="faiss")


@pytest.mark.parametrize("seed,scoring", [(0, "unprojected"), (2, "unprojected"), (0, "faiss")])
def test_less_ranks_planted_target_like_examples_first(settings, seed, scoring):
    pool = _pool()
    selection = select(pool, 4, LessSelector(settings.with_(dims=512, scoring=scoring), loaded=_loaded(seed)),
                       target=TARGET)
    assert sorted(e.instruction for e in selection.examples) == sorted(
        e.instruction for e in pool.examples if "plus" in e.instruction)
    manifest = selection.manifest("alpaca")
    assert manifest["selector"]["name"] == "less" and manifest["selector"]["params"]["dims"] == 512
    assert manifest["datastore"]["scoring"]["method"] == scoring
    if scoring == "unprojected":  # no projected datastore unless asked: cosines only
        assert manifest["datastore"]["pool_stores"] == []
        assert len(manifest["datastore"]["cosine_stores"]) == settings.warmup_epochs
    else:
        assert len(manifest["datastore"]["pool_stores"]) == settings.warmup_epochs


def test_faiss_top_k_equals_exact_scoring(settings):
    pool, loaded = _pool(), _loaded()
    exact = select(pool, 6, LessSelector(settings.with_(scoring="exact"), loaded=loaded), target=TARGET)
    fast = select(pool, 6, LessSelector(settings, loaded=loaded), target=TARGET)
    assert fast.indices.tolist() == exact.indices.tolist()
    assert np.allclose(fast.scores[fast.indices], exact.scores[exact.indices])
    assert np.isfinite(exact.scores).all()


def test_a_rerun_reuses_warmup_and_features(settings):
    pool, loaded = _pool(), _loaded()
    first = less_run(pool, TARGET, settings, k=4, loaded=loaded)
    assert first.stats["featurized"]["pool"]["done"] == len(pool) * settings.warmup_epochs
    again = less_run(pool, TARGET, settings, k=4, loaded=loaded)
    assert again.stats["featurized"]["pool"]["done"] == 0 and again.stats["featurized"]["target"]["done"] == 0
    assert np.array_equal(np.nan_to_num(first.scores, nan=-9), np.nan_to_num(again.scores, nan=-9))


def test_a_lost_shard_is_recomputed_to_the_same_bytes(settings):
    pool, loaded = _pool(), _loaded()
    features = build_features(pool, TARGET, settings, loaded=loaded)
    shard = sorted((features.pool_stores[0] / "shards").glob("*.npy"))[0]
    original = shard.read_bytes()
    shard.unlink()
    resumed = build_features(pool, TARGET, settings, loaded=loaded)
    assert resumed.stats["featurized"]["pool"]["done"] == len(pool)  # only the lost store redone
    assert shard.read_bytes() == original


def test_score_only_refuses_when_features_are_missing(settings):
    with pytest.raises(DatastoreError, match="run `influence featurize`"):
        less_run(_pool(), TARGET, settings, k=2, loaded=_loaded(), existing_only=True)


def test_a_target_without_examples_is_refused(settings):
    with pytest.raises(DataError, match="has no examples"):
        less_run(_pool(), Target("empty", []), settings, k=2, loaded=_loaded())


def test_features_of_another_model_are_never_mixed_in(settings):
    pool = _pool()
    named = settings.with_(name="shared")
    less_run(pool, TARGET, named, k=2, loaded=_loaded(seed=0))
    with pytest.raises(ManifestMismatchError):
        less_run(pool, TARGET, named, k=2, loaded=_loaded(seed=1))


def test_the_two_adam_forms_are_stored_apart_and_never_mixed(settings):
    pool, loaded = _pool(), _loaded()
    assert settings.adam_form == "less"
    less = build_features(pool, TARGET, settings.with_(name="forms"), loaded=loaded)
    paper = build_features(pool, TARGET, settings.with_(name="forms", adam_form="paper"), loaded=loaded)
    assert [p.name for p in less.pool_stores] == ["pool-adam-less"] * settings.warmup_epochs
    assert [p.name for p in paper.pool_stores] == ["pool-adam-paper"] * settings.warmup_epochs
    assert less.target_stores == paper.target_stores  # sgd target features do not depend on the Adam form
    stored = FeatureStore.open(less.pool_stores[0])
    assert stored.identity["adam_form"] == "less"
    assert FeatureStore.open(paper.pool_stores[0]).identity["adam_form"] == "paper"
    assert "adam_form" not in FeatureStore.open(less.target_stores[0]).identity
    assert not np.allclose(stored.features(), FeatureStore.open(paper.pool_stores[0]).features(), atol=1e-2)
    with pytest.raises(ManifestMismatchError, match="adam_form"):
        FeatureStore.create(less.pool_stores[0], identity={**stored.identity, "adam_form": "paper"},
                            example_ids=pool.ids, dim=stored.dim, shard_rows=settings.shard_rows)


def test_a_checkpoint_with_learning_rate_zero_is_not_featurized_and_the_skip_is_recorded(settings, caplog):
    # 3 warmup examples in one step per epoch: epoch 1's only step is the schedule's first, at rate 0
    short = settings.with_(warmup_fraction=0.1, warmup_batch_size=4, warmup_epochs=2)
    pool = _pool()
    with caplog.at_level("WARNING", logger="influence.less.pipeline"):
        selection = select(pool, 4, LessSelector(short, loaded=_loaded()), target=TARGET)
    assert "skipping warmup checkpoint of epoch 1" in caplog.text
    datastore = selection.manifest("alpaca")["datastore"]
    assert [c["epoch"] for c in datastore["checkpoints"]] == [2] and datastore["checkpoints"][0]["weight"] == 1.0
    assert datastore["skipped_checkpoints"] == [{"epoch": 1, "step": 1, "avg_lr": 0.0,
                                                 "reason": "learning rate 0: weight 0 in every score"}]
    assert [Path(p).parent.name for p in datastore["pool_stores"]] == ["epoch-2"]
    assert not any((Path(datastore["workdir"]) / "features" / "epoch-1").glob("*"))
    from influence.training import read_manifest

    warmup = read_manifest(Path(datastore["workdir"]) / "warmup")
    assert warmup["config"]["loss_reduction"] == "example"  # LESS's warmup loss, recorded


def test_a_pool_changed_since_featurization_is_refused(settings):
    named = settings.with_(name="shared")
    less_run(_pool(), TARGET, named, k=2, loaded=_loaded())
    with pytest.raises(ManifestMismatchError):
        less_run(_pool(noise=20), TARGET, named, k=2, loaded=_loaded())


def test_several_dims_come_from_one_pass_and_the_first_is_scored(settings):
    pool, loaded = _pool(), _loaded()
    both = build_features(pool, TARGET, settings.with_(dims=(64, 32), name="both"), loaded=loaded)
    alone = build_features(pool, TARGET, settings.with_(dims=32, name="alone"), loaded=loaded)
    assert both.stats["scored_dim"] == 64
    extra = [Path(p) for p in both.stats["other_dim_stores"]["pool"]]
    assert [p.name for p in extra] == ["pool-adam-less-d32"] * settings.warmup_epochs
    for made_together, made_alone in zip(extra, alone.pool_stores):
        # the same features up to float summation order (one float16 step at most)
        np.testing.assert_allclose(FeatureStore.open(made_together).features().astype(np.float32),
                                   FeatureStore.open(made_alone).features().astype(np.float32), rtol=0, atol=2 ** -10)


def test_a_streamed_pool_gives_the_same_datastores_and_selection_as_a_loaded_one(tmp_path):
    from influence.data import load_pool
    from tests.conftest import write_jsonl

    path = write_jsonl(tmp_path / "pool.jsonl", [e.to_record("alpaca") for e in _pool().examples])
    loaded = load_pool(str(path))
    streamed = load_pool(str(path), stream=True)
    runs = {}
    for name, pool in (("loaded", loaded), ("streamed", streamed)):
        settings = LessSettings.for_tests(index_root=tmp_path / name, shard_rows=8)
        selection = select(pool, 4, LessSelector(settings, loaded=_loaded()), target=TARGET)
        features = tmp_path / name / selection.extra["datastore"]["workdir"].split("/")[-1] / "features"
        runs[name] = (selection.records(), {str(p.relative_to(features)): p.read_bytes()
                                            for p in sorted(features.rglob("*.npy"))})
    assert runs["streamed"] == runs["loaded"]
    assert len(runs["loaded"][1]) >= 8
    # warmup sample, 2 checkpoints x (pool, target) featurized, 1 selection: a handful of passes, not one per row
    assert streamed.examples.passes <= 8


def test_an_ivf_pq_index_finds_the_planted_examples_by_rescoring_its_hits_exactly(settings):
    pool = _pool()
    selection = select(pool, 4, LessSelector(settings.with_(dims=512, index="ivf-pq"), loaded=_loaded()),
                       target=TARGET)
    assert sorted(e.instruction for e in selection.examples) == sorted(
        e.instruction for e in pool.examples if "plus" in e.instruction)
    scoring = selection.manifest("alpaca")["datastore"]["scoring"]
    assert scoring["index"] == "ivf-pq" and scoring["exact"] is False  # approximate: never claimed exact
    assert scoring["searched_k"] >= 4 + 3 * 4


def test_a_flat_index_that_would_not_fit_in_memory_falls_back_to_chunked_exact_scoring(settings, caplog):
    from influence.less.pipeline import build_features, score_features

    pool, loaded = _pool(), _loaded()
    features = build_features(pool, TARGET, settings, loaded=loaded)
    fits, fits_info = score_features(features, pool, TARGET, settings, k=4)
    with caplog.at_level("WARNING"):
        spills, spills_info = score_features(features, pool, TARGET, settings, k=4, memory_bytes=1_000)
    assert (fits_info["method"], spills_info["method"]) == ("faiss", "exact")
    assert "scoring every example exactly in chunks" in caplog.text
    assert np.isfinite(spills).all()
    found = np.isfinite(fits)
    np.testing.assert_allclose(spills[found], fits[found], rtol=1e-6)
    assert set(np.argsort(-spills, kind="stable")[:4]) == set(np.flatnonzero(found)[np.argsort(-fits[found])[:4]])


def test_less_settings_refuse_an_index_kind_the_index_module_does_not_build():
    with pytest.raises(ConfigError, match="index must be one of"):
        LessSettings(index="hnsw")
