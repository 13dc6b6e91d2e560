"""Streaming pools: the same examples, ids, skips and duplicates as load_pool, read lazily in bounded memory."""

from __future__ import annotations

import csv
import gzip
import json
import tracemalloc
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from influence.data.pools import PoolStream, StreamedExamples, load_pool, stream_pool
from influence.errors import ConfigError, DataError, SelectionError, UnknownNameError
from tests.conftest import write_jsonl


def assert_same_pool(stream: PoolStream, specs, chunk_size=None):
    pool = load_pool(specs)
    if chunk_size is None:
        examples = list(stream)
    else:
        chunks = list(stream.chunks())
        assert all(1 <= len(c) <= chunk_size for c in chunks) and all(len(c) == chunk_size for c in chunks[:-1])
        examples = [e for c in chunks for e in c]
    assert examples == pool.examples  # same content, order, source and subtask
    assert [e.id for e in examples] == [e.id for e in pool.examples]
    assert stream.sources == pool.sources and stream.duplicates == pool.duplicates
    assert stream.count == len(pool) and stream.fingerprint == pool.fingerprint
    assert stream.describe() == pool.describe()


@pytest.fixture
def mixed_specs(tmp_path, alpaca_records):
    """Five formats, with empty responses and duplicates within and across files."""
    a = write_jsonl(tmp_path / "a.jsonl", alpaca_records + alpaca_records[:1])
    b = tmp_path / "b.csv"
    with b.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["instruction", "input", "output", "subtask"])
        writer.writeheader()
        writer.writerows([{**alpaca_records[1], "subtask": "math"}, {"instruction": "CSV", "input": "",
                                                                      "output": "only here", "subtask": ""}])
    c = tmp_path / "c.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": f"p{i}", "response": f"r{i % 5}"} for i in range(2500)]), c)
    d = tmp_path / "d.jsonl.gz"
    d.write_bytes(gzip.compress(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                          {"role": "assistant", "content": "Hello."}]}).encode()))
    e = tmp_path / "e.json"
    e.write_text(json.dumps({"data": alpaca_records[2:]}))
    return [str(p) for p in (a, b, c, d, e)]


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 1024])
def test_stream_equals_load_pool_across_formats_and_chunk_sizes(mixed_specs, chunk_size):
    stream = stream_pool(mixed_specs, chunk_size=chunk_size or 1024)
    assert_same_pool(stream, mixed_specs, chunk_size)
    assert stream.duplicates > 0 and any(s.skipped_empty for s in stream.sources)
    assert_same_pool(stream, mixed_specs, chunk_size)  # a second pass reads again, counts afresh


@settings(max_examples=40, deadline=timedelta(seconds=5), derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["", " ", "x", "y", "z"]),
                                         st.sampled_from([None, "s1", "s2"])), max_size=12),
                      min_size=1, max_size=3),
       chunk_size=st.integers(min_value=1, max_value=5))
def test_stream_equals_load_pool_on_any_mix_of_duplicates_and_empties(tmp_path, files, chunk_size):
    specs = []
    for i, rows in enumerate(files):
        records = [{"instruction": q, "output": a, **({"subtask": s} if s else {})} for q, a, s in rows]
        specs.append(str(write_jsonl(tmp_path / f"f{i}.jsonl", records)))
    try:
        expected = load_pool(specs)
    except SelectionError:
        with pytest.raises(SelectionError, match="no usable examples"):
            list(stream_pool(specs, chunk_size=chunk_size).chunks())
        return
    stream = stream_pool(specs, chunk_size=chunk_size)
    assert [e for c in stream.chunks() for e in c] == expected.examples
    assert stream.sources == expected.sources and stream.fingerprint == expected.fingerprint


def test_a_registered_pool_streams_as_it_loads():
    assert_same_pool(stream_pool("alpaca", chunk_size=500), "alpaca", 500)


def test_jsonl_is_read_line_by_line_not_whole(tmp_path, alpaca_records, monkeypatch):
    path = write_jsonl(tmp_path / "p.jsonl", alpaca_records[:3])
    with path.open("a") as handle:
        handle.write('{"instruction": "broken", "output": \n')

    def whole_read(*args, **kwargs):
        raise AssertionError("the JSONL file was read whole")

    monkeypatch.setattr(Path, "read_bytes", whole_read)
    monkeypatch.setattr(Path, "read_text", whole_read)
    examples = iter(stream_pool(str(path)))
    assert next(examples).output == alpaca_records[0]["output"]  # before the bad line is reached
    with pytest.raises(DataError, match=r"p.jsonl: line 4: malformed JSON"):
        list(examples)


def _big_pool_file(tmp_path: Path, count: int) -> Path:
    """`count` examples with 3 kB responses."""
    path = tmp_path / "big.jsonl"
    with path.open("w") as handle:
        for i in range(count):
            handle.write(json.dumps({"instruction": f"Question {i}?", "output": f"{i} " + "y" * 3000}) + "\n")
    return path


def test_streaming_memory_is_bounded_by_the_chunk_not_the_pool(tmp_path):
    # 8,000 examples of 3 kB: a 24 MB file; a chunk of 256 holds about 1 MB
    path = _big_pool_file(tmp_path, 8_000)
    size = path.stat().st_size
    stream = stream_pool(str(path), chunk_size=256)
    tracemalloc.start()
    try:
        count = sum(len(chunk) for chunk in stream.chunks())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 8_000 == stream.count
    assert peak < size / 4, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"


def test_hf_specs_stream_through_datasets(tmp_path, alpaca_records, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    (tmp_path / "ds").mkdir()
    write_jsonl(tmp_path / "ds" / "train.jsonl", alpaca_records * 2)
    spec = f"hf:{tmp_path / 'ds'}:train"
    calls = []
    real = datasets.load_dataset

    def recording(*args, **kwargs):
        calls.append(kwargs.get("streaming", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", recording)
    stream = stream_pool(spec, chunk_size=2)
    assert_same_pool(stream, spec, 2)
    assert calls == [False, True]  # load_pool (first, in assert_same_pool) did not stream; the stream did
    assert stream.duplicates == len(alpaca_records) - 1 and stream.sources[0].origin == f"datasets {spec[3:]}"


def test_an_hf_stream_that_fails_part_way_is_a_data_error(monkeypatch):
    import datasets

    def flaky(*args, **kwargs):
        yield {"instruction": "a", "output": "b"}
        raise ConnectionError("shard 3 of 9\nreset by peer")

    monkeypatch.setattr(datasets, "load_dataset", flaky)
    examples = iter(stream_pool("hf:org/huge"))
    assert next(examples).output == "b"
    with pytest.raises(DataError, match=r"^hf:org/huge: could not load dataset \(shard 3 of 9\)$"):
        next(examples)


def test_stream_errors_are_clear_and_early(tmp_path, pool_file):
    with pytest.raises(UnknownNameError, match="unknown pool 'nope'"):
        stream_pool([str(pool_file), "nope"])  # at once, before reading pool_file
    with pytest.raises(SelectionError, match="no pool given"):
        stream_pool([])
    with pytest.raises(ConfigError, match="chunk_size must be a positive integer"):
        stream_pool(str(pool_file), chunk_size=0)
    stream = stream_pool(str(pool_file))
    with pytest.raises(RuntimeError, match="after a complete pass"):
        stream.fingerprint
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SelectionError, match="no usable examples"):
        list(stream_pool(str(empty)))


# ------------------------------------------------------------------ a pool that keeps ids, not examples
def test_a_streamed_pool_reads_the_same_examples_as_a_loaded_one(mixed_specs):
    loaded = load_pool(mixed_specs)
    streamed = load_pool(mixed_specs, stream=True)
    assert isinstance(streamed.examples, StreamedExamples)
    assert len(streamed) == len(loaded) and streamed.ids == loaded.ids
    assert streamed.fingerprint == loaded.fingerprint
    assert streamed.sources == loaded.sources and streamed.duplicates == loaded.duplicates
    assert list(streamed.examples) == loaded.examples
    n = len(loaded)
    order = [0, 1, n - 1, 2, 5, -1, n // 2, 3]  # forward, backward and negative steps
    assert [streamed.examples[i] for i in order] == [loaded.examples[i] for i in order]
    assert streamed.examples[3:9] == loaded.examples[3:9]
    picks = [n - 2, 4, 4, 0, n // 3]
    assert streamed.take(picks) == loaded.take(picks) == [loaded.examples[i] for i in picks]
    with pytest.raises(IndexError):
        streamed.examples[n]


def test_ascending_access_reads_a_streamed_pool_once(tmp_path, alpaca_records):
    path = write_jsonl(tmp_path / "p.jsonl", [{**r, "output": f"{r['output']} {i}"}
                                               for i in range(40) for r in alpaca_records[:1]])
    examples = StreamedExamples(str(path), chunk_size=7)
    assert examples.passes == 1  # the one that read the ids
    for i in range(len(examples)):
        assert examples[i].id == examples.ids[i]
    examples.take([39, 0, 20])
    assert examples.passes == 3  # the ascending sweep, then one more for take's sweep (it starts at 0 again)


def test_a_pool_file_changed_between_passes_is_an_error_not_a_mix(tmp_path, alpaca_records):
    path = write_jsonl(tmp_path / "p.jsonl", alpaca_records)
    pool = load_pool(str(path), stream=True)
    write_jsonl(path, [alpaca_records[1], alpaca_records[0], *alpaca_records[2:]])
    with pytest.raises(DataError, match="changed while it was being read"):
        list(pool.examples)
    write_jsonl(path, alpaca_records[:2])  # the haiku is gone: the pool is shorter now
    with pytest.raises(DataError, match="changed while it was being read"):
        list(pool.examples)


def test_a_streamed_pool_holds_its_ids_and_one_chunk_not_its_text(tmp_path):
    # 4,000 examples of 3 kB: a 12 MB file; the ids take about 0.3 MB, a chunk of 64 about 0.2 MB
    path = _big_pool_file(tmp_path, 4_000)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        examples = StreamedExamples(str(path), chunk_size=64)
        lengths = [len(examples[i].output) for i in range(0, len(examples), 3)]
        chosen = examples.take([3_999, 17, 2_000])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(lengths) == 1_334 and [e.instruction for e in chosen] == ["Question 3999?", "Question 17?",
                                                                          "Question 2000?"]
    assert peak < size / 8, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"
