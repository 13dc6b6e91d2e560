"""Every accepted file format loads the same examples; every bad file fails in one clear line."""

from __future__ import annotations

import csv
import gzip
import json

import pytest

from influence.data.readers import read_file
from influence.errors import DataError
from tests.conftest import write_jsonl


def _outputs(report):
    return [e.output for e in report.examples]


def test_jsonl_json_csv_parquet_and_gzip_give_the_same_examples(tmp_path, alpaca_records):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = write_jsonl(tmp_path / "p.jsonl", alpaca_records)
    as_list = tmp_path / "p.json"
    as_list.write_text(json.dumps(alpaca_records))
    as_object = tmp_path / "o.json"
    as_object.write_text(json.dumps({"examples": alpaca_records}))
    as_csv = tmp_path / "p.csv"
    with as_csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(alpaca_records)
    as_parquet = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(alpaca_records), as_parquet)
    as_gzip = tmp_path / "p.jsonl.gz"
    as_gzip.write_bytes(gzip.compress(jsonl.read_bytes()))

    reference = read_file(jsonl)
    assert len(reference.examples) == 3 and reference.skipped_empty == 1 and reference.read == 4
    for path in (as_list, as_object, as_csv, as_parquet, as_gzip):
        report = read_file(path)
        assert [e.id for e in report.examples] == [e.id for e in reference.examples], path.name
        assert report.skipped_empty == 1


def test_chat_messages_keep_the_conversation_and_its_last_turn_is_the_response(tmp_path):
    records = [{"messages": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Capital of France?"},
                             {"role": "assistant", "content": "Paris."}], "subtask": "geo"}]
    example = read_file(write_jsonl(tmp_path / "chat.jsonl", records)).examples[0]
    assert example.response == "Paris."
    assert example.chat()[0] == {"role": "system", "content": "Be brief."}
    assert example.subtask == "geo"
    assert "Capital of France?" in example.instruction


def test_prompt_response_fields_are_accepted(tmp_path):
    report = read_file(write_jsonl(tmp_path / "pr.jsonl", [{"prompt": "Hi?", "response": "Hello."}]))
    assert report.examples[0].prompt == "Hi?" and report.examples[0].response == "Hello."


def test_malformed_json_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n')
    with pytest.raises(DataError, match=r"line 2: malformed JSON"):
        read_file(path)
    whole = tmp_path / "bad.json"
    whole.write_text('[\n{"instruction": "a",\n "output": }\n]')
    with pytest.raises(DataError, match=r"line 3: malformed JSON"):
        read_file(whole)


def test_missing_fields_are_named(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"missing fields.*found: answer, question"):
        read_file(path)


def test_wrong_field_types_are_named(tmp_path):
    with pytest.raises(DataError, match=r"'output' must be text"):
        read_file(write_jsonl(tmp_path / "t.jsonl", [{"instruction": "a", "output": ["b"]}]))
    with pytest.raises(DataError, match=r"last message must be the assistant"):
        read_file(write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}]))


def test_non_utf8_bytes_are_reported_with_their_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n')
    with pytest.raises(DataError, match=r"line 2: not valid UTF-8"):
        read_file(path)


@pytest.mark.parametrize("name, message", [("nothing.jsonl", "no such file"), ("notes.txt", "unsupported file type")])
def test_unreadable_files_fail_clearly(tmp_path, name, message):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=message):
        read_file(tmp_path / name)


def test_a_corrupt_parquet_file_fails_clearly(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable parquet file"):
        read_file(path)
