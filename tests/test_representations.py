"""rds, embed and ifd against plain per-example computations written here, on planted examples;
their datastores (reuse, resume); diversity-aware top-k and its `NAME+diverse` variants."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from influence.constants import POOLINGS, manifest_path
from influence.data import Example
from influence.data.formatting import encode_prompt, prompt_text, response_text
from influence.data.pools import Pool, PoolSource
from influence.data.targets import Target
from influence.errors import ConfigError, ModelError, SelectionError, UnknownNameError
from influence.features.compute import FeatureBatch
from influence.features.datastore import FeatureStore
from influence.features.fill import fill_store
from influence.features.represent import hidden_states
from influence.less import LessSettings
from influence.less.pipeline import workdir_for
from influence.models import LoadedModel
from influence.selection import Diversity, select
from influence.selectors import make_selector
from influence.selectors.ifd import ifd_ranking_scores
from influence.ranking import diverse_top_k, top_k
from influence.testing import tiny_model_and_tokenizer

TARGET = Target("mixed", [Example("What is 5 plus 7?", "", "5 plus 7 is 12.", subtask="sums"),
                          Example("Name a red fruit.", "", "An apple is red.", subtask="fruit"),
                          Example("Spell the word cat.", "", "c, a, t.", subtask="spelling")])
WORDS = ["river", "stone", "cloud", "music", "paper", "light", "tiger", "ocean", "table", "grass"]


def _pool(copies: int = 2) -> Pool:
    """Texts about other things, with copies of the first `copies` target examples planted among them."""
    rng = np.random.default_rng(3)
    other = [Example(f"Write about the {rng.choice(WORDS)} {i}.", "", " ".join(rng.choice(WORDS, 6)) + ".")
             for i in range(20)]
    planted = [Example(e.instruction, e.input, e.output) for e in TARGET.examples[:copies]]
    examples = other[:7] + planted[:1] + other[7:15] + planted[1:] + other[15:]
    return Pool(examples=examples, sources=[PoolSource("toy", "test", len(examples), 0, len(examples))])


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    model, tokenizer = tiny_model_and_tokenizer()
    return LoadedModel(model=model, tokenizer=tokenizer, spec="tiny", weights_sha256="tiny-0")


@pytest.fixture
def settings(tmp_path) -> LessSettings:
    return LessSettings.for_tests(index_root=tmp_path / "indexes", device="cpu", shard_rows=8)


def _plain_target_scores(pool_vectors: np.ndarray, target_vectors: np.ndarray, target: Target) -> np.ndarray:
    """Cosine with each target example, mean over each subtask, max over subtasks: written out plainly."""
    p = pool_vectors / np.linalg.norm(pool_vectors, axis=1, keepdims=True)
    t = target_vectors / np.linalg.norm(target_vectors, axis=1, keepdims=True)
    cosines = p @ t.T
    by_subtask = {}
    for column, example in enumerate(target.examples):
        by_subtask.setdefault(example.subtask, []).append(cosines[:, column])
    return np.max([np.mean(columns, axis=0) for columns in by_subtask.values()], axis=0)


def _plain_hidden(loaded: LoadedModel, example: Example, pooling: str) -> np.ndarray:
    tokenizer = loaded.tokenizer
    ids = tokenizer(prompt_text(example, tokenizer), add_special_tokens=True)["input_ids"] + \
        tokenizer(response_text(example, tokenizer), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        states = loaded.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
    if pooling == "weighted":  # RDS+ as its authors' code pools one unpadded example: weights 1..T, summing to 1
        weights = torch.arange(1, len(states) + 1, dtype=states.dtype)
        return (states * (weights / weights.sum()).unsqueeze(-1)).sum(dim=0).double().numpy()
    vector = states[-1] if pooling == "last" else states.mean(dim=0)
    return vector.double().numpy()


# ------------------------------------------------------------------ rds


@pytest.mark.parametrize("pooling", POOLINGS)
def test_batched_hidden_states_equal_a_plain_forward_of_each_example(tiny, pooling):
    examples = _pool().examples[:9]
    batched = {}
    for batch in hidden_states(tiny.model, tiny.tokenizer, examples, pooling=pooling, batch_size=4):
        batched.update(zip(batch.indices, batch.features.numpy()))
    for i, example in enumerate(examples):
        plain = _plain_hidden(tiny, example, pooling)
        np.testing.assert_allclose(batched[i], plain / np.linalg.norm(plain), atol=1e-5)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_rds_scores_are_plain_cosines_and_planted_copies_of_the_target_rank_first(tiny, settings, pooling):
    pool = _pool()
    selector = make_selector("rds", settings=settings.with_(scoring="exact"), pooling=pooling, loaded=tiny)
    selection = select(pool, 2, selector, target=TARGET)
    plain = _plain_target_scores(np.stack([_plain_hidden(tiny, e, pooling) for e in pool.examples]),
                                 np.stack([_plain_hidden(tiny, e, pooling) for e in TARGET.examples]), TARGET)
    np.testing.assert_allclose(selection.scores, plain, atol=2e-3)  # features are stored as float16
    assert {e.id for e in selection.examples} == {e.id for e in TARGET.examples[:2]}
    by_faiss = select(pool, 2, make_selector("rds", settings=settings, pooling=pooling, loaded=tiny), target=TARGET)
    assert by_faiss.indices.tolist() == selection.indices.tolist()
    assert by_faiss.manifest("alpaca")["datastore"]["scoring"]["method"] == "faiss"


def test_rds_stores_its_features_beside_less_and_reuses_them(tiny, settings, monkeypatch):
    pool = _pool()
    first = select(pool, 2, make_selector("rds", settings=settings, loaded=tiny), target=TARGET)
    stores = first.manifest("alpaca")["datastore"]
    assert stores["pool_stores"] == [str(workdir_for(pool, settings) / "features" / "base" / "pool-repr-last")]
    assert FeatureStore.open(stores["pool_stores"][0]).identity["model"] == {"spec": "tiny",
                                                                             "weights_sha256": "tiny-0"}

    def no_forward(*args, **kwargs):
        raise AssertionError("features were recomputed")

    monkeypatch.setattr("influence.representations.hidden_states", no_forward)
    again = select(pool, 2, make_selector("rds", settings=settings, loaded=tiny), target=TARGET)
    assert again.indices.tolist() == first.indices.tolist()


def test_forward_only_features_record_their_counts_and_no_timings(tiny, settings):
    pool = _pool()
    selection = select(pool, 2, make_selector("rds", settings=settings, loaded=tiny), target=TARGET)
    featurized = selection.manifest("alpaca")["datastore"]["featurized"]
    assert featurized["pool"]["done"] == len(pool) and featurized["target"]["done"] == len(TARGET)
    assert featurized["pool"]["tokens"] > len(pool)
    assert [key for counts in featurized.values() for key in counts if key.endswith("_seconds")] == []


def test_fill_store_resumes_after_a_kill_with_the_bytes_of_one_run(tmp_path):
    ids = [f"id{i:02d}" for i in range(20)]
    rows = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    calls = []

    def compute(batch_rows, fail_after=None):
        calls.append(batch_rows.start)
        if fail_after is not None and len(calls) > fail_after:
            raise KeyboardInterrupt
        yield FeatureBatch(list(batch_rows), torch.from_numpy(rows[batch_rows.start: batch_rows.stop]))

    options = {"identity": {"what": "test"}, "example_ids": ids, "dim": 3, "shard_rows": 8, "progress": False}
    with pytest.raises(KeyboardInterrupt):
        fill_store(tmp_path / "killed", lambda r: compute(r, fail_after=2), **options)
    calls.clear()
    resumed = fill_store(tmp_path / "killed", compute, **options)
    assert calls == [16]  # only the shard the kill lost
    clean = fill_store(tmp_path / "clean", compute, **options)
    for shard in range(3):
        assert (resumed.path / "shards" / f"{shard:06d}.npy").read_bytes() == \
            (clean.path / "shards" / f"{shard:06d}.npy").read_bytes()
    np.testing.assert_array_equal(resumed.features(), rows.astype(np.float16))


# ------------------------------------------------------------------ ifd


def _plain_mean_nll(model, context_ids: list[int], response_ids: list[int]) -> float:
    ids = torch.tensor([context_ids + response_ids])
    with torch.no_grad():
        logits = model(ids).logits[0]
    predicted = logits[len(context_ids) - 1: -1]  # the positions that predict each response token
    return float(F.cross_entropy(predicted.double(), torch.tensor(response_ids)))


def test_ifd_is_the_loss_given_the_instruction_over_the_loss_without_it(tiny, settings):
    pool = _pool()
    selection = select(pool, 3, make_selector("ifd", settings=settings, loaded=tiny))
    tokenizer = tiny.tokenizer
    plain = []
    for example in pool.examples:
        response = tokenizer(response_text(example, tokenizer), add_special_tokens=False)["input_ids"]
        given = _plain_mean_nll(tiny.model, encode_prompt(example, tokenizer), response)
        alone = _plain_mean_nll(tiny.model, encode_prompt(Example("", "", example.output), tokenizer), response)
        plain.append(given / alone)
    plain = np.array(plain)
    assert (plain < 1).any() and (plain >= 1).any()  # both kinds are here, so the order below is tested
    np.testing.assert_allclose(selection.scores, np.where(plain >= 1, -plain, plain), rtol=1e-5)
    order = list(top_k(selection.scores, pool.ids, len(pool)))
    below = [i for i in order if plain[i] < 1]
    assert order[: len(below)] == sorted(below, key=lambda i: -plain[i])  # highest IFD below 1 first
    assert all(plain[i] >= 1 for i in order[len(below):])                  # IFD >= 1 last
    record = selection.manifest("alpaca")["ifd"]
    assert record["at_least_one"] == int((plain >= 1).sum()) and record["undefined"] == 0


def test_ifd_scores_the_same_response_tokens_with_and_without_the_instruction(tiny):
    from influence.data.formatting import IGNORE_INDEX
    from influence.features.difficulty import ifd_pair

    example = Example("Which word rhymes with cat? Think.", "", "hat", response_prefix="A: ")
    given, alone = ifd_pair(example, tiny.tokenizer, max_length=512)
    scored = [[t for t, label in zip(e.input_ids, e.labels) if label != IGNORE_INDEX] for e in (given, alone)]
    assert scored[0] == scored[1] and scored[0]
    context = tiny.tokenizer.decode(alone.input_ids[: len(alone.input_ids) - len(scored[1])])
    assert context.endswith("A: ") and "rhymes" not in context  # the prefix stays, the instruction goes


def test_ifd_ranking_puts_every_ifd_at_or_above_one_after_the_rest():
    scores = ifd_ranking_scores(np.array([0.5, 1.0, 0.9, 1.7, np.nan, 0.2]))
    assert top_k(scores, list("abcdef"), 5).tolist() == [2, 0, 5, 1, 3]


def test_ifd_is_untargeted_and_not_run_on_a_target(tiny, settings):
    assert make_selector("ifd", settings=settings, loaded=tiny).requires_target is False


# ------------------------------------------------------------------ embed and diversity


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    from influence.testing import tiny_sentence_encoder

    return tiny_sentence_encoder(tmp_path_factory.mktemp("encoder") / "tiny-encoder")


def _plain_embeddings(encoder_dir, examples) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(encoder_dir), device="cpu")
    return model.encode([f"{e.prompt}\n\n{e.response}" for e in examples], convert_to_numpy=True).astype(np.float64)


def test_embed_scores_are_plain_cosines_and_planted_copies_of_the_target_rank_first(encoder_dir, settings):
    pool = _pool()
    selector = make_selector("embed", settings=settings.with_(scoring="exact"), encoder=str(encoder_dir))
    selection = select(pool, 2, selector, target=TARGET)
    plain = _plain_target_scores(_plain_embeddings(encoder_dir, pool.examples),
                                 _plain_embeddings(encoder_dir, TARGET.examples), TARGET)
    np.testing.assert_allclose(selection.scores, plain, atol=2e-3)
    assert {e.id for e in selection.examples} == {e.id for e in TARGET.examples[:2]}
    record = selection.manifest("alpaca")
    assert record["selector"]["params"]["encoder"] == str(encoder_dir)
    assert record["datastore"]["pool_stores"][0].endswith("pool-embed")


def test_an_encoder_hub_id_offline_fails_at_once(monkeypatch):
    from influence.features.encoder import load_encoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelError, match="offline .*not in the local cache"):
        load_encoder("nobody-here/no-such-encoder")
    assert time.perf_counter() - started < 5


def test_the_default_encoder_ships_in_its_package():
    from influence.features.encoder import default_encoder_path, resolve_encoder

    location, digest, local_only = resolve_encoder(None)
    assert location == str(default_encoder_path()) and local_only and len(digest) == 64


@pytest.mark.slow
def test_the_default_encoder_embeds_related_texts_closer(settings):
    from influence.features.encoder import embeddings, load_encoder

    encoder = load_encoder(None, device="cpu")
    texts = [Example("What is 5 plus 7?", "", "12"), Example("Add 3 and 4.", "", "7"),
             Example("Describe a tiger.", "", "A large striped cat.")]
    vectors = torch.cat([b.features for b in embeddings(encoder, texts)]).numpy()
    assert encoder.dim == 384 and vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_diverse_top_k_skips_what_is_too_close_to_a_chosen_example():
    embeddings = np.array([[1, 0, 0], [0.99, 0.14, 0], [0, 1, 0], [0, 0, 1], [0.7, 0.7, 0]], dtype=np.float16)
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    ids = list("abcde")
    assert top_k(scores, ids, 3).tolist() == [0, 1, 2]
    indices, skipped, _ = diverse_top_k(scores, ids, 3, embeddings, tau=0.9)
    assert indices.tolist() == [0, 2, 3] and skipped == 1
    indices, skipped, _ = diverse_top_k(scores, ids, 4, embeddings, tau=0.9)
    assert indices.tolist() == [0, 2, 3, 4] and skipped == 1  # 0.707 with both 0 and 2: kept at 0.9
    with pytest.raises(SelectionError, match="only 3 examples are left"):
        diverse_top_k(scores, ids, 4, embeddings, tau=0.5)


def test_the_closest_pair_of_picks_is_the_largest_threshold_that_would_change_them():
    embeddings = np.array([[1, 0, 0], [0.99, 0.14, 0], [0, 1, 0], [0, 0, 1], [0.7, 0.7, 0]], dtype=np.float32)
    scores, ids = np.array([5.0, 4.0, 3.0, 2.0, 1.0]), list("abcde")
    picks, _, closest = diverse_top_k(scores, ids, 4, embeddings, tau=0.9)
    assert picks.tolist() == [0, 2, 3, 4]
    assert closest == pytest.approx(0.7 / np.hypot(0.7, 0.7), abs=1e-6)  # e against a and against c
    assert diverse_top_k(scores, ids, 4, embeddings, tau=closest + 1e-3)[1] == 1  # only b, as before
    with pytest.raises(SelectionError):
        diverse_top_k(scores, ids, 4, embeddings, tau=closest - 1e-3)
    assert diverse_top_k(scores, ids, 3, embeddings, tau=0.9)[2] == 0.0  # a, c, d: orthogonal
    assert diverse_top_k(scores, ids, 1, embeddings, tau=0.9)[2] is None


def test_select_with_diversity_skips_near_duplicates_and_records_it(encoder_dir, settings):
    base = "the river runs past the stone under the cloud and light"
    near = [Example(f"Tell story {i}.", "", f"{base}{'!' * i}") for i in range(1, 4)]  # the three longest
    other = [Example(f"Item {w}.", "", f"{w} {w}") for w in WORDS]
    pool = Pool(examples=near + other)
    plain = select(pool, 3, make_selector("longest"))
    assert {e.id for e in plain.examples} == {e.id for e in near}
    diversity = Diversity(tau=0.9, encoder=str(encoder_dir), settings=settings)
    diverse = select(pool, 3, make_selector("longest"), diversity=diversity)
    chosen = diverse.examples
    assert sum(e in near for e in chosen) == 1 and chosen[0] == plain.examples[0]
    vectors = _plain_embeddings(encoder_dir, chosen)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert (vectors @ vectors.T)[np.triu_indices(3, 1)].max() <= 0.9
    record = diverse.manifest("alpaca")["diversity"]
    assert record["tau"] == 0.9 and record["skipped"] == 2 and record["encoder"] == str(encoder_dir)
    assert record["closest_pair_cosine"] == pytest.approx((vectors @ vectors.T)[np.triu_indices(3, 1)].max(), abs=2e-3)


def test_the_new_selectors_are_registered_by_name():
    with pytest.raises(UnknownNameError) as error:
        make_selector("nope")
    assert all(name in str(error.value) for name in ("rds", "embed", "ifd"))


# ------------------------------------------------------------------ the command line


def _cli(*args: str):
    from click.testing import CliRunner

    from influence.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def files(tmp_path):
    from tests.conftest import write_jsonl

    pool = write_jsonl(tmp_path / "pool.jsonl", [e.to_record("alpaca") for e in _pool().examples])
    target = write_jsonl(tmp_path / "target.jsonl", [e.to_record("alpaca") for e in TARGET.examples])
    return pool, target


def test_select_offers_and_runs_rds_embed_and_ifd(tmp_path, files, tiny_model_dir, encoder_dir):
    import json

    pool, target = files
    assert all(name in _cli("select", "--help").output for name in ("rds", "embed", "ifd", "--diversity"))
    common = ["--pool", str(pool), "--k", "2", "--model", str(tiny_model_dir), "--max-length", "128",
              "--index-root", str(tmp_path / "indexes")]
    for name, extra in (("rds", ["--pooling", "mean"]), ("embed", ["--embed-model", str(encoder_dir)]),
                        ("ifd", [])):
        out = tmp_path / f"{name}.jsonl"
        result = _cli("select", *common, "--selector", name, "--target", str(target), *extra, "--out", str(out))
        assert result.exit_code == 0, result.output
        manifest = json.loads(manifest_path(out).read_text())
        assert manifest["selector"]["name"] == name and len(out.read_text().splitlines()) == 2
    assert "selector 'ifd' does not score against --target" in result.output  # ifd is untargeted
    assert json.loads(manifest_path(tmp_path / "rds.jsonl").read_text())["selector"]["params"]["pooling"] == "mean"


def test_select_with_diversity_from_the_command_line(tmp_path, files, encoder_dir):
    import json

    pool, _ = files
    out = tmp_path / "diverse.jsonl"
    result = _cli("select", "--pool", str(pool), "--k", "5", "--diversity", "0.8", "--embed-model", str(encoder_dir),
                  "--index-root", str(tmp_path / "indexes"), "--out", str(out))
    assert result.exit_code == 0, result.output
    record = json.loads(manifest_path(out).read_text())["diversity"]
    assert record["tau"] == 0.8 and record["encoder"] == str(encoder_dir)
    assert f"diversity: skipped {record['skipped']:,} examples with cosine above 0.8" in result.output

    bad = _cli("select", "--pool", str(pool), "--k", "5", "--diversity", "1.5", "--out", str(tmp_path / "bad.jsonl"))
    assert bad.exit_code == 2 and "diversity threshold must be a cosine in (0, 1)" in bad.output
    assert not (tmp_path / "bad.jsonl").exists()


def test_compare_rows_of_rds_ifd_and_embed_use_the_comparison_model(tmp_path, files, tiny_model_dir, encoder_dir):
    pool, target = files
    result = _cli("compare", "--pool", str(pool), "--target", str(target), "--k", "4", "--selectors",
                  f"rds:pooling=mean,ifd,embed:encoder={encoder_dir}", "--seeds", "1", "--no-base", "--epochs", "1",
                  "--train-batch-size", "2", "--train-max-length", "64", "--model", str(tiny_model_dir),
                  "--max-length", "128", "--index-root", str(tmp_path / "indexes"), "--out", str(tmp_path / "cmp"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "indexes").is_dir()  # the comparison's datastore root, not the default
