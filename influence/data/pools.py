"""Pools: the candidate training examples a selection is drawn from.

A pool spec is a registered name (`alpaca`, `flan_cot`), a local file, or
`hf:<dataset>[:<split>]`, optionally followed by a seeded sample of it:
`flan_cot:sample=300,stratify=source,seed=0` (see `SampleSpec`). Several specs make one
mixed pool in which every example keeps its source; exact duplicates (same content hash)
are kept once and counted.

`load_pool` holds the whole pool; `load_pool(..., stream=True)` holds only the ids and reads
examples from the sources on demand, a chunk at a time; `stream_pool` yields the same
examples in the same order without holding anything, for pools larger than memory.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from influence.data.example import Example
from influence.data.readers import (FILE_SUFFIXES, ReadReport, counted, examples_from_records, iter_examples,
                                    iter_file_records, iter_hf_records, parse_hf_spec, path_exists, read_file, read_hf)
from influence.data.vendored import bundle_files, bundle_text
from influence.errors import ConfigError, DataError, SelectionError, UnknownNameError
from influence.hub import offline
from influence.io import sha256_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolSource:
    """One spec's contribution to a pool."""

    spec: str
    origin: str          # where the examples came from, in words
    read: int            # records read
    skipped_empty: int   # records skipped for an empty response
    kept: int            # examples added to the pool (after removing duplicates)
    duplicates: int = 0  # examples dropped as exact duplicates of ones already in the pool


def example_ids(examples: Sequence[Example]) -> list[str]:
    """The examples' ids, in order; `StreamedExamples` already holds them, so no pass is read."""
    known = getattr(examples, "ids", None)
    return known if known is not None else [e.id for e in examples]


@dataclass
class Pool:
    """Unique examples in a fixed order, with what was read, skipped and deduplicated."""

    examples: Sequence[Example]      # a list, or StreamedExamples read on demand
    sources: list[PoolSource] = field(default_factory=list)
    duplicates: int = 0

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def ids(self) -> list[str]:
        """Every example's id, in order (without reading a streamed pool again)."""
        return example_ids(self.examples)

    @property
    def fingerprint(self) -> str:
        """Content hash of the pool: its example ids, in order."""
        return sha256_json(self.ids)

    def take(self, indices: Sequence[int]) -> list[Example]:
        """The examples at `indices`, in that order; one pass over a streamed pool."""
        take = getattr(self.examples, "take", None)
        return take(indices) if take is not None else [self.examples[i] for i in indices]

    def without(self, indices: Iterable[int]) -> "Pool":
        """This pool less the examples at `indices`, in the same order; a streamed pool stays streamed."""
        dropped = set(indices)
        keep = [i for i in range(len(self)) if i not in dropped]
        return Pool(examples=SubsetExamples(self.examples, keep), sources=self.sources, duplicates=self.duplicates)

    def describe(self) -> list[str]:
        """One line per source (plus a total of duplicates when several sources are mixed), for the terminal."""
        lines = []
        for source in self.sources:
            notes = [f"{counted(source.duplicates, 'exact duplicate')} of examples already in the pool removed"] \
                if source.duplicates else []
            if source.skipped_empty:
                notes.append(f"{counted(source.skipped_empty, 'record')} with an empty response skipped")
            origin = "" if source.origin in (f"file {Path(source.spec)}", f"datasets {source.spec[3:]}") \
                else f" from {source.origin}"
            kept = counted(source.kept, "example") if source.kept else "no new examples"
            lines.append(f"pool {source.spec}: {kept}{origin}" + (f" ({'; '.join(notes)})" if notes else ""))
        if self.duplicates and len(self.sources) > 1:
            lines.append(f"pool: {counted(self.duplicates, 'exact duplicate')} removed in all")
        return lines


class SubsetExamples(Sequence[Example]):
    """Some of a sequence's examples, in order, read through it: over a streamed pool, iterating
    or `take` is still one pass over the sources."""

    def __init__(self, examples: Sequence[Example], keep: Sequence[int]):
        self._examples, self._keep = examples, list(keep)
        parent_ids = example_ids(examples)
        self.ids: list[str] = [parent_ids[i] for i in self._keep]

    def __len__(self) -> int:
        return len(self._keep)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._examples[self._keep[index]]

    def __iter__(self) -> Iterator[Example]:
        kept = set(self._keep)
        for position, example in enumerate(self._examples):
            if position in kept:
                yield example

    def take(self, indices: Sequence[int]) -> list[Example]:
        parent = [self._keep[i] for i in indices]
        take = getattr(self._examples, "take", None)
        return take(parent) if take is not None else [self._examples[i] for i in parent]


@dataclass(frozen=True)
class NamedPool:
    description: str
    load: Callable[[], tuple[ReadReport, str]]  # -> (examples read, origin in words)
    license: str = "unknown"  # the data's licence as the Hub names it; it travels with published examples


def _datasets_cache_has(dataset_id: str) -> bool:
    cache = Path(os.environ.get("HF_DATASETS_CACHE") or
                 Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "datasets")
    return (cache / dataset_id.replace("/", "___")).exists()


def _load_alpaca() -> tuple[ReadReport, str]:
    if _datasets_cache_has("tatsu-lab/alpaca") or not offline():
        try:
            return read_hf("hf:tatsu-lab/alpaca:train", source="alpaca"), "tatsu-lab/alpaca via datasets"
        except DataError as exc:
            log.warning("falling back to the bundled Alpaca sample: %s", exc)
    records = json.loads(bundle_text("alpaca_5000", "pools/alpaca_5000.json"))
    report = examples_from_records(((i + 1, r) for i, r in enumerate(records)), source="alpaca",
                                   origin="bundled alpaca_5000.json")
    return report, "bundled offline sample of Stanford Alpaca (CC BY-NC 4.0)"


FLAN_COT_SOURCES = ("aqua", "creak", "ecqa", "gsm8k", "qasc", "sensemaking", "strategyqa")  # the bundled files
FLAN_COT_ANSWER = "So the answer is"  # the pool's last line: "<rationale>\nSo the answer is <answer>."


@dataclass(frozen=True)
class FlanCotRow:
    """One FLAN v2 CoT row and the pool example made of it."""

    question: str
    answer: str
    rationale: str
    example: Example


@functools.lru_cache(maxsize=1)
def flan_cot_rows() -> dict[str, tuple[FlanCotRow, ...]]:
    """Source name -> its FLAN v2 CoT rows in file order, each as instruction -> rationale then answer."""
    rows: dict[str, tuple[FlanCotRow, ...]] = {}
    for name, data in bundle_files("flan_v2_cot", "pools/flan_v2_cot/", "_train.tsv").items():
        found = []
        for line in data.decode("utf-8").split("\n"):
            if not line:
                continue
            question, answer, rationale = (part.replace("\\n", "\n").strip() for part in line.split("\t"))
            found.append(FlanCotRow(question, answer, rationale, Example(
                instruction=question, input="", source=f"flan_cot/{name}",
                output=f"{rationale}\n{FLAN_COT_ANSWER} {answer}.")))
        rows[name] = tuple(found)
    return rows


def _load_flan_cot() -> tuple[ReadReport, str]:
    """FLAN v2 CoT rows (question, answer, rationale) as instruction -> rationale then answer."""
    report = ReadReport()
    for rows in flan_cot_rows().values():
        report.read += len(rows)
        report.examples.extend(row.example for row in rows)
    return report, "bundled FLAN v2 chain-of-thought data, 7 sources (Apache-2.0)"


POOLS: dict[str, NamedPool] = {
    "alpaca": NamedPool("Stanford Alpaca: 52,002 via datasets, or the bundled 5,000-example sample offline",
                        _load_alpaca, license="cc-by-nc-4.0"),
    "flan_cot": NamedPool("FLAN v2 chain-of-thought: 33,443 rows from 7 sources (bundled)", _load_flan_cot,
                          license="apache-2.0"),
}


STRATA = ("source", "subtask")  # the example fields a sample can be stratified by


@dataclass(frozen=True)
class SampleSpec:
    """A seeded random sample of one pool spec's examples: `SPEC:sample=N[,seed=S][,stratify=source]`.

    With `stratify`, each group of the field (FLAN-CoT's 7 sources, say) gets its
    proportional share of N (largest remainders, so the shares sum to N), drawn
    independently; the sample keeps the source's order. The same spec always gives the
    same examples, so a sampled pool is a recipe anyone can type again.
    """

    count: int
    seed: int = 0
    stratify: str | None = None

    def describe(self) -> str:
        by = f", stratified by {self.stratify}" if self.stratify else ""
        return f"seeded sample of {self.count:,} (seed {self.seed}{by})"


def split_pool_spec(spec: str) -> tuple[str, SampleSpec | None]:
    """(the spec to read, the sample to take of it or None); an existing file's name is never split.

    Raises:
        ConfigError: unknown or malformed sample options.
    """
    base, sep, options = spec.rpartition(":")
    if not sep or "=" not in options or Path(spec).exists():
        return spec, None
    values: dict[str, str] = {}
    for part in options.split(","):
        key, eq, value = (x.strip() for x in part.partition("="))
        if not eq or key not in ("sample", "seed", "stratify") or not value:
            raise ConfigError(f"pool spec {spec!r}: expected sample=N[,seed=S][,stratify={'|'.join(STRATA)}] "
                              f"after the last ':', got {part!r}")
        values[key] = value
    if "sample" not in values:
        raise ConfigError(f"pool spec {spec!r}: give sample=N, as in {base}:sample=300")
    try:
        count, seed = int(values["sample"]), int(values.get("seed", 0))
    except ValueError:
        raise ConfigError(f"pool spec {spec!r}: sample and seed must be integers") from None
    if count <= 0:
        raise ConfigError(f"pool spec {spec!r}: sample must be positive, got {count}")
    stratify = values.get("stratify")
    if stratify is not None and stratify not in STRATA:
        raise ConfigError(f"pool spec {spec!r}: stratify must be one of {', '.join(STRATA)}, got {stratify!r}")
    return base, SampleSpec(count, seed, stratify)


def sample_examples(examples: Sequence[Example], sample: SampleSpec, *, spec: str = "") -> list[Example]:
    """`sample.count` distinct examples (by id, first occurrence) drawn as `sample` says, in source order.

    Raises:
        DataError: the source has fewer distinct examples than asked for.
    """
    unique = list({e.id: e for e in reversed(examples)}.values())[::-1]  # first occurrence of each id, in order
    if sample.count > len(unique):
        raise DataError(f"pool {spec or 'spec'} asks for a sample of {sample.count:,} but has only "
                        f"{len(unique):,} distinct examples; lower sample=")
    rng = np.random.default_rng(sample.seed)
    if sample.stratify is None:
        return [unique[i] for i in sorted(rng.choice(len(unique), sample.count, replace=False).tolist())]
    groups: dict[str, list[int]] = {}
    for index, example in enumerate(unique):
        groups.setdefault(str(getattr(example, sample.stratify) or ""), []).append(index)
    names = sorted(groups)
    quotas = [sample.count * len(groups[g]) / len(unique) for g in names]
    shares = [math.floor(q) for q in quotas]
    for i in sorted(range(len(names)), key=lambda i: (shares[i] - quotas[i], names[i]))[: sample.count - sum(shares)]:
        shares[i] += 1  # largest remainders first; ties by group name
    picked = [groups[g][i] for g, n in zip(names, shares)
              for i in rng.choice(len(groups[g]), n, replace=False).tolist()]
    return [unique[i] for i in sorted(picked)]


def pool_spec_kind(spec: str) -> str:
    """"named", "hf" or "file"; raises UnknownNameError for anything else."""
    spec, _ = split_pool_spec(spec)
    if spec in POOLS:
        return "named"
    if spec.startswith("hf:"):
        return "hf"
    path = Path(spec)
    if path_exists(path) or path.name.lower().removesuffix(".gz").endswith(FILE_SUFFIXES):
        return "file"
    raise UnknownNameError("pool", spec, list(POOLS)) from None


def read_pool_spec(spec: str) -> tuple[ReadReport, str]:
    """Read one spec (name, file or hf: id, maybe sampled) into examples and an origin description."""
    base, sample = split_pool_spec(spec)
    kind = pool_spec_kind(base)
    if kind == "named":
        report, origin = POOLS[base].load()
    elif kind == "hf":
        report, origin = read_hf(base), f"datasets {base[3:]}"
    else:
        report, origin = read_file(base), f"file {Path(base)}"
    if sample is not None:
        report.examples = sample_examples(report.examples, sample, spec=spec)
        origin = f"{origin}, {sample.describe()}"
    return report, origin


@dataclass
class SpecReading:
    """What reading one spec lazily has found so far: counts, and where the examples came from."""

    report: ReadReport = field(default_factory=ReadReport)
    origin: str = ""


def iter_pool_spec(spec: str) -> tuple[Iterator[Example], SpecReading]:
    """One spec's examples as a lazy iterator, and the counts and origin that reading them fills in.

    Files are read a line (JSONL, CSV) or a row batch (parquet) at a time and hf: ids through
    datasets streaming; registered pools are small (bundled, or Alpaca's 52k) and are read whole,
    and so is a sampled spec (a sample needs every candidate).
    """
    kind = pool_spec_kind(spec)
    reading = SpecReading()
    if split_pool_spec(spec)[1] is not None:
        def sampled() -> Iterator[Example]:
            whole, reading.origin = read_pool_spec(spec)
            reading.report.read, reading.report.skipped_empty = whole.read, whole.skipped_empty
            yield from whole.examples

        return sampled(), reading
    if kind == "named":
        def named() -> Iterator[Example]:
            whole, reading.origin = POOLS[spec].load()  # bundled or from the hub: known once loaded
            reading.report.read, reading.report.skipped_empty = whole.read, whole.skipped_empty
            yield from whole.examples

        return named(), reading
    if kind == "hf":
        reading.origin = f"datasets {spec[3:]}"
        name, _ = parse_hf_spec(spec)
        return iter_examples(iter_hf_records(spec), source=name, origin=spec, report=reading.report), reading
    path = Path(spec)
    reading.origin = f"file {path}"
    return iter_examples(iter_file_records(path), source=path.name, origin=str(path), report=reading.report), reading


def load_pool(specs: str | Iterable[str], *, stream: bool = False) -> Pool:
    """Load one or more pool specs into a single deduplicated pool.

    With stream=True a pool with a file or hf: source keeps only its ids (one pass reads them)
    and its examples are read from the sources when asked for (see `StreamedExamples`):
    memory grows with the number of examples (about 200 bytes each at peak: the id and the
    duplicate check of the first pass), not with their text.
    Registered pools are bundled or small and are loaded whole either way.

    Raises:
        UnknownNameError: a spec is neither a registered pool, a file nor an hf: id.
        DataError: a file cannot be read or holds bad records.
        SelectionError: the pool has no usable example.
    """
    specs = [specs] if isinstance(specs, str) else list(specs)
    if stream and any(pool_spec_kind(spec) != "named" for spec in specs):  # registered pools are read whole anyway
        examples = StreamedExamples(specs)
        return Pool(examples=examples, sources=examples.sources, duplicates=examples.duplicates)
    if not specs:
        raise SelectionError("no pool given; pass --pool NAME (see `influence pools`) or a file")
    seen: set[str] = set()
    pool = Pool(examples=[])
    for spec in specs:
        report, origin = read_pool_spec(spec)
        kept = dropped = 0
        for example in report.examples:
            if example.id in seen:
                dropped += 1
                continue
            seen.add(example.id)
            pool.examples.append(example)
            kept += 1
        pool.duplicates += dropped
        pool.sources.append(PoolSource(spec, origin, report.read, report.skipped_empty, kept, dropped))
    if not pool.examples:
        raise SelectionError(f"the pool {' + '.join(specs)} has no usable examples "
                             "(empty, or every response is empty)")
    return pool


DEFAULT_STREAM_CHUNK = 1024  # examples per chunk from PoolStream.chunks


class PoolStream:
    """The examples of `load_pool(specs)`, in the same order with the same ids, skips and duplicates
    removed, read lazily: memory holds one chunk of examples (plus one 64-bit key per unique
    example seen, about 60 bytes, to drop duplicates) however large the pool.

    Iterate it for examples or call `chunks()` for lists of up to `chunk_size`; every pass reads
    the sources again from the start. After a complete pass, `sources`, `duplicates`, `count`,
    `fingerprint` and `describe()` equal those of the loaded `Pool`.
    """

    def __init__(self, specs: str | Iterable[str], *, chunk_size: int = DEFAULT_STREAM_CHUNK):
        self.specs = [specs] if isinstance(specs, str) else list(specs)
        if not self.specs:
            raise SelectionError("no pool given; pass --pool NAME (see `influence pools`) or a file")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        for spec in self.specs:
            pool_spec_kind(spec)  # an unknown name fails now, not after reading the specs before it
        self.chunk_size = chunk_size
        self.sources: list[PoolSource] = []
        self.duplicates = 0
        self.count = 0
        self._fingerprint: str | None = None

    def __iter__(self) -> Iterator[Example]:
        self.sources, self.duplicates, self.count, self._fingerprint = [], 0, 0, None
        seen: set[int] = set()
        digest = hashlib.sha256(b"[")  # sha256_json of the id list, written as it grows
        for spec in self.specs:
            examples, reading = iter_pool_spec(spec)
            kept = dropped = 0
            for example in examples:
                key = int(example.id, 16)
                if key in seen:
                    self.duplicates += 1
                    dropped += 1
                    continue
                seen.add(key)
                digest.update((b',"' if self.count else b'"') + example.id.encode() + b'"')
                self.count += 1
                kept += 1
                yield example
            report = reading.report
            self.sources.append(PoolSource(spec, reading.origin, report.read, report.skipped_empty, kept, dropped))
        if not self.count:
            raise SelectionError(f"the pool {' + '.join(self.specs)} has no usable examples "
                                 "(empty, or every response is empty)")
        digest.update(b"]")
        self._fingerprint = digest.hexdigest()

    def chunks(self) -> Iterator[list[Example]]:
        """Lists of up to `chunk_size` examples, in order."""
        chunk: list[Example] = []
        for example in self:
            chunk.append(example)
            if len(chunk) == self.chunk_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    @property
    def fingerprint(self) -> str:
        """`Pool.fingerprint` of the same pool; known once a pass has ended."""
        if self._fingerprint is None:
            raise RuntimeError("the fingerprint is known only after a complete pass over the stream")
        return self._fingerprint

    def describe(self) -> list[str]:
        """`Pool.describe` lines, after a complete pass."""
        return Pool(examples=[], sources=self.sources, duplicates=self.duplicates).describe()


class StreamedExamples(Sequence[Example]):
    """A pool's examples, read from its sources on demand with one chunk in memory.

    Construction reads the sources once and keeps every id. Indexing moves a cursor forward
    through a pass over the sources, so ascending access (a shard's rows, sorted picks)
    reads them once, and stepping back starts a new pass. Every pass checks the ids it reads
    against the first one's, so a source that changed on disk is an error, not a silent mix.
    """

    def __init__(self, specs: str | Iterable[str], *, chunk_size: int = DEFAULT_STREAM_CHUNK):
        first = PoolStream(specs, chunk_size=chunk_size)
        self.specs, self.chunk_size = first.specs, chunk_size
        self.ids: list[str] = [example.id for example in first]
        self.sources, self.duplicates = first.sources, first.duplicates
        self.passes = 1
        self._chunks: Iterator[list[Example]] | None = None
        self._chunk: list[Example] = []
        self._start = 0                     # pool index of self._chunk[0]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        position = index + len(self) if index < 0 else index
        if not 0 <= position < len(self):
            raise IndexError(f"pool index {index} out of range for {len(self)} examples")
        if self._chunks is None or position < self._start:
            self._chunks, self._chunk, self._start = self._checked_chunks(), [], 0
        while position >= self._start + len(self._chunk):
            self._start += len(self._chunk)
            self._chunk = next(self._chunks)
        return self._chunk[position - self._start]

    def __iter__(self) -> Iterator[Example]:
        for chunk in self._checked_chunks():
            yield from chunk

    def take(self, indices: Sequence[int]) -> list[Example]:
        """The examples at `indices`, in that order, read in one ascending sweep."""
        found = {i: self[i] for i in sorted(set(indices))}
        return [found[i] for i in indices]

    def _checked_chunks(self) -> Iterator[list[Example]]:
        self.passes += 1
        start = 0
        for chunk in PoolStream(self.specs, chunk_size=self.chunk_size).chunks():
            if [e.id for e in chunk] != self.ids[start: start + len(chunk)]:
                raise DataError(f"pool {' + '.join(self.specs)} changed while it was being read (around example "
                                f"{start:,}); rerun once the sources stop changing")
            start += len(chunk)
            yield chunk
        if start != len(self.ids):
            raise DataError(f"pool {' + '.join(self.specs)} changed while it was being read ({start:,} examples "
                            f"now, {len(self.ids):,} before); rerun once the sources stop changing")


def stream_pool(specs: str | Iterable[str], *, chunk_size: int = DEFAULT_STREAM_CHUNK) -> PoolStream:
    """`load_pool`'s examples, read lazily (see `PoolStream`).

    Raises:
        UnknownNameError: a spec is neither a registered pool, a file nor an hf: id (at once).
        DataError: a file or dataset cannot be read or holds bad records (when reached).
        SelectionError: no spec, or (at the end of a pass) no usable example.
    """
    return PoolStream(specs, chunk_size=chunk_size)
