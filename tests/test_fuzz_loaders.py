"""Fuzzed loaders: any input either loads or fails with a one-line DataError; never another error, never a hang.

Each property writes what hypothesis draws (arbitrary bytes, deep JSON, huge lines, odd
Unicode, wrong types in every field) into a file of each accepted format and reads it with
`read_file`, or hands a raw record to `record_to_example`. The deadline bounds each example.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from influence.data.readers import read_file, record_to_example
from influence.errors import DataError

# derandomize: the same examples on every run (no flakes in CI; the explicit @examples pin what was found)
FUZZ = settings(max_examples=150, deadline=timedelta(seconds=3), derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
FEW = settings(FUZZ, max_examples=25)
FIELDS = ("instruction", "input", "output", "prompt", "response", "messages", "subtask")
SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".json.gz", ".jsonl.gz", ".csv.gz")
MESSAGE_LIMIT = 1000  # characters: quoted data and library messages are clipped


def loads_or_fails_in_one_line(read, *args, **kwargs):
    """Call `read`; a DataError must carry a non-empty, bounded, one-line message. Returns the result or None."""
    try:
        return read(*args, **kwargs)
    except DataError as exc:
        message = str(exc)
        assert message.strip(), "empty error message"
        assert "\n" not in message and "\r" not in message, message
        assert len(message) < MESSAGE_LIMIT, message[:300]
        return None


# Text that people's files hold: every code point, with the awkward ones made likely.
ODD = ["\x00", "\r", "\n", "\r\n", "\x1c", "\x1e", "\x85", "\u2028", "\u2029", "\u202e", "\u200f", "\u200d",
       "\u0301", "\u0308\u0308\u0308", "\ufeff", "\ufffd", "\uffff", "\U0001f600", "\U0001f1eb\U0001f1f7", "\t",
       '"', "\\", ",", "'", "{", "]", "שלום", "مرحبا"]
valid_text = st.lists(st.one_of(st.sampled_from(ODD), st.text(max_size=8)), max_size=12).map("".join)
any_text = st.one_of(valid_text, st.text(st.characters(codec=None), max_size=20))  # also lone surrogates

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-10**80, max_value=10**80),
                         st.floats(allow_nan=True, allow_infinity=True), any_text)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(FIELDS + ("role", "content")), any_text),
                                                 inner, max_size=4)), max_leaves=20)
python_values = st.one_of(json_values, st.binary(max_size=8), st.tuples(json_scalars), st.sets(st.integers()),
                          st.complex_numbers(), st.just(object()), st.just(math.nan))
message = st.fixed_dictionaries({}, optional={"role": st.one_of(st.sampled_from(["system", "user", "assistant"]),
                                                                 python_values),
                                              "content": st.one_of(any_text, python_values)})
records = st.one_of(
    python_values,
    st.fixed_dictionaries({}, optional={f: st.one_of(any_text, python_values) for f in FIELDS}),
    st.fixed_dictionaries({"messages": st.one_of(st.lists(st.one_of(message, python_values), max_size=4),
                                                 python_values)},
                          optional={"subtask": python_values}),
)


def _dumps(value, ascii_only: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)  # ASCII: lone surrogates become valid "\\udXXX" escapes


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # lone surrogates become invalid UTF-8, as real files hold


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


def _csv_bytes(rows: list[dict], fields: list[str]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return _encode(out.getvalue())


# ------------------------------------------------------------------------------------ properties
@FUZZ
@given(data=st.binary(max_size=600), suffix=st.sampled_from(SUFFIXES + (".jsonl.gz",)), raw_gz=st.booleans())
@example(data=b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage", suffix=".jsonl.gz", raw_gz=True)
@example(data=b"PAR1\x00\x00PAR1", suffix=".parquet", raw_gz=True)
@example(data=b'{"instruction": "a", "output": 1' + b"9" * 5000 + b"}", suffix=".jsonl", raw_gz=False)
def test_arbitrary_bytes_load_or_fail_in_one_line(tmp_path, data, suffix, raw_gz):
    path = tmp_path / f"pool{suffix}"
    path.write_bytes(data if raw_gz or not suffix.endswith(".gz") else gzip.compress(data, mtime=0))
    loads_or_fails_in_one_line(read_file, path)


@FUZZ
@given(values=st.lists(json_values, max_size=6), suffix=st.sampled_from([".json", ".jsonl", ".json.gz"]),
       wrap=st.sampled_from([None, "examples", "data", "other"]), ascii_only=st.booleans())
@example(values=[{"\r": None}], suffix=".json", wrap=None, ascii_only=False)
@example(values=[{"instruction": "a", "output": "\ud800"}], suffix=".jsonl", wrap=None, ascii_only=True)
@example(values=[{"instruction": "a", "output": "b\u2028c"}], suffix=".jsonl", wrap=None, ascii_only=False)
def test_any_json_values_load_or_fail_in_one_line(tmp_path, values, suffix, wrap, ascii_only):
    if suffix.startswith(".jsonl"):
        text = "".join(_dumps(v, ascii_only) + "\n" for v in values)
    else:
        text = _dumps(values if wrap is None else {wrap: values}, ascii_only)
    loads_or_fails_in_one_line(read_file, _write(tmp_path / f"pool{suffix}", _encode(text)))


@FUZZ
@given(rows=st.lists(records, max_size=5), suffix=st.sampled_from([".json", ".jsonl"]), ascii_only=st.booleans())
@example(rows=[{"instruction": "a", "output": "\udfff", "subtask": [[[]]]}], suffix=".jsonl", ascii_only=True)
@example(rows=[{"prompt": 10 ** 5000, "response": "b"}], suffix=".json", ascii_only=True)
@example(rows=[{"messages": [{"role": "user\n" * 500, "content": "x"}]}], suffix=".json", ascii_only=False)
def test_wrong_types_in_every_field_load_or_fail_in_one_line(tmp_path, rows, suffix, ascii_only):
    for index, record in enumerate(rows):
        loads_or_fails_in_one_line(record_to_example, record, source="fuzz", where=f"record {index}")
    try:
        serialisable = [json.loads(json.dumps(r, default=str)) for r in rows]
    except (TypeError, ValueError):
        return
    text = ("".join(_dumps(r, ascii_only) + "\n" for r in serialisable) if suffix == ".jsonl"
            else _dumps(serialisable, ascii_only))
    loads_or_fails_in_one_line(read_file, _write(tmp_path / f"pool{suffix}", _encode(text)))


@FEW
@given(depth=st.integers(min_value=1, max_value=200_000), opener=st.sampled_from(["[", '{"a":', '{"output":']),
       suffix=st.sampled_from([".json", ".jsonl"]), as_field=st.booleans())
@example(depth=100_000, opener="[", suffix=".json", as_field=False)
@example(depth=990, opener="[", suffix=".jsonl", as_field=True)
def test_deeply_nested_json_loads_or_fails_in_one_line(tmp_path, depth, opener, suffix, as_field):
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + "1" + closer * depth
    text = '{"instruction": "a", "output": "b", "subtask": ' + nested + "}" if as_field else nested
    loads_or_fails_in_one_line(read_file, _write(tmp_path / f"deep{suffix}", text.encode()))
    if as_field:
        try:
            record = json.loads(text)
        except RecursionError:
            return
        loads_or_fails_in_one_line(record_to_example, record, source="fuzz", where="deep")


@FEW
@given(size=st.integers(min_value=100_000, max_value=4_000_000), char=st.sampled_from(["x", "é", "\u2028", "😀", " "]),
       suffix=st.sampled_from([".json", ".jsonl", ".csv", ".parquet", ".jsonl.gz"]), field=st.sampled_from(FIELDS[:3]))
def test_huge_lines_load_or_fail_in_one_line(tmp_path, size, char, suffix, field):
    record = {"instruction": "Say it.", "input": "", "output": "ok", field: char * size}
    report = loads_or_fails_in_one_line(read_file, _write_records(tmp_path / f"huge{suffix}", [record]))
    if report is not None and char.strip():
        assert getattr(report.examples[0], field) == char * size


@FUZZ
@given(rows=st.lists(st.fixed_dictionaries({"instruction": valid_text, "input": valid_text, "output": valid_text,
                                            "subtask": st.one_of(st.none(), valid_text)}), min_size=1, max_size=5),
       suffix=st.sampled_from([".json", ".jsonl", ".csv", ".parquet", ".jsonl.gz"]))
def test_any_valid_text_round_trips_through_every_format(tmp_path, rows, suffix):
    report = read_file(_write_records(tmp_path / f"pool{suffix}", rows))
    kept = [r for r in rows if r["output"].strip()]
    assert report.read == len(rows) and report.skipped_empty == len(rows) - len(kept)
    assert [(e.instruction, e.input, e.output, e.subtask) for e in report.examples] == \
        [(r["instruction"], r["input"], r["output"], r["subtask"] or None) for r in kept]


@FUZZ
@given(rows=st.lists(st.fixed_dictionaries({"messages": st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": any_text}),
    max_size=4)}), min_size=1, max_size=3), suffix=st.sampled_from([".jsonl", ".json", ".parquet"]))
def test_chats_with_odd_text_load_or_fail_in_one_line(tmp_path, rows, suffix):
    if suffix == ".parquet" and any(not _is_valid_unicode(m["content"]) for r in rows for m in r["messages"]):
        suffix = ".jsonl"  # arrow strings are UTF-8: a lone surrogate cannot be written
    report = loads_or_fails_in_one_line(read_file, _write_records(tmp_path / f"chat{suffix}", rows))
    if report is not None:
        for example_, row in zip(report.examples, [r for r in rows if r["messages"][-1]["content"].strip()]):
            assert example_.response == row["messages"][-1]["content"]


@FUZZ
@given(header=st.lists(st.one_of(st.sampled_from(FIELDS), valid_text), max_size=5),
       cells=st.lists(st.lists(valid_text, max_size=7), max_size=4), delimiter=st.sampled_from([",", ";", "\t"]))
def test_ragged_and_odd_csv_loads_or_fails_in_one_line(tmp_path, header, cells, delimiter):
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=delimiter)
    writer.writerow(header)
    writer.writerows(cells)
    loads_or_fails_in_one_line(read_file, _write(tmp_path / "pool.csv", _encode(out.getvalue())))


# ------------------------------------------------------------------------------------ helpers
def _is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _write_records(path: Path, rows: list[dict]) -> Path:
    name = path.name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        return _write(path, _encode("".join(_dumps(r) + "\n" for r in rows)))
    if name.endswith(".json"):
        return _write(path, _encode(_dumps(rows)))
    if name.endswith(".csv"):
        fields = sorted({key for r in rows for key in r})
        return _write(path, _csv_bytes(rows, fields))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_the_fuzz_check_lets_other_errors_and_multi_line_messages_through():
    def raises(exc):
        raise exc

    with pytest.raises(ValueError):
        loads_or_fails_in_one_line(raises, ValueError("boom"))
    with pytest.raises(AssertionError):
        loads_or_fails_in_one_line(raises, DataError("two\nlines"))
