"""The LESS score: hand-made values, brute force, top-k through the index, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from influence.errors import ConfigError, DataError, ManifestMismatchError, SelectionError
from influence.index import build_index
from influence.scoring import checkpoint_weights, concatenated_pool, less_scores, less_top_k, subtask_scores
from influence.scoring import scoring_problem as prepare


def unit_rows(rng, n, d, dtype=np.float16):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def brute_force(pools, targets, lrs, subtasks):
    """The definition, literally: max over subtasks of the mean over its targets of the weighted sum."""
    w = np.asarray(lrs, dtype=np.float64) / np.sum(lrs)
    n = pools[0].shape[0]
    out = np.empty(n)
    for i in range(n):
        best = -np.inf
        for rows in subtasks.values():
            total = 0.0
            for j in rows:
                total += sum(w[c] * np.dot(pools[c][i].astype(np.float64), targets[c][j].astype(np.float64))
                             for c in range(len(pools)))
            best = max(best, total / len(rows))
        out[i] = best
    return out


def random_problem(seed, n=300, m=20, dims=(24, 16, 24), num_subtasks=4):
    rng = np.random.default_rng(seed)
    pools = [unit_rows(rng, n, d) for d in dims]
    targets = [unit_rows(rng, m, d) for d in dims]
    lrs = rng.uniform(1e-5, 2e-5, len(dims))
    owner = rng.integers(0, num_subtasks, m)
    owner[:num_subtasks] = np.arange(num_subtasks)   # no subtask is empty
    subtasks = {f"task{s}": np.flatnonzero(owner == s).tolist() for s in range(num_subtasks)}
    return pools, targets, lrs, subtasks


def test_hand_made_two_checkpoints_lr_2_to_1_two_subtasks():
    s = 1 / np.sqrt(2)
    pools = [np.array([[1, 0], [0, 1], [s, s]]), np.array([[0, 1], [1, 0], [1, 0]])]
    targets = [np.array([[1, 0], [0, 1], [1, 0]]), np.array([[1, 0], [1, 0], [0, 1]])]
    subtasks = {"a": [0], "b": [1, 2]}
    # weights 2/3, 1/3. Example 0: a = 2/3, b = (0 + 1)/2.  Example 1: a = 1/3, b = (1 + 0)/2.
    # Example 2: a = 2s/3 + 1/3, b = ((2s/3 + 1/3) + 2s/3)/2.
    expected = [2 / 3, 1 / 2, (1 + np.sqrt(2)) / 3]
    np.testing.assert_allclose(less_scores(pools, targets, [2e-5, 1e-5], subtasks), expected, rtol=1e-14)
    names, per_subtask = subtask_scores(pools, targets, [2e-5, 1e-5], subtasks)
    assert names == ["a", "b"]
    np.testing.assert_allclose(per_subtask, [[2 / 3, 1 / 2], [1 / 3, 1 / 2],
                                             [2 * s / 3 + 1 / 3, 2 * s / 3 + 1 / 6]], rtol=1e-14)
    np.testing.assert_allclose(checkpoint_weights([2e-5, 1e-5]), [2 / 3, 1 / 3])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_less_scores_equal_the_definition_in_any_chunking(seed):
    pools, targets, lrs, subtasks = random_problem(seed, n=60, m=9)
    expected = brute_force(pools, targets, lrs, subtasks)
    np.testing.assert_allclose(less_scores(pools, targets, lrs, subtasks), expected, rtol=1e-12, atol=1e-14)
    tiny = less_scores(pools, targets, lrs, subtasks, memory_bytes=1)   # one row per chunk
    np.testing.assert_allclose(tiny, expected, rtol=1e-12, atol=1e-14)


def test_less_scores_read_memory_mapped_features(tmp_path):
    pools, targets, lrs, subtasks = random_problem(4)
    mapped = []
    for c, pool in enumerate(pools):
        np.save(tmp_path / f"p{c}.npy", pool)
        mapped.append(np.load(tmp_path / f"p{c}.npy", mmap_mode="r"))
    # chunking may change the last bit of a float64 sum (BLAS blocking), nothing more
    np.testing.assert_allclose(less_scores(mapped, targets, lrs, subtasks, memory_bytes=4096),
                               less_scores(pools, targets, lrs, subtasks), rtol=1e-13, atol=1e-16)


def test_one_checkpoint_may_be_given_as_a_plain_array():
    pools, targets, _, subtasks = random_problem(5, dims=(16,))
    np.testing.assert_array_equal(less_scores(pools[0], targets[0], [1.0], subtasks),
                                  less_scores(pools, targets, [3.0], subtasks))


def exact_top(scores, k):
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order[:k]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("k", [1, 17, 120])
def test_less_top_k_equals_brute_force(seed, k):
    pools, targets, lrs, subtasks = random_problem(seed)
    scores = less_scores(pools, targets, lrs, subtasks)
    top = np.sort(scores)[::-1]
    assert top[k - 1] - top[k] > 1e-9   # no tie at the cut (none occurs with these seeds)
    result = less_top_k(pools, targets, lrs, subtasks, k)
    assert result.exact
    np.testing.assert_array_equal(result.indices, exact_top(scores, k))
    np.testing.assert_allclose(result.scores, scores[result.indices], rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(result.candidate_scores, scores[result.candidates], rtol=1e-13, atol=1e-16)


def test_less_top_k_widens_its_search_until_the_answer_is_proven():
    # one subtask and no margin: the k-th hit is the lowest hit, which proves nothing
    pools, targets, lrs, subtasks = random_problem(7, num_subtasks=1)
    scores = less_scores(pools, targets, lrs, subtasks)
    result = less_top_k(pools, targets, lrs, subtasks, 40, margin=0)
    assert result.exact and result.searched_k == 80
    np.testing.assert_array_equal(result.indices, exact_top(scores, 40))


def test_less_top_k_with_a_prebuilt_index_and_ids_for_ties():
    pools, targets, lrs, subtasks = random_problem(8, n=100)
    pools = [np.concatenate([p, p[:10]]) for p in pools]     # rows 100..109 duplicate rows 0..9: exact ties
    ids = [f"id{i:03d}" for i in range(100)] + [f"a{i:03d}" for i in range(10)]   # duplicates sort first
    index = build_index(concatenated_pool(pools))
    scores = less_scores(pools, targets, lrs, subtasks)
    expected = np.lexsort((np.asarray(ids), -scores))
    first_copy = int(np.flatnonzero(expected >= 100)[0])   # the cut right after it splits a tie
    assert expected[first_copy + 1] == expected[first_copy] - 100
    for k in (first_copy + 1, 37, 110):
        result = less_top_k(pools, targets, lrs, subtasks, k, index=index, ids=ids)
        assert result.exact
        np.testing.assert_array_equal(result.indices, expected[:k])
    import faiss
    l2 = faiss.IndexFlatL2(index.d)
    l2.add(np.asarray(concatenated_pool(pools)[0:110]))
    with pytest.raises(DataError, match="inner-product index"):
        less_top_k(pools, targets, lrs, subtasks, 5, index=l2)
    with pytest.raises(DataError, match="rebuild the index"):
        less_top_k(pools, targets, lrs, subtasks, 5, index=build_index(concatenated_pool(pools)[:50]))


def test_less_top_k_with_an_approximate_index_reports_it():
    pools, targets, lrs, subtasks = random_problem(9, n=2000)
    result = less_top_k(pools, targets, lrs, subtasks, 50, index_kind="ivf-flat", nlist=16, nprobe=16)
    assert not result.exact
    scores = less_scores(pools, targets, lrs, subtasks)
    np.testing.assert_array_equal(result.indices, exact_top(scores, 50))   # every cell probed: same answer


def test_bad_input_gets_clear_errors():
    pools, targets, lrs, subtasks = random_problem(0, n=30, m=6)
    with pytest.raises(DataError, match="target has no examples"):
        less_scores(pools, [t[:0] for t in targets], lrs, {"all": []})
    with pytest.raises(DataError, match="subtask 'task1' has no target examples"):
        less_scores(pools, targets, lrs, {**subtasks, "task1": []})
    with pytest.raises(DataError, match="no subtasks"):
        less_scores(pools, targets, lrs, {})
    with pytest.raises(DataError, match="refers to target row 6"):
        less_scores(pools, targets, lrs, {"x": [0, 6]})
    with pytest.raises(ManifestMismatchError, match="checkpoint counts disagree.*3.*2.*3"):
        less_scores(pools, targets[:2], lrs, subtasks)
    with pytest.raises(ManifestMismatchError, match="checkpoint counts disagree"):
        less_scores(pools, targets, lrs[:2], subtasks)
    with pytest.raises(ManifestMismatchError, match="checkpoint 1: pool features have dimension 16 but target "
                                                    "features 8"):
        less_scores(pools, [targets[0], targets[1][:, :8], targets[2]], lrs, subtasks)
    with pytest.raises(ManifestMismatchError, match="number of rows per checkpoint"):
        less_scores([pools[0], pools[1][:20], pools[2]], targets, lrs, subtasks)
    with pytest.raises(ConfigError, match="learning rates"):
        less_scores(pools, targets, [1.0, -1.0, 1.0], subtasks)
    with pytest.raises(ConfigError, match="learning rates"):
        checkpoint_weights([])
    with pytest.raises(SelectionError, match=r"k must be in \[1, 30\]"):
        less_top_k(pools, targets, lrs, subtasks, 31)
    bad = [t.copy() for t in targets]
    bad[0][2, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        prepare(pools, bad, lrs, subtasks)
