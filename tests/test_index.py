"""FAISS inner-product indexes: exact flat search, IVF and IVF-PQ recall, devices and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from influence.errors import ConfigError, DataError, DatastoreError
from influence.index import (INDEX_KINDS, build_index, default_nlist, default_pq_m, default_pq_nlist, describe_index,
                             faiss_gpu_count, load_index, save_index, search)


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


def clustered_rows(n, d, seed=3):
    """Unit rows around 40 centres, as gradient features of similar examples are."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(40, d, seed=4, dtype=np.float64)
    pool = centres[rng.integers(0, 40, n)] + 0.35 * rng.standard_normal((n, d)) / np.sqrt(d)
    return (pool / np.linalg.norm(pool, axis=1, keepdims=True)).astype(np.float16)


def recall(found, exact):
    return np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(found, exact)])


def rescored_top_k(pool, queries, hits, k):
    """The k best of each query's hits by exact inner product (what less_top_k does with its candidates)."""
    scores = np.einsum("qd,qkd->qk", queries, pool[hits].astype(np.float32))
    return np.take_along_axis(hits, np.argsort(-scores, axis=1)[:, :k], axis=1)


def test_ivf_flat_recall_against_flat():
    # clustered data, as gradient features are; 2 queries near each of a few clusters
    pool = clustered_rows(8000, 32)
    queries = unit_rows(8, 32, seed=5, dtype=np.float32)
    k = 100
    _, exact = search(build_index(pool, "flat"), queries, k)
    index = build_index(pool, "ivf-flat", nlist=64, nprobe=16, seed=0)
    info = describe_index(index)
    assert info["kind"] == "ivf-flat" and info["nlist"] == 64 and info["nprobe"] == 16
    _, approx = search(index, queries, k)
    assert recall(approx, exact) >= 0.9, recall(approx, exact)
    # same seed, same cells, same answer
    np.testing.assert_array_equal(search(build_index(pool, "ivf-flat", nlist=64, nprobe=16, seed=0), queries, k)[1],
                                  approx)
    # probing every cell is exact
    _, full = search(build_index(pool, "ivf-flat", nlist=64, nprobe=64), queries, k)
    np.testing.assert_array_equal(np.sort(full, axis=1), np.sort(exact, axis=1))


def test_ivf_pq_recall_against_flat_and_after_exact_rescoring():
    # measured (deterministic: seeded data, seeded k-means): raw 0.60 / 0.81, rescored 0.97 / 1.0
    pool = clustered_rows(8000, 64)
    queries = unit_rows(8, 64, seed=5, dtype=np.float32)
    k = 100
    _, exact = search(build_index(pool, "flat"), queries, k)
    index = build_index(pool, "ivf-pq", nlist=64, nprobe=16, seed=0)
    info = describe_index(index)
    assert info == {**info, "kind": "ivf-pq", "nlist": 64, "nprobe": 16, "m": default_pq_m(64)}
    assert index.code_size == 4  # 4 bytes a row instead of 256 for float32
    _, approx = search(index, queries, k)
    assert recall(approx, exact) >= 0.4
    _, wide = search(index, queries, 4 * k)
    assert recall(rescored_top_k(pool, queries, wide, k), exact) >= 0.85
    np.testing.assert_array_equal(search(build_index(pool, "ivf-pq", nlist=64, nprobe=16, seed=0), queries, k)[1],
                                  approx)
    # longer codes, better recall
    finer = build_index(pool, "ivf-pq", nlist=64, nprobe=16, m=16, seed=0)
    assert describe_index(finer)["m"] == 16
    _, approx = search(finer, queries, k)
    assert recall(approx, exact) >= 0.65
    assert recall(rescored_top_k(pool, queries, search(finer, queries, 4 * k)[1], k), exact) >= 0.95


def test_ivf_pq_from_a_float16_memmap_in_chunks_matches_one_array(tmp_path):
    pool = clustered_rows(3000, 32)
    stored = np.lib.format.open_memmap(tmp_path / "pool.npy", mode="w+", dtype=np.float16, shape=pool.shape)
    stored[:] = pool
    stored.flush()
    del stored
    mapped = np.load(tmp_path / "pool.npy", mmap_mode="r")
    queries = unit_rows(4, 32, seed=6, dtype=np.float32)
    a = build_index(mapped, "ivf-pq", chunk_rows=700, nlist=32, seed=1)
    b = build_index(pool, "ivf-pq", nlist=32, seed=1)
    assert a.ntotal == 3000
    for x, y in zip(search(a, queries, 50), search(b, queries, 50)):
        np.testing.assert_array_equal(x, y)


def test_ivf_pq_on_a_tiny_pool_uses_fewer_bits():
    pool = unit_rows(300, 16)
    index = build_index(pool, "ivf-pq")
    info = describe_index(index)
    assert info["nbits"] < 8 and info["nlist"] == default_nlist(300)
    _, ids = search(index, unit_rows(2, 16, seed=1), 10)
    assert ids.shape == (2, 10) and (ids >= 0).all()


def test_ivf_pq_defaults_follow_n_and_d():
    assert default_pq_m(1024) == 64 and default_pq_m(1024, gpu=True) == 64
    assert default_pq_m(8192) == 512
    assert default_pq_m(8192, gpu=True) == 512  # no GPU-supported size: built on the CPU
    assert default_pq_m(768, gpu=True) == 48 and default_pq_m(100) == 5 and default_pq_m(10) == 1
    assert default_pq_nlist(1_000_000, 1024) == default_nlist(1_000_000) == 4000
    # LESS's 4 checkpoints x 8192 dims: the float32 training sample (39 rows a cell) stays near 1 GiB
    assert default_pq_nlist(1_000_000, 4 * 8192) == 210


@pytest.mark.parametrize("kind", ["flat", "ivf-flat", "ivf-pq"])
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
    with pytest.raises(ConfigError, match="train_rows must be at least nlist=4"):
        build_index(pool, "ivf-flat", nlist=4, train_rows=2)
    with pytest.raises(ConfigError, match="takes no option nprob; its options: nlist, nprobe, m, nbits, seed, "
                                          "train_rows"):
        build_index(pool, "ivf-pq", nprob=3)
    with pytest.raises(ConfigError, match="must divide the dimension 8, got 3; the default for d=8 is 1"):
        build_index(pool, "ivf-pq", m=3)
    with pytest.raises(ConfigError, match="nbits must be in"):
        build_index(pool, "ivf-pq", nbits=0)
    with pytest.raises(ConfigError, match="ivf-pq needs at least"):
        build_index(pool, "ivf-pq", nbits=8)
    index = build_index(pool)
    with pytest.raises(DataError, match=r"queries must be \[q, 8\]"):
        search(index, unit_rows(2, 9), 3)
    with pytest.raises(DataError, match="k must be positive"):
        search(index, unit_rows(2, 8), 0)
    assert set(INDEX_KINDS) >= {"flat", "ivf-flat", "ivf-pq"}


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


@pytest.mark.cuda
def test_gpu_ivf_pq_recall_matches_cpu_roughly():
    pool, queries = clustered_rows(20000, 64), unit_rows(4, 64, seed=1, dtype=np.float32)
    _, exact = search(build_index(pool, device="cpu"), queries, 100)
    gpu = build_index(pool, "ivf-pq", device="gpu", nlist=64, nprobe=16)
    assert describe_index(gpu)["gpu"] and describe_index(gpu)["kind"] == "ivf-pq"
    cpu = build_index(pool, "ivf-pq", device="cpu", nlist=64, nprobe=16)
    assert abs(recall(search(gpu, queries, 100)[1], exact) - recall(search(cpu, queries, 100)[1], exact)) < 0.15
