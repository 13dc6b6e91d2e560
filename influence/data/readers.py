"""Read examples from the file formats people already have.

Local files: `.json` (a list of records, or an object holding one list), `.jsonl`,
`.parquet`, `.csv`, each optionally gzip-compressed (`.gz`). Records carry either
`instruction`/`input`/`output` fields, `prompt`/`response` fields, or a chat `messages`
list whose last turn is the assistant's response; an optional `subtask` field is kept.
`hf:<dataset>[:<split>]` reads any datasets id.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from influence.data.example import ROLES, Example
from influence.errors import DataError

FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
LIST_KEYS = ("examples", "data", "instances", "rows", "train")


@dataclass
class ReadReport:
    """What happened while turning records into examples."""

    read: int = 0
    skipped_empty: int = 0
    examples: list[Example] = field(default_factory=list)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return os.path.splitext(name)[1]


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a data file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if path.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: not a valid gzip file ({exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 (byte offset {exc.start}); "
                        "re-encode the file as UTF-8") from None


def _records_json(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line {exc.lineno}: malformed JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply") from None
    if isinstance(data, dict):
        lists = [k for k in LIST_KEYS if isinstance(data.get(k), list)]
        if not lists:
            raise DataError(f"{path}: expected a JSON list of records, or an object with one of "
                            f"{', '.join(LIST_KEYS)} holding that list")
        data = data[lists[0]]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for index, record in enumerate(data):
        yield index + 1, record


def _records_jsonl(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {lineno}: malformed JSON ({exc.msg})") from None
        except RecursionError:
            raise DataError(f"{path}: line {lineno}: JSON nested too deeply") from None


def _records_csv(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            yield reader.line_num, row
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None


def _records_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
    for index, record in enumerate(table.to_pylist()):
        yield index + 1, record


def iter_file_records(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield (line or row number, raw record) from a local data file."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in FILE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; "
                        f"use one of {', '.join(FILE_SUFFIXES)}")
    if suffix == ".parquet":
        if not path.exists():
            raise DataError(f"{path}: no such file")
        yield from _records_parquet(path)
        return
    text = _read_text(path)
    reader = {".json": _records_json, ".jsonl": _records_jsonl, ".csv": _records_csv}[suffix]
    yield from reader(path, text)


def _text_field(record: dict, key: str, where: str) -> str:
    value = record.get(key)
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be text, got {type(value).__name__}")
    return value


def _messages(record: dict, where: str) -> list[dict[str, str]]:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    out = []
    for turn, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise DataError(f"{where}: message {turn} must be an object with text 'role' and 'content'")
        if message["role"] not in ROLES:
            raise DataError(f"{where}: message {turn} has role {message['role']!r}; "
                            f"use one of {', '.join(ROLES)}")
        out.append({"role": message["role"], "content": message["content"]})
    if out[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's response")
    if len(out) < 2:
        raise DataError(f"{where}: 'messages' needs at least a user turn and an assistant response")
    return out


def record_to_example(record: Any, *, source: str, where: str) -> Example:
    """Turn one raw record into an `Example`, or raise `DataError` naming what is missing."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with fields, got {type(record).__name__}")
    subtask = record.get("subtask")
    if subtask is not None and not isinstance(subtask, str):
        subtask = str(subtask)
    if "messages" in record and record["messages"] is not None:
        return Example.from_messages(_messages(record, where), subtask=subtask or None, source=source)
    if "instruction" in record and "output" in record:
        return Example(instruction=_text_field(record, "instruction", where),
                       input=_text_field(record, "input", where),
                       output=_text_field(record, "output", where), subtask=subtask or None, source=source)
    if "prompt" in record and "response" in record:
        return Example(instruction=_text_field(record, "prompt", where), input="",
                       output=_text_field(record, "response", where), subtask=subtask or None, source=source)
    keys = ", ".join(sorted(map(str, record))) or "none"
    raise DataError(f"{where}: missing fields: need 'instruction' and 'output' (optional 'input'), "
                    f"'prompt' and 'response', or 'messages'; found: {keys}")


def examples_from_records(records: Iterable[tuple[int, Any]], *, source: str, origin: str) -> ReadReport:
    """Convert numbered records, skipping (and counting) those with an empty response."""
    report = ReadReport()
    for number, record in records:
        example = record_to_example(record, source=source, where=f"{origin}: record at line/row {number}")
        report.read += 1
        if not example.output.strip():
            report.skipped_empty += 1
            continue
        report.examples.append(example)
    return report


def read_file(path: str | os.PathLike, *, source: str | None = None) -> ReadReport:
    """Read a local data file into examples."""
    path = Path(path)
    return examples_from_records(iter_file_records(path), source=source or path.name, origin=str(path))


def read_hf(spec: str, *, source: str | None = None) -> ReadReport:
    """Read `hf:<dataset>[:<split>]` through the datasets library (default split: train)."""
    body = spec[3:] if spec.startswith("hf:") else spec
    name, _, split = body.partition(":")
    if not name:
        raise DataError(f"{spec}: give a dataset id, as in hf:tatsu-lab/alpaca[:train]")
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # datasets raises many types; all mean "could not load"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{spec}: could not load dataset ({first})") from None
    return examples_from_records(((i + 1, r) for i, r in enumerate(dataset)),
                                 source=source or name, origin=spec)
