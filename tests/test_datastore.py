"""The feature datastore: round trip, resume after a kill, integrity, identity, locking."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from influence.errors import DatastoreError, ManifestMismatchError
from influence.features.datastore import FeatureStore
from influence.features.rows import ShardedRows
from influence.provenance import settings_difference as identity_difference

ROOT = Path(__file__).resolve().parents[1]
N, D, SHARD = 50, 12, 8   # 7 shards, the last one 2 rows


def make_identity(**changes):
    identity = {"model": {"id": "tiny-llama", "weights_sha256": "ab" * 8},
                "lora": {"r": 4, "alpha": 16, "parameters_sha256": "cd" * 8},
                "checkpoint": "epoch-1", "gradient": "adam",
                "projector": {"type": "sjlt", "backend": "cpu", "seed": 0, "dim": D},
                "dtype": "float16", "max_length": 64, "pool": "alpaca:0123", "versions": {"numpy": "2"}}
    for dotted, value in changes.items():
        node = identity
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return identity


def make_ids(n=N):
    return [f"ex{i:04d}" for i in range(n)]


def make_features(n=N, d=D, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_all(store, features, batch=5, order=None):
    rows = store.missing_rows() if order is None else order
    for start in range(0, len(rows), batch):
        chunk = rows[start: start + batch]
        store.write_rows(chunk, features[chunk])


def make_clean(path, features):
    with FeatureStore.create(path, identity=make_identity(), example_ids=make_ids(len(features)), dim=D,
                             shard_rows=SHARD) as store:
        write_all(store, features)
        store.finalize()
    return path


def tree_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_round_trip_features_rows_and_manifest(tmp_path):
    features = make_features()
    store_path = make_clean(tmp_path / "store", features)
    store = FeatureStore.open(store_path, identity=make_identity(), example_ids=make_ids())
    assert store.is_complete
    out = store.features()
    assert out.dtype == np.float16 and out.shape == (N, D)
    np.testing.assert_array_equal(out, features.astype(np.float16))
    rows = store.rows()
    assert isinstance(rows, ShardedRows) and rows.shape == (N, D) and len(rows) == N
    np.testing.assert_array_equal(rows[5:21], out[5:21])
    np.testing.assert_array_equal(rows[[49, 0, 17, 17]], out[[49, 0, 17, 17]])
    np.testing.assert_array_equal(rows[-1], out[-1])
    np.testing.assert_array_equal(np.asarray(rows), out)
    manifest = json.loads((store_path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["example_ids"] == make_ids() and manifest["shard_rows"] == SHARD
    assert len(manifest["shards"]) == 7 and all(len(s["sha256"]) == 64 for s in manifest["shards"])
    assert manifest["identity"] == make_identity()
    assert not (store_path / "lock").exists()


def test_memory_mapped_rows_feed_the_scorer_chunk_by_chunk(tmp_path):
    from influence.scoring import less_scores

    features = make_features()
    store = FeatureStore.open(make_clean(tmp_path / "store", features))
    targets, subtasks = make_features(n=4, seed=1), {"a": [0, 1], "b": [2, 3]}
    np.testing.assert_allclose(less_scores(store.rows(), targets, [1.0], subtasks, memory_bytes=1000),
                               less_scores(store.features(), targets, [1.0], subtasks), rtol=1e-13, atol=1e-16)


def test_single_shard_store_is_memory_mapped(tmp_path):
    features = make_features(n=6)
    with FeatureStore.create(tmp_path / "s", identity=make_identity(), example_ids=make_ids(6), dim=D) as store:
        store.write_rows(np.arange(6), features)
        store.finalize()
    out = FeatureStore.open(tmp_path / "s").features()
    assert isinstance(out, np.memmap)
    np.testing.assert_array_equal(out, features.astype(np.float16))


def test_rows_in_any_order_and_twice_give_the_same_store(tmp_path):
    features = make_features()
    clean = make_clean(tmp_path / "clean", features)
    order = np.random.default_rng(1).permutation(N)
    with FeatureStore.create(tmp_path / "shuffled", identity=make_identity(), example_ids=make_ids(), dim=D,
                             shard_rows=SHARD) as store:
        write_all(store, features, batch=7, order=order)
        write_all(store, features, batch=3, order=order[:20])   # rows of finished shards are ignored
        sidecar = (tmp_path / "shuffled" / "shards" / "000000.json").stat().st_mtime_ns
        store.write_shard(0, features[:SHARD])                   # the same shard again: a no-op
        assert (tmp_path / "shuffled" / "shards" / "000000.json").stat().st_mtime_ns == sidecar
        store.finalize()
    assert tree_bytes(tmp_path / "shuffled") == tree_bytes(clean)


def test_pending_row_groups_are_whole_shards_and_bounded(tmp_path):
    features = make_features()
    with FeatureStore.create(tmp_path / "s", identity=make_identity(), example_ids=make_ids(), dim=D,
                             shard_rows=SHARD) as store:
        store.write_rows(np.arange(8, 16), features[8:16])             # shard 1 done
        groups = store.pending_row_groups(max_rows=20)
        assert [g.tolist() for g in groups] == [list(range(0, 8)) + list(range(16, 24)), list(range(24, 40)),
                                                list(range(40, 50))]
        assert [g.tolist() for g in store.pending_row_groups(max_rows=3, rank=1, world_size=2)] == [
            list(range(24, 32)), list(range(40, 48))]
        for rows in groups:                                            # each group completes its shards
            order = np.random.default_rng(0).permutation(rows)         # as length-sorted batches would be
            assert store.write_rows(order, features[order]) == sorted(set((rows // SHARD).tolist()))
        assert store.pending_shards() == []


def test_interrupted_then_resumed_equals_one_clean_run(tmp_path):
    features = make_features()
    clean = make_clean(tmp_path / "clean", features)
    path = tmp_path / "resumed"
    store = FeatureStore.create(path, identity=make_identity(), example_ids=make_ids(), dim=D, shard_rows=SHARD)
    store.write_rows(np.arange(0, 21), features[:21])    # shards 0, 1 done; shard 2 half filled
    store.write_rows(np.arange(40, 50), features[40:])   # shards 5, 6 done
    store.close()                                        # "crash": no finalize
    with FeatureStore.create(path, identity=make_identity(), example_ids=make_ids(), dim=D,
                             shard_rows=SHARD) as store:
        assert store.pending_shards() == [2, 3, 4]
        np.testing.assert_array_equal(store.missing_rows(), np.arange(16, 40))
        write_all(store, features)
        store.finalize()
    assert tree_bytes(path) == tree_bytes(clean)


KILL_SCRIPT = r"""
import importlib.util, sys, time
import numpy as np
spec = importlib.util.spec_from_file_location("influence.features.datastore", sys.argv[1])
datastore = importlib.util.module_from_spec(spec)
spec.loader.exec_module(datastore)
import json
args = json.loads(sys.argv[2])
features = np.load(args["features"])
store = datastore.FeatureStore.create(args["path"], identity=args["identity"], example_ids=args["ids"],
                                      dim=args["dim"], shard_rows=args["shard_rows"])
for row in store.missing_rows():
    if store.write_rows([row], features[[row]]):
        print("shard", flush=True)
    if row >= 3 * args["shard_rows"]:
        time.sleep(0.2)   # slow enough that the kill below always lands before the end
time.sleep(60)
"""


def test_kill_9_during_featurization_then_resume_equals_clean_run(tmp_path):
    features = make_features()
    clean = make_clean(tmp_path / "clean", features)
    np.save(tmp_path / "features.npy", features)
    path = tmp_path / "killed"
    args = {"features": str(tmp_path / "features.npy"), "path": str(path), "identity": make_identity(),
            "ids": make_ids(), "dim": D, "shard_rows": SHARD}
    module = ROOT / "influence" / "features" / "datastore.py"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(module), json.dumps(args)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):
            assert proc.stdout.readline().strip() == "shard"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert (path / "lock").exists()   # left behind by the dead writer, taken over below
    with FeatureStore.create(path, identity=make_identity(), example_ids=make_ids(), dim=D,
                             shard_rows=SHARD) as store:
        pending = store.pending_shards()
        assert 0 < len(pending) <= 4 and pending[-1] == 6
        write_all(store, features)
        store.finalize()
    assert tree_bytes(path) == tree_bytes(clean)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "sidecar"])
def test_damaged_shard_is_detected_and_recomputed(tmp_path, damage):
    features = make_features()
    path = make_clean(tmp_path / "store", features)
    clean = tree_bytes(path)
    shard = path / "shards" / "000003.npy"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(shard.read_bytes())
        data[-3] ^= 0x40
        shard.write_bytes(bytes(data))
    elif damage == "delete":
        shard.unlink()
    else:
        (path / "shards" / "000003.json").write_text("{not json")
    if damage != "sidecar":   # a reader checks the files against the manifest's checksums
        with pytest.raises(DatastoreError, match=r"shard\(s\) missing or failing their checksum \(shards 3\)"):
            FeatureStore.open(path).features()
    with FeatureStore.create(path, identity=make_identity(), example_ids=make_ids(), dim=D,
                             shard_rows=SHARD) as store:
        assert store.pending_shards() == [3]
        assert not FeatureStore.open(path).is_complete   # the manifest no longer claims completeness
        write_all(store, features)
        store.finalize()
    assert tree_bytes(path) == clean


def test_incomplete_store_cannot_be_read_or_finalized(tmp_path):
    features = make_features()
    with FeatureStore.create(tmp_path / "s", identity=make_identity(), example_ids=make_ids(), dim=D,
                             shard_rows=SHARD) as store:
        store.write_rows(np.arange(16), features[:16])
        with pytest.raises(DatastoreError, match=r"incomplete: 5 of 7 shards \(34 rows\).*rerun featurize"):
            store.finalize()
        with pytest.raises(DatastoreError, match="incomplete"):
            store.features()
    with pytest.raises(DatastoreError, match="incomplete"):
        FeatureStore.open(tmp_path / "s").features()
    with pytest.raises(DatastoreError, match="no datastore"):
        FeatureStore.open(tmp_path / "nothing")


def test_other_identity_names_the_field_both_values_and_the_fix(tmp_path):
    path = make_clean(tmp_path / "s", make_features())
    with pytest.raises(ManifestMismatchError) as err:
        FeatureStore.create(path, identity=make_identity(**{"projector.seed": 1}), example_ids=make_ids(), dim=D,
                            shard_rows=SHARD)
    message = str(err.value)
    assert "projector.seed = 0" in message and "projector.seed = 1" in message
    assert "--name" in message and "--overwrite" in message
    with pytest.raises(ManifestMismatchError, match="projector.backend"):
        FeatureStore.open(path, identity=make_identity(**{"projector.backend": "cuda"}))
    with pytest.raises(ManifestMismatchError, match="dim = 12, but this run has dim = 6"):
        FeatureStore.create(path, identity=make_identity(), example_ids=make_ids(), dim=6, shard_rows=SHARD)
    assert not (path / "lock").exists()   # a refused writer leaves no lock behind
    assert identity_difference({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}) == ("a.c", "<absent>", 2)
    assert identity_difference({"a": 1}, {"a": 1.0}) is not None


def test_overwrite_replaces_a_mismatched_store(tmp_path):
    path = make_clean(tmp_path / "s", make_features())
    other = make_features(seed=5)
    with FeatureStore.create(path, identity=make_identity(checkpoint="epoch-2"), example_ids=make_ids(), dim=D,
                             shard_rows=SHARD, overwrite=True) as store:
        assert store.pending_shards() == list(range(7))
        write_all(store, other)
        store.finalize()
    store = FeatureStore.open(path, identity=make_identity(checkpoint="epoch-2"))
    np.testing.assert_array_equal(store.features(), other.astype(np.float16))


def test_changed_pool_is_refused_clearly(tmp_path):
    path = make_clean(tmp_path / "s", make_features())
    changed = make_ids()
    changed[17] = "new-example"
    with pytest.raises(ManifestMismatchError, match=r"pool changed.*example 17 is 'ex0017' in the datastore but "
                                                    r"'new-example' in the pool"):
        FeatureStore.create(path, identity=make_identity(), example_ids=changed, dim=D, shard_rows=SHARD)
    with pytest.raises(ManifestMismatchError, match=r"pool changed.*50 examples there, 51 now"):
        FeatureStore.open(path, example_ids=make_ids() + ["extra"])


def test_second_writer_is_told_who_holds_the_lock(tmp_path):
    with FeatureStore.create(tmp_path / "s", identity=make_identity(), example_ids=make_ids(), dim=D):
        with pytest.raises(DatastoreError, match=rf"being written by pid {os.getpid()} on host "
                                                 rf"{socket.gethostname()}"):
            FeatureStore.create(tmp_path / "s", identity=make_identity(), example_ids=make_ids(), dim=D)
        FeatureStore.open(tmp_path / "s")   # readers are not blocked
    assert not (tmp_path / "s" / "lock").exists()
    FeatureStore.create(tmp_path / "s", identity=make_identity(), example_ids=make_ids(), dim=D).close()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "s"
    path.mkdir()
    (path / "lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": time.time()}))
    with FeatureStore.create(path, identity=make_identity(), example_ids=make_ids(), dim=D) as store:
        assert json.loads((path / "lock").read_text())["pid"] == os.getpid()
        assert store.pending_shards() == [0]


def test_ranks_writing_disjoint_shards_match_a_single_writer(tmp_path):
    features = make_features()
    clean = make_clean(tmp_path / "clean", features)
    path = tmp_path / "ranks"
    kwargs = dict(identity=make_identity(), example_ids=make_ids(), dim=D, shard_rows=SHARD, group="job-42")
    rank0 = FeatureStore.create(path, **kwargs)
    rank1 = FeatureStore.create(path, **kwargs)          # joins the lock of its group
    with pytest.raises(DatastoreError, match="group 'job-42'"):
        FeatureStore.create(path, **{**kwargs, "group": "another-job"})
    assert rank0.pending_shards(0, 2) == [0, 2, 4, 6] and rank1.pending_shards(1, 2) == [1, 3, 5]
    write_all(rank1, features, order=rank1.missing_rows(1, 2))
    write_all(rank0, features, order=rank0.missing_rows(0, 2))
    rank1.close()
    assert (path / "lock").exists()                      # only the creator removes it
    rank0.finalize()                                     # sees rank 1's shards through their sidecars
    rank0.close()
    assert tree_bytes(path) == tree_bytes(clean)


@pytest.mark.parametrize("content", ["", "{", "[]", '{"kind": "influence.feature-store", "format": 1}',
                                     '{"kind": "something-else"}', '"\\ud800"'])
def test_unreadable_manifest_is_a_clear_error(tmp_path, content):
    path = make_clean(tmp_path / "s", make_features())
    (path / "manifest.json").write_text(content)
    with pytest.raises(DatastoreError, match=f"{path / 'manifest.json'}.*delete"):
        FeatureStore.open(path)
    with pytest.raises(DatastoreError, match="--overwrite"):
        FeatureStore.create(path, identity=make_identity(), example_ids=make_ids(), dim=D, shard_rows=SHARD)


def test_bad_writes_are_refused(tmp_path):
    with FeatureStore.create(tmp_path / "s", identity=make_identity(), example_ids=make_ids(), dim=D,
                             shard_rows=SHARD) as store:
        bad = make_features(n=2)
        bad[1, 3] = np.nan
        with pytest.raises(DatastoreError, match="NaN"):
            store.write_rows([0, 1], bad)
        with pytest.raises(DatastoreError, match=r"shape \(2, 12\)"):
            store.write_rows([0, 1], make_features(n=2, d=5))
        with pytest.raises(DatastoreError, match="out of range"):
            store.write_rows([0, N], make_features(n=2))
        with pytest.raises(DatastoreError, match="shard 1 holds rows \\[8, 16\\)"):
            store.write_shard(1, make_features(n=3))
    with pytest.raises(DatastoreError, match="opened for reading"):
        FeatureStore.open(tmp_path / "s").write_rows([0], make_features(n=1))
    with pytest.raises(DatastoreError, match="identity"):
        FeatureStore.create(tmp_path / "t", identity={}, example_ids=make_ids(), dim=D)
    with pytest.raises(DatastoreError, match="plain JSON"):
        FeatureStore.create(tmp_path / "t", identity={"x": object()}, example_ids=make_ids(), dim=D)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=4), max_leaves=20)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode()),
                      st.just(b"[" * 5000), st.just(b'{"kind": "influence.feature-store", "format": 1, "dim": "x"}')),
       field=st.sampled_from(["dim", "shard_rows", "num_rows", "example_ids", "identity", "complete", "shards"]),
       value=json_values)
def test_damaged_files_fail_with_one_clear_error(tmp_path_factory, data, field, value):
    path = make_clean(tmp_path_factory.mktemp("fuzz") / "s", make_features(n=20))
    (path / "shards" / "000001.json").write_bytes(data)   # a damaged sidecar: that shard is recomputed
    (path / "lock").write_bytes(data)                     # a damaged record of no live holder: overwritten
    with FeatureStore.create(path, identity=make_identity(), example_ids=make_ids(20), dim=D,
                             shard_rows=SHARD) as store:
        assert store.pending_shards() == [1]
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_bytes(data)
    with pytest.raises(DatastoreError, match="manifest.json"):
        FeatureStore.open(path)
    (path / "manifest.json").write_text(json.dumps({**manifest, field: value}))
    try:
        FeatureStore.open(path).features()
    except DatastoreError as err:
        assert "\n" not in str(err)
