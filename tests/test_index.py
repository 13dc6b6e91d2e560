"""FAISS inner-product indexes: exact flat search, IVF recall, devices and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from influence.errors import ConfigError, DataError, DatastoreError
from influence.index import (INDEX_KINDS, build_index, default_nlist, describe_index, faiss_gpu_count, load_index,
                             save_index, search)


def unit_rows(n, d, seed=0, dtype=np.float16):
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def brute_top_k(pool, queries, k):
    scores = queries.astype(np.float64) @ pool.astype(np.float64).T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def test_flat_index_finds_the_exact_top_k_from_float16_rows():
    pool, queries = unit_rows(3000, 48), unit_rows(7, 48, seed=1, dtype=np.float32)
    index = build_index(pool, device="cpu", chunk_rows=1000)   # three chunks
    assert index.ntotal == 3000 and describe_index(index)["kind"] == "flat"
    scores, ids = search(index, queries, 25)
    assert scores.shape == ids.shape == (7, 25) and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, brute_top_k(pool, queries, 25))
    expected = np.take_along_axis(queries @ pool.astype(np.float32).T, ids, axis=1)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


class RowsOnly:
    """Only what build_index may use: .shape and row slices (like a datastore's ShardedRows)."""

    def __init__(self, array):
        self._array, self.shape = array, array.shape

    def __getitem__(self, rows):
        assert isinstance(rows, slice) or np.asarray(rows).ndim == 1
        return self._array[rows]


def test_flat_index_over_a_row_sliceable_view_matches_one_array():
    pool = unit_rows(300, 16)
    queries = unit_rows(3, 16, seed=2, dtype=np.float32)
    a = search(build_index(RowsOnly(pool), chunk_rows=50), queries, 10)
    b = search(build_index(pool), queries, 10)
    np.testing.assert_array_equal(a[1], b[1])


def test_k_above_the_pool_is_reduced_to_it():
    pool = unit_rows(5, 8)
    scores, ids = search(build_index(pool), unit_rows(2, 8, seed=1), 50)
    assert ids.shape == (2, 5) and sorted(ids[0]) == [0, 1, 2, 3, 4]


def test_ivf_flat_recall_against_flat():
    # clustered data, as gradient features are; 2 queries near each of a few clusters
    rng = np.random.default_rng(3)
    centres = unit_rows(40, 32, seed=4, dtype=np.float64)
    pool = centres[rng.integers(0, 40, 8000)] + 0.35 * rng.standard_normal((8000, 32)) / np.sqrt(32)
    pool = (pool / np.linalg.norm(pool, axis=1, keepdims=True)).astype(np.float16)
    queries = unit_rows(8, 32, seed=5, dtype=np.float32)
    k = 100
    _, exact = search(build_index(pool, "flat"), queries, k)
    index = build_index(pool, "ivf-flat", nlist=64, nprobe=16, seed=0)
    info = describe_index(index)
    assert info["kind"] == "ivf-flat" and info["nlist"] == 64 and info["nprobe"] == 16
    _, approx = search(index, queries, k)
    recall = np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact)])
    assert recall >= 0.9, recall
    # same seed, same cells, same answer
    np.testing.assert_array_equal(search(build_index(pool, "ivf-flat", nlist=64, nprobe=16, seed=0), queries, k)[1],
                                  approx)
    # probing every cell is exact
    _, full = search(build_index(pool, "ivf-flat", nlist=64, nprobe=64), queries, k)
    np.testing.assert_array_equal(np.sort(full, axis=1), np.sort(exact, axis=1))


@pytest.mark.parametrize("kind", ["flat", "ivf-flat"])
def test_saved_index_loads_and_answers_the_same(tmp_path, kind):
    pool, queries = unit_rows(2000, 16), unit_rows(3, 16, seed=1, dtype=np.float32)
    index = build_index(pool, kind)
    save_index(index, tmp_path / "pool.faiss")
    loaded = load_index(tmp_path / "pool.faiss", device="cpu")
    assert describe_index(loaded) == describe_index(index)
    for a, b in zip(search(loaded, queries, 20), search(index, queries, 20)):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "bad.faiss").write_bytes(b"not an index")
    with pytest.raises(DatastoreError, match="cannot read the index .*bad.faiss.*delete it"):
        load_index(tmp_path / "bad.faiss")
    with pytest.raises(DatastoreError, match="cannot read the index"):
        load_index(tmp_path / "missing.faiss")


def test_default_nlist_keeps_enough_training_points():
    assert default_nlist(10) == 1
    assert default_nlist(1_000_000) == 4000
    assert 39 * default_nlist(5000) <= 5000


def test_bad_requests_are_clear_errors():
    pool = unit_rows(20, 8)
    with pytest.raises(ConfigError, match="unknown index kind 'hnsw'.*flat"):
        build_index(pool, "hnsw")
    with pytest.raises(ConfigError, match="unknown index device"):
        build_index(pool, device="tpu")
    with pytest.raises(DataError, match="2-d"):
        build_index(pool[0])
    with pytest.raises(DataError, match="empty"):
        build_index(pool[:0])
    with pytest.raises(ConfigError, match="index kind 'flat' takes no option nprobe; its options: none"):
        build_index(pool, "flat", nprobe=3)
    with pytest.raises(ConfigError, match="takes no option nprob; its options: nlist, nprobe, seed, train_rows"):
        build_index(pool, "ivf-flat", nprob=3)
    with pytest.raises(ConfigError, match="nlist must be in"):
        build_index(pool, "ivf-flat", nlist=100)
    index = build_index(pool)
    with pytest.raises(DataError, match=r"queries must be \[q, 8\]"):
        search(index, unit_rows(2, 9), 3)
    with pytest.raises(DataError, match="k must be positive"):
        search(index, unit_rows(2, 8), 0)
    assert set(INDEX_KINDS) >= {"flat", "ivf-flat"}


@pytest.mark.skipif(faiss_gpu_count() > 0, reason="a GPU is present")
def test_gpu_asked_without_one_says_so():
    with pytest.raises(ConfigError, match="faiss sees no GPU"):
        build_index(unit_rows(10, 4), device="gpu")


@pytest.mark.cuda
def test_gpu_flat_index_matches_cpu():
    pool, queries = unit_rows(5000, 64), unit_rows(4, 64, seed=1, dtype=np.float32)
    gpu = build_index(pool, device="gpu")
    assert describe_index(gpu)["gpu"]
    np.testing.assert_array_equal(search(gpu, queries, 50)[1], search(build_index(pool, device="cpu"), queries, 50)[1])
