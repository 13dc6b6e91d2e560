"""Selection algorithms over [pool, target] similarities: round-robin's turns, UOT's transport, the
matrices the scores keep for them, RDS+'s pooling weights, and the manifest and errors around them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from influence.algorithms import (SUBTASK, TARGET, RoundRobin, Similarities, TopK, Uot, algorithm_from_options,
                                  check_similarity_size, make_algorithm, round_robin, uot_masses)
from influence.constants import manifest_path
from influence.data import Example
from influence.data.pools import Pool
from influence.data.targets import Target
from influence.errors import ConfigError, SelectionError, UnknownNameError
from influence.features.represent import pool_hidden, position_weights
from influence.ranking import top_k
from influence.scoring import (less_scores, mean_max_over_subtasks, pairwise_scores, unprojected_scores,
                               unprojected_subtask_scores)
from influence.selection import select, write_selection
from influence.selectors import make_selector
from tests.test_lexical_selectors import _pool as planted_pool, _target as planted_target


def _ids(n: int) -> list[str]:
    return [f"id{i:04d}" for i in range(n)]


def _similarities(values: np.ndarray, subtasks: dict | None = None) -> Similarities:
    width = values.shape[1]
    return Similarities(values, TARGET, tuple(f"t{j}" for j in range(width)), subtasks or {"all": list(range(width))})


# ------------------------------------------------------------------ round-robin


def test_round_robin_gives_each_target_in_turn_its_best_example_not_yet_chosen():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(60, 4)).astype(np.float32)
    values[:, 1] = values[:, 0] + 0.01  # two targets that want the same examples
    ids = _ids(60)
    picks, owners = round_robin(values, ids, 22)
    taken: set[int] = set()
    for turn, (row, column) in enumerate(zip(picks, owners)):
        assert column == turn % 4  # turns cycle over the targets in their order
        free = [r for r in range(60) if r not in taken]
        assert row == max(free, key=lambda r: values[r, column])  # that target's best example still free
        taken.add(int(row))
    assert len(set(picks.tolist())) == 22


def test_round_robin_an_example_best_for_several_targets_goes_to_the_first_and_the_next_takes_its_runner_up():
    values = np.array([[0.9, 0.95], [0.5, 0.8], [0.7, 0.1]], dtype=np.float32)
    picks, owners = round_robin(values, _ids(3), 3)
    assert picks.tolist() == [0, 1, 2] and owners.tolist() == [0, 1, 0]


def test_round_robin_breaks_ties_by_id_never_picks_nan_and_does_not_depend_on_pool_order():
    values = np.array([[0.5], [0.5], [np.nan], [0.2]], dtype=np.float32)
    ids = ["b", "a", "c", "d"]
    assert round_robin(values, ids, 3)[0].tolist() == [1, 0, 3]
    with pytest.raises(SelectionError, match="choose k <= 3"):
        round_robin(values, ids, 4)
    rng = np.random.default_rng(1)
    values = rng.normal(size=(40, 3)).astype(np.float32)
    ids = _ids(40)
    order = rng.permutation(40)
    first = [ids[i] for i in round_robin(values, ids, 15)[0]]
    shuffled = [ids[order[i]] for i in round_robin(values[order], [ids[i] for i in order], 15)[0]]
    assert first == shuffled


def test_round_robin_skips_a_copy_of_an_id_already_chosen_past_its_first_candidates():
    values = np.array([[0.9], [0.8], [0.7], [0.6]], dtype=np.float32)
    ids = ["x", "x", "x", "y"]  # copies under one id count once
    assert round_robin(values, ids, 2)[0].tolist() == [0, 3]


def _two_clusters() -> tuple[np.ndarray, list[int], list[int]]:
    """Three target examples near e1, one near e2; pool rows 0-9 near e1 (cos .90-.99), 10-19 near e2 (.80-.89).

    The aggregated score (mean over the four targets) ranks every e1 row above every e2 row.
    """
    near_first = np.linspace(0.99, 0.90, 10)
    near_second = np.linspace(0.89, 0.80, 10)
    values = np.zeros((20, 4), dtype=np.float32)
    values[:10, :3] = near_first[:, None]
    values[10:, 3] = near_second
    return values, list(range(10)), list(range(10, 20))


def test_round_robin_gives_target_clusters_picks_in_proportion_to_their_size():
    values, first, second = _two_clusters()
    picks = RoundRobin().choose(values.mean(axis=1), _ids(20), 8, _similarities(values))[0].tolist()
    assert sum(p in first for p in picks) == 6 and sum(p in second for p in picks) == 2
    assert all(p in first for p in top_k(values.mean(axis=1), _ids(20), 8))  # top-k: the large cluster only


def test_round_robin_over_subtasks_takes_turns_per_subtask_on_the_subtask_mean():
    values, _, _ = _two_clusters()
    sims = _similarities(values, {"big": [0, 1, 2], "small": [3]})
    picks, record = RoundRobin(over=SUBTASK).choose(sims.aggregate(), _ids(20), 4, sims)
    assert picks.tolist() == [0, 10, 1, 11] and record["over"] == SUBTASK and record["columns"] == 2


def test_over_target_examples_with_subtask_columns_runs_per_subtask_and_says_so(caplog):
    values = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.7]], dtype=np.float32)
    sims = Similarities(values, SUBTASK, ("a", "b"), {"a": [0], "b": [1]})
    with caplog.at_level("WARNING"):
        picks, record = RoundRobin().choose(sims.aggregate(), _ids(3), 2, sims)
    assert picks.tolist() == [0, 2]
    assert record["over"] == SUBTASK and record["requested"] == TARGET and "per subtask" in caplog.text


# ------------------------------------------------------------------ unbalanced optimal transport


def test_uot_mass_is_the_semi_relaxed_transport_each_target_spreading_its_share_by_similarity():
    rng = np.random.default_rng(2)
    values = rng.uniform(-1, 1, size=(30, 3))
    masses = uot_masses(values, eps=0.01, target_marginal=np.inf, pool_marginal=1e-4)
    assert masses.sum() == pytest.approx(1.0, abs=1e-4)  # every target example sends exactly 1/M
    # with a loose pool marginal each target sends its 1/M in proportion to exp(-cost / eps)
    kernel = np.exp(-(1 - values) / 2 / 0.01)
    expected = (kernel / kernel.sum(axis=0) / 3).sum(axis=1)
    np.testing.assert_allclose(masses, expected, atol=3e-3)


def test_uot_serves_a_small_target_cluster_that_top_k_of_the_mean_leaves_out():
    values, first, second = _two_clusters()
    picks, record = Uot().choose(values.mean(axis=1), _ids(20), 4, _similarities(values))
    assert sum(p in first for p in picks) == 3 and sum(p in second for p in picks) == 1
    assert picks[0] == 0 and 10 in picks  # each cluster's closest example
    assert record["name"] == "uot" and record["target_marginal"] == "inf" and record["scaled"] is None


def test_uot_divides_unbounded_scores_by_each_targets_largest_and_never_picks_nan():
    values = np.array([[30.0, 0.0], [20.0, 0.0], [0.0, 3.0], [np.nan, np.nan]], dtype=np.float32)
    sims = Similarities(values, TARGET, ("a", "b"), {"all": [0, 1]}, bounded=False)
    picks, record = Uot().choose(sims.aggregate(), _ids(4), 2, sims)
    assert sorted(picks.tolist()) == [0, 2] and record["scaled"]
    with pytest.raises(SelectionError):
        Uot().choose(sims.aggregate(), _ids(4), 4, sims)


# ------------------------------------------------------------------ the matrices behind the scores


def test_the_pairwise_matrix_aggregated_is_the_less_score():
    rng = np.random.default_rng(3)
    pool = [rng.normal(size=(25, 8)) for _ in range(2)]
    target = [rng.normal(size=(5, 8)) for _ in range(2)]
    subtasks = {"a": [0, 3], "b": [1, 2, 4]}
    matrix = pairwise_scores(pool, target, [2e-5, 1e-5], memory_bytes=500)
    assert matrix.shape == (25, 5) and matrix.dtype == np.float32
    expected = sum(w * p @ t.T for w, p, t in zip([2 / 3, 1 / 3], pool, target))
    np.testing.assert_allclose(matrix, expected, rtol=1e-5, atol=1e-6)
    aggregated = _similarities(matrix, subtasks).aggregate()
    np.testing.assert_allclose(aggregated, less_scores(pool, target, [2e-5, 1e-5], subtasks), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aggregated, mean_max_over_subtasks(matrix, subtasks), rtol=1e-6)


def test_the_unprojected_subtask_matrix_is_the_score_before_its_max():
    rng = np.random.default_rng(4)
    cosines = [[rng.uniform(-1, 1, size=(30, 2)), rng.uniform(-1, 1, size=(30, 1))] for _ in range(3)]
    lrs = [1.0, 2.0, 1.0]
    matrix = unprojected_subtask_scores(cosines, lrs, memory_bytes=300)
    assert matrix.shape == (30, 3)
    np.testing.assert_allclose(matrix.max(axis=1), unprojected_scores(cosines, lrs), rtol=1e-6)


def test_a_matrix_past_the_memory_bound_is_refused_with_the_way_out():
    from influence.selection import check_algorithm

    check_similarity_size(5_000, 300)  # 6 MB
    with pytest.raises(SelectionError, match="1,000,000 x 2,000 .*--algorithm top-k"):
        check_similarity_size(1_000_000, 2_000)
    bm25 = make_selector("bm25")
    check_algorithm(bm25, RoundRobin(), pool_size=1_000_000, target_size=300)  # 1.2 GB of float32
    with pytest.raises(SelectionError, match="14.5 GiB"):  # UOT's dense float64 transport on top
        check_algorithm(bm25, Uot(), pool_size=1_000_000, target_size=300)


# ------------------------------------------------------------------ RDS+ pooling


def test_rds_plus_weights_each_real_token_by_its_position_and_padding_by_nothing():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    weights = position_weights(mask)
    torch.testing.assert_close(weights[0], torch.tensor([1, 2, 3, 0]) / 6.0)
    torch.testing.assert_close(weights[1], torch.tensor([1, 2, 3, 4]) / 10.0)
    hidden = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    pooled = pool_hidden(hidden, mask, "weighted")
    torch.testing.assert_close(pooled[0], (hidden[0, :3] * torch.tensor([1.0, 2, 3])[:, None]).sum(0) / 6)
    # a padded row pools as the same row alone would
    torch.testing.assert_close(pooled[0], pool_hidden(hidden[:1, :3], mask[:1, :3], "weighted")[0])


# ------------------------------------------------------------------ through select, the manifest and the CLI


@pytest.mark.parametrize("name", ["round-robin", "uot"])
def test_bm25_with_an_algorithm_selects_k_unique_examples_reproducibly_and_records_it(tmp_path, name):
    pool, planted = planted_pool([("Which planet has rings?", "Saturn has rings."),
                                  ("How long should pasta boil?", "Boil pasta ten minutes.")])
    target = planted_target()
    algorithm = make_algorithm(name)
    first = select(pool, 5, make_selector("bm25"), target=target, algorithm=algorithm)
    again = select(pool, 5, make_selector("bm25"), target=target, algorithm=algorithm)
    assert first.indices.tolist() == again.indices.tolist()
    assert len(set(first.indices.tolist())) == 5 and all(0 <= i < len(pool) for i in first.indices)
    assert set(planted) <= {pool.ids[i] for i in first.indices}
    out, meta = write_selection(first, tmp_path / "chosen.jsonl")
    manifest = json.loads(meta.read_text())
    assert manifest["algorithm"]["name"] == name and manifest["algorithm"]["over"] == TARGET
    assert manifest["algorithm"]["columns"] == len(target)
    top = select(pool, 5, make_selector("bm25"), target=target)
    assert top.manifest("alpaca")["algorithm"] == TopK().to_dict()


@pytest.mark.parametrize("selector", ["longest", "random", "dsir"])
def test_an_algorithm_needing_similarities_with_a_selector_without_them_is_refused(selector):
    pool, _ = planted_pool([])
    with pytest.raises(SelectionError, match="needs per-target similarities"):
        select(pool, 3, make_selector(selector), target=planted_target(), algorithm=RoundRobin())


def test_algorithm_options_are_checked_and_those_it_does_not_take_are_named():
    with pytest.raises(UnknownNameError):
        make_algorithm("greedy")
    with pytest.raises(ConfigError):
        RoundRobin(over="example")
    with pytest.raises(ConfigError):
        Uot(eps=0)
    algorithm, ignored = algorithm_from_options("round-robin", {"algorithm_over": "subtask", "uot_eps": 0.1})
    assert algorithm == RoundRobin(over="subtask") and ignored == ["uot_eps"]


def _cli(*args: str):
    from click.testing import CliRunner

    from influence.cli import main

    return CliRunner().invoke(main, list(args))


def test_select_cli_runs_an_algorithm_and_refuses_one_the_selector_cannot_serve(tmp_path):
    from tests.conftest import write_jsonl

    pool, _ = planted_pool([("Which planet has rings?", "Saturn has rings.")])
    pool_file = write_jsonl(tmp_path / "pool.jsonl", [e.to_record("alpaca") for e in pool.examples])
    target_file = write_jsonl(tmp_path / "target.jsonl", [e.to_record("alpaca") for e in planted_target().examples])
    out = tmp_path / "rr.jsonl"
    result = _cli("select", "--pool", str(pool_file), "--target", str(target_file), "--selector", "bm25",
                  "--algorithm", "round-robin", "--algorithm-over", "subtask", "--k", "4", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "by round-robin" in result.output
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["algorithm"]["name"] == "round-robin" and manifest["algorithm"]["over"] == SUBTASK
    refused = _cli("select", "--pool", str(pool_file), "--target", str(target_file), "--selector", "longest",
                   "--algorithm", "uot", "--k", "4", "--out", str(tmp_path / "no.jsonl"))
    assert refused.exit_code != 0
    assert refused.output.strip().splitlines() == [
        "error: --algorithm uot needs per-target similarities, and selector 'longest' gives one score per "
        "example; use less, rds, embed or bm25, or --algorithm top-k"]
    assert not (tmp_path / "no.jsonl").exists()
    noted = _cli("select", "--pool", str(pool_file), "--target", str(target_file), "--selector", "bm25",
                 "--uot-eps", "0.1", "--k", "4", "--out", str(tmp_path / "top.jsonl"))
    assert noted.exit_code == 0 and "note: --algorithm top-k ignores --uot-eps" in noted.output
    assert json.loads(manifest_path(tmp_path / "top.jsonl").read_text())["algorithm"]["name"] == "top-k"


def test_a_compare_row_takes_its_algorithm_from_its_options():
    from influence.compare.row_selector import make_row_selector, row_algorithm
    from influence.compare.settings import CompareSettings, SelectorRow

    row = SelectorRow.parse("bm25:algorithm=round-robin,algorithm_over=subtask")
    assert row_algorithm(row) == RoundRobin(over=SUBTASK)
    assert make_row_selector(row, CompareSettings(pools=["toy"], targets=["toy-target"])).name == "bm25"
    assert row_algorithm(SelectorRow.parse("less")) == TopK()
    with pytest.raises(ConfigError, match="takes no uot_eps"):
        row_algorithm(SelectorRow.parse("less:algorithm=round-robin,uot_eps=0.1"))
    with pytest.raises(ConfigError, match="unknown algorithm"):
        row_algorithm(SelectorRow.parse("less:algorithm=greedy"))


# ------------------------------------------------------------------ LESS and RDS keep their matrices


def test_less_gives_per_target_similarities_from_features_and_per_subtask_ones_from_exact_cosines(tmp_path):
    from influence.less import LessSettings
    from influence.selectors.less import LessSelector
    from tests.test_less import _loaded, _pool as less_pool
    from tests.test_unprojected import TWO_SUBTASKS

    pool, loaded = less_pool(), _loaded()
    for scoring, columns, count in (("faiss", TARGET, len(TWO_SUBTASKS)), ("unprojected", SUBTASK, 2)):
        settings = LessSettings.for_tests(index_root=tmp_path / scoring, scoring=scoring)
        chosen = select(pool, 6, LessSelector(settings, loaded=loaded), target=TWO_SUBTASKS, algorithm=RoundRobin())
        record = chosen.manifest("alpaca")["algorithm"]
        assert record["over"] == columns and record["columns"] == count and len(set(chosen.indices.tolist())) == 6
        # the aggregate of the matrix is the score top-k ranks (every example scored exactly)
        exact = settings.with_(scoring="exact") if scoring == "faiss" else settings
        top = select(pool, 6, LessSelector(exact, loaded=loaded), target=TWO_SUBTASKS)
        np.testing.assert_allclose(chosen.scores, top.scores, rtol=1e-4, atol=1e-6)


def test_rds_plus_with_round_robin_selects_the_planted_copies_of_each_target_example(tmp_path):
    from influence.less import LessSettings
    from tests.test_less import _loaded
    from tests.test_representations import TARGET as MIXED, _pool as rds_pool

    loaded = _loaded()
    settings = LessSettings.for_tests(index_root=tmp_path / "indexes", device="cpu", shard_rows=8)
    pool = rds_pool(copies=3)
    chosen = select(pool, 3, make_selector("rds", settings=settings, pooling="weighted", loaded=loaded),
                    target=MIXED, algorithm=RoundRobin())
    # each target example's exact copy is its most similar pool example, taken on its own turn
    assert [pool.ids[i] for i in chosen.indices] == [e.id for e in MIXED.examples]
    manifest = chosen.manifest("alpaca")
    assert manifest["selector"]["params"]["pooling"] == "weighted" and manifest["algorithm"]["over"] == TARGET
