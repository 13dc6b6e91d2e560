"""Read examples from the file formats people already have.

Local files: `.json` (a list of records, or an object holding one list), `.jsonl`,
`.parquet`, `.csv`, each optionally gzip-compressed (`.gz`). Records carry either
`instruction`/`input`/`output` fields, `prompt`/`response` (or `completion`) fields, a chat
`messages` list whose last turn is the assistant's response, or TRL's conversational
`prompt`/`completion` message lists; an optional `subtask` field is kept.
`hf:<dataset>[:<split>]` reads any datasets id.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import os
import re
import stat
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from influence.data.example import ROLES, Example
from influence.errors import DataError

FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
LIST_KEYS = ("examples", "data", "instances", "rows", "train")
PARQUET_BATCH_ROWS = 1024  # rows decoded at a time when a parquet file is read
PROGRESS_MIN_BYTES = 8 << 20  # files at least this large show a progress bar of bytes read
PROGRESS_EVERY_LINES = 1024   # lines between progress-bar updates
_LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")
_CR_LINE_END = re.compile(r"(?<=\r)(?!\n)")  # a bare CR ends a CSV line too (old Mac files)


@dataclass
class ReadReport:
    """What happened while turning records into examples."""

    read: int = 0
    skipped_empty: int = 0
    examples: list[Example] = field(default_factory=list)


def one_line(text: Any, limit: int = 300) -> str:
    """`text` as one line of at most `limit` characters, for error messages that quote user data or libraries."""
    text = _LINE_BREAKS.sub(" ", str(text)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """`1 example`, `2 examples`, `1,000 examples`: a number with its noun in the right form."""
    return f"{number:,} {noun if number == 1 else plural or noun + 's'}"


def _error(message: str) -> DataError:
    return DataError(_LINE_BREAKS.sub(" ", message))


def _suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return os.path.splitext(name)[1]


def _is_gzip(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _is_dir(path: Path) -> bool:
    """Whether `path` is a directory; a path that cannot even be looked at is a DataError."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise _open_error(path, exc) from None


def path_exists(path: str | os.PathLike) -> bool:
    """`Path.exists`, except that a path inside a directory the user cannot enter is a one-line DataError."""
    try:
        os.stat(path)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except ValueError:  # an embedded NUL byte
        return False
    except OSError as exc:
        raise _open_error(Path(path), exc) from None


def _open_error(path: Path, exc: OSError) -> DataError:
    if isinstance(exc, FileNotFoundError):
        return _error(f"{path}: no such file")
    if isinstance(exc, IsADirectoryError):
        return _error(f"{path}: is a directory, not a data file")
    if isinstance(exc, PermissionError):
        return _error(f"{path}: permission denied (the file, or a directory on its path, cannot be read by this "
                      "user)")
    return _error(f"{path}: cannot read ({one_line(exc.strerror or exc)})")


def _gzip_error(path: Path, exc: Exception) -> DataError:
    return _error(f"{path}: not a valid gzip file ({one_line(exc) or type(exc).__name__})")


def _read_text(path: Path) -> str:
    """The whole file as text (for .json, which is one document)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _open_error(path, exc) from None
    if _is_gzip(path):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise _gzip_error(path, exc) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise _error(f"{path}: line {line}: not valid UTF-8 (byte offset {exc.start}); "
                     "re-encode the file as UTF-8") from None


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text line with its ending) read one line at a time, so memory is bounded by the longest line.

    Lines end at b"\n" only, as JSONL defines them: U+2028 and friends may sit inside JSON strings.
    """
    try:
        raw_file = open(path, "rb")
    except OSError as exc:
        raise _open_error(path, exc) from None
    handle = gzip.GzipFile(fileobj=raw_file, mode="rb") if _is_gzip(path) else raw_file
    with raw_file, handle, _progress(path, raw_file) as advance:
        offset, lineno = 0, 0
        lines = iter(handle)
        while True:
            try:
                raw = next(lines)
                if lineno % PROGRESS_EVERY_LINES == 0:
                    advance()
            except StopIteration:
                return
            except (OSError, EOFError, zlib.error) as exc:  # only a gzip stream fails part-way
                raise (_gzip_error(path, exc) if _is_gzip(path) else _open_error(path, exc)) from None
            lineno += 1
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                bom = 3 if lineno == 1 and raw.startswith(b"\xef\xbb\xbf") else 0
                raise _error(f"{path}: line {lineno}: not valid UTF-8 (byte offset {offset + bom + exc.start}); "
                             "re-encode the file as UTF-8") from None
            offset += len(raw)
            yield lineno, text


@contextlib.contextmanager
def _progress(path: Path, raw_file: BinaryIO) -> Iterator[Callable[[], None]]:
    """A bar of bytes read on stderr (a terminal only) for files over PROGRESS_MIN_BYTES; yields `advance()`."""
    size = os.fstat(raw_file.fileno()).st_size
    if size < PROGRESS_MIN_BYTES:
        yield lambda: None
        return
    # optional and heavy: imported on use (large files only)
    from tqdm import tqdm

    bar = tqdm(total=size, desc=f"reading {path.name}", unit="B", unit_scale=True, unit_divisor=1024,
               leave=False, disable=None, file=sys.stderr)  # disable=None: silent unless stderr is a terminal

    def advance() -> None:
        bar.update(raw_file.tell() - bar.n)

    try:
        yield advance
    finally:
        bar.close()


def _parse_json(text: str, path: Path, lineno: int | None) -> Any:
    where = f"{path}: line {lineno}" if lineno is not None else str(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        line = lineno if lineno is not None else exc.lineno
        raise _error(f"{path}: line {line}: malformed JSON ({one_line(exc.msg)})") from None
    except RecursionError:
        raise _error(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer longer than Python converts (4,300 digits)
        raise _error(f"{where}: malformed JSON ({one_line(exc, 120)})") from None


def _records_json(path: Path) -> Iterator[tuple[int, Any]]:
    data = _parse_json(_read_text(path), path, None)
    if isinstance(data, dict):
        lists = [k for k in LIST_KEYS if isinstance(data.get(k), list)]
        if not lists:
            raise _error(f"{path}: expected a JSON list of records, or an object with one of "
                         f"{', '.join(LIST_KEYS)} holding that list")
        if len(lists) > 1:  # never guess which one is meant
            raise _error(f"{path}: the object holds several lists of records ({', '.join(lists)}); "
                         "keep the one to use in a file of its own")
        data = data[lists[0]]
    if not isinstance(data, list):
        raise _error(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for index, record in enumerate(data):
        yield index + 1, record


def _records_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    for lineno, line in _iter_lines(path):
        if line.strip():
            yield lineno, _parse_json(line, path, lineno)


def _csv_lines(path: Path) -> Iterator[str]:
    for _, line in _iter_lines(path):
        yield from (_CR_LINE_END.split(line) if "\r" in line.rstrip("\r\n") else (line,))


def _records_csv(path: Path) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(_csv_lines(path))
    try:
        for row in reader:
            yield reader.line_num, row
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise _error(f"{path}: line {reader.line_num}: a CSV field is longer than {csv.field_size_limit():,} "
                         "characters (Python's csv limit); store long texts as JSONL or parquet") from None
        raise _error(f"{path}: line {reader.line_num}: malformed CSV ({one_line(exc)})") from None


def _records_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    """Rows a batch at a time, so memory is bounded by the batch (and the file's metadata)."""
    # optional and heavy: imported on use
    import pyarrow.parquet as pq

    number = 0
    try:
        handle = pq.ParquetFile(path)
    except FileNotFoundError:
        raise _error(f"{path}: no such file") from None
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise _error(f"{path}: not a readable parquet file ({type(exc).__name__}: {one_line(exc)})") from None
    with handle:
        batches = handle.iter_batches(batch_size=PARQUET_BATCH_ROWS)
        while True:
            try:
                rows = next(batches).to_pylist()
            except StopIteration:
                return
            except Exception as exc:  # a corrupt page shows only when its batch is decoded
                raise _error(f"{path}: row {number + 1}: not a readable parquet file ({type(exc).__name__}: "
                             f"{one_line(exc)})") from None
            for record in rows:
                number += 1
                yield number, record


def iter_file_records(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield (line or row number, raw record) from a local data file.

    JSONL and CSV are read a line at a time and parquet a row batch at a time, so memory stays
    bounded however large the file; a .json file is one document and is read whole.
    """
    path = Path(path)
    suffix = _suffix(path)
    if _is_dir(path):
        raise _error(f"{path}: is a directory; give a data file ({', '.join(FILE_SUFFIXES)}, optionally .gz)")
    if suffix not in FILE_SUFFIXES:
        raise _error(f"{path}: unsupported file type {one_line(suffix, 40) or '(none)'!r}; "
                     f"use one of {', '.join(FILE_SUFFIXES)}")
    if suffix == ".parquet":
        if not path_exists(path):
            raise _error(f"{path}: no such file")
        yield from _records_parquet(path)
        return
    reader = {".json": _records_json, ".jsonl": _records_jsonl, ".csv": _records_csv}[suffix]
    yield from reader(path)


def _check_text(value: str, what: str, where: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _error(f"{where}: {what} holds a lone UTF-16 surrogate ({value[exc.start]!r} at character "
                     f"{exc.start}), which is not text; fix the escape or the encoding that produced it") from None
    return value


_JSON_TYPES = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", list: "a list",
               dict: "an object"}


def _text_field(record: dict, key: str, where: str, *, optional: bool = False) -> str:
    """The text of `record[key]`; anything but a string is refused, never converted (a missing or null
    optional field is empty)."""
    value = record.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        got = _JSON_TYPES.get(type(value), type(value).__name__)
        raise _error(f"{where}: field {key!r} must be text, got {got}")
    return _check_text(value, f"field {key!r}", where)


def _messages(record: dict, where: str) -> list[dict[str, str]]:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise _error(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    out = []
    for turn, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise _error(f"{where}: message {turn} must be an object with text 'role' and 'content'")
        if message["role"] not in ROLES:
            raise _error(f"{where}: message {turn} has role {one_line(repr(message['role']), 60)}; "
                         f"use one of {', '.join(ROLES)}")
        out.append({"role": message["role"],
                    "content": _check_text(message["content"], f"message {turn}'s content", where)})
    if out[-1]["role"] != "assistant":
        raise _error(f"{where}: the last message must be the assistant's response")
    if len(out) < 2:
        raise _error(f"{where}: 'messages' needs at least a user turn and an assistant response")
    return out


def _subtask(record: dict, where: str) -> str | None:
    if record.get("subtask") is None:
        return None
    if isinstance(record["subtask"], bool) or not isinstance(record["subtask"], (str, int, float)):
        raise _error(f"{where}: field 'subtask' must be text, got {type(record['subtask']).__name__}")
    value = record["subtask"]
    if isinstance(value, (int, float)):  # a numeric label names a group as well as text does
        try:
            return str(value)
        except ValueError:  # an integer too long to print (over 4,300 digits)
            raise _error(f"{where}: field 'subtask' holds a number too long to use as a name") from None
    return _text_field(record, "subtask", where) or None


def record_to_example(record: Any, *, source: str, where: str) -> Example:
    """Turn one raw record into an `Example`, or raise `DataError` naming what is missing.

    Text fields take strings only (a number or null is refused, not converted; `input` may be
    missing or null); anything else, and strings that are not valid Unicode (lone surrogates),
    is a `DataError` with a one-line message naming the record's line.
    """
    if not isinstance(record, dict):
        raise _error(f"{where}: expected an object with fields, got {type(record).__name__}")
    subtask = _subtask(record, where)
    prefix = _text_field(record, "response_prefix", where, optional=True)  # opens the response, read, not scored
    if isinstance(record.get("prompt"), list) and isinstance(record.get("completion"), list):
        record = {**record, "messages": record["prompt"] + record["completion"]}  # conversational prompt-completion
    if "messages" in record and record["messages"] is not None:
        messages = _messages(record, where)
        try:
            return Example.from_messages(messages, subtask=subtask, source=source, response_prefix=prefix)
        except ValueError as exc:
            raise _error(f"{where}: {exc}") from None
    if "instruction" in record and "output" in record:
        return Example(instruction=_text_field(record, "instruction", where),
                       input=_text_field(record, "input", where, optional=True),
                       output=_text_field(record, "output", where), subtask=subtask, source=source,
                       response_prefix=prefix)
    for answer in ("response", "completion"):
        if "prompt" in record and answer in record:
            return Example(instruction=_text_field(record, "prompt", where), input="",
                           output=_text_field(record, answer, where), subtask=subtask, source=source,
                           response_prefix=prefix)
    keys = one_line(", ".join(sorted(one_line(repr(k) if not isinstance(k, str) else k, 40) for k in record))
                    or "none", 200)
    raise _error(f"{where}: missing fields: need 'instruction' and 'output' (optional 'input'), "
                 f"'prompt' and 'response' (or 'completion'), or 'messages'; found: {keys}")


def iter_examples(records: Iterable[tuple[int, Any]], *, source: str, origin: str,
                  report: ReadReport | None = None) -> Iterator[Example]:
    """Examples from numbered records, in order, skipping those with an empty response.

    Lazy: one record is held at a time. `report`, when given, counts records read and skipped
    (its `examples` list is left alone).
    """
    report = ReadReport() if report is None else report
    for number, record in records:
        example = record_to_example(record, source=source, where=f"{origin}: record at line/row {number}")
        report.read += 1
        if not example.output.strip():
            report.skipped_empty += 1
            continue
        yield example


def examples_from_records(records: Iterable[tuple[int, Any]], *, source: str, origin: str) -> ReadReport:
    """Convert numbered records, skipping (and counting) those with an empty response."""
    report = ReadReport()
    report.examples.extend(iter_examples(records, source=source, origin=origin, report=report))
    return report


def read_file(path: str | os.PathLike, *, source: str | None = None) -> ReadReport:
    """Read a local data file into examples."""
    path = Path(path)
    return examples_from_records(iter_file_records(path), source=source or path.name, origin=str(path))


def parse_hf_spec(spec: str) -> tuple[str, str]:
    """`hf:<dataset>[:<split>]` -> (dataset id, split); the split defaults to train."""
    body = spec[3:] if spec.startswith("hf:") else spec
    name, _, split = body.partition(":")
    if not name:
        raise _error(f"{spec}: give a dataset id, as in hf:tatsu-lab/alpaca[:train]")
    return name, split or "train"


def _hf_error(spec: str, exc: Exception) -> DataError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _error(f"{spec}: could not load dataset ({one_line(first)})")


def read_hf(spec: str, *, source: str | None = None) -> ReadReport:
    """Read `hf:<dataset>[:<split>]` through the datasets library (default split: train)."""
    name, split = parse_hf_spec(spec)
    # optional and heavy: imported on use
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as exc:  # datasets raises many types; all mean "could not load"
        raise _hf_error(spec, exc) from None
    return examples_from_records(((i + 1, r) for i, r in enumerate(dataset)),
                                 source=source or name, origin=spec)


def iter_hf_records(spec: str) -> Iterator[tuple[int, Any]]:
    """(row number, record) of `hf:<dataset>[:<split>]` streamed by datasets (`streaming=True`): nothing is
    downloaded or held whole; rows come in the dataset's order, as `read_hf` reads them."""
    name, split = parse_hf_spec(spec)
    # optional and heavy: imported on use
    import datasets

    try:
        rows = iter(datasets.load_dataset(name, split=split, streaming=True))
    except Exception as exc:  # datasets raises many types; all mean "could not load"
        raise _hf_error(spec, exc) from None
    number = 0
    while True:
        try:
            record = next(rows)
        except StopIteration:
            return
        except Exception as exc:  # a shard that fails to download or parse part-way
            raise _hf_error(spec, exc) from None
        number += 1
        yield number, record
