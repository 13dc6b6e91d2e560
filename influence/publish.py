"""Publish a selection as a Hugging Face dataset: its records, its manifest and a dataset card.

The folder holds `data/train.jsonl` (the records), `manifest.json` (the selection's manifest,
with what was published added) and `README.md`, a dataset card whose YAML names the licences
the examples inherit from their sources, and whose `configs` point `datasets.load_dataset` at
the records alone. The card's body says how the selection was made: the selector and its
settings, k, seed, pool, target and the contamination guard's result.

It is written to a local directory (no network), or pushed with huggingface_hub to a dataset
repository. Everything that can be refused is refused before anything is written.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from influence.constants import OUTPUT_FORMATS, manifest_path
from influence.data.pools import POOLS
from influence.data.readers import one_line, record_to_example
from influence.errors import ConfigError, DataError, OutputError, OutputExistsError, PublishError
from influence.hub import offline
from influence.io import atomic_directory, check_output_dir, json_bytes, jsonl_bytes, sha256_bytes, write_bytes
from influence.provenance import read_envelope
from influence.selection import SELECTION_ARTIFACT, SELECTION_FORMAT

DATA_FILE = "data/train.jsonl"
MANIFEST_FILE = "manifest.json"
CARD_FILE = "README.md"
UNKNOWN_LICENSE = "unknown"
RECORD_FIELDS = ("id", "rank", "score", "selector")  # what every selection record carries besides the example
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"))
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class PublishSettings:
    """Where a selection goes and how its records are laid out."""

    repo: str = field(metadata={"help": "The dataset repository, ORG/NAME (named in the card either way)."})
    local_dir: Path | None = field(default=None, metadata={
        "help": "Write the dataset folder here instead of pushing it (no network)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty --local-dir."})
    license: str | None = field(default=None, metadata={
        "help": "The licence of examples from your own files (registered pools bring theirs) [default: unknown]."})
    fmt: str | None = field(default=None, metadata={
        "help": "Record layout [default: the selection's own]; prompt-completion is TRL's conversational "
                "prompt/completion.", "choices": OUTPUT_FORMATS})
    private: bool = field(default=False, metadata={"help": "Create the hub repository as private."})

    def __post_init__(self) -> None:
        if not REPO_ID.match(self.repo or "") or ".." in self.repo:
            raise ConfigError(f"--repo must be ORG/NAME (letters, digits, '-', '_', '.'), got {self.repo!r}")
        if self.fmt is not None and self.fmt not in OUTPUT_FORMATS:
            raise ConfigError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.fmt!r}")
        if self.license is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", self.license):
            raise ConfigError(f"--license takes a Hub licence id such as apache-2.0 or cc-by-4.0, got {self.license!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["local_dir"] = None if self.local_dir is None else str(self.local_dir)
        return data


@dataclass
class SelectionFiles:
    """A selection read back: its records (as written) and its manifest."""

    path: Path
    records: list[dict[str, Any]]
    manifest: dict[str, Any]


def read_selection(path: str | Path) -> SelectionFiles:
    """Read a selection JSONL and the manifest beside it, checking that they belong together.

    Raises:
        DataError: no such file, no manifest beside it, or records that differ from what the
            manifest says was written.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such selection file; give the .jsonl that `influence select` wrote")
    meta = manifest_path(path)
    fix = "publish takes a selection written by `influence select`, with its manifest beside it"
    try:
        manifest = read_envelope(meta, SELECTION_ARTIFACT, SELECTION_FORMAT, error=DataError, fix=fix)
    except FileNotFoundError:
        raise DataError(f"{path}: no manifest beside it (expected {meta}); {fix}") from None
    data = path.read_bytes()
    output = manifest.get("output") or {}
    if output.get("sha256") not in (None, sha256_bytes(data)):
        raise DataError(f"{path} was changed after `influence select` wrote it (its hash differs from {meta.name}'s); "
                        "select again, or publish the file as it was written")
    records = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                raise DataError(f"{path}: line {number} is not JSON ({one_line(str(exc), 120)})") from None
    if not records:
        raise DataError(f"{path} holds no records; nothing to publish")
    return SelectionFiles(path=path, records=records, manifest=manifest)


def reformat(records: list[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    """Selection records in another layout, their id, rank, score and selector kept."""
    out = []
    for number, record in enumerate(records, start=1):
        example = record_to_example(record, source=str(record.get("source", "")), where=f"record {number}")
        out.append({**{key: record[key] for key in RECORD_FIELDS if key in record}, **example.to_record(fmt)})
    return out


def source_license(source: str, given: str | None) -> str:
    """A record source's licence: a registered pool's (`flan_cot/...` is flan_cot's), else `given` or unknown."""
    pool = POOLS.get(source.split("/", 1)[0])
    if pool is not None:
        return pool.license
    return given or UNKNOWN_LICENSE


def licenses_by_source(records: list[dict[str, Any]], given: str | None) -> dict[str, tuple[str, int]]:
    """Each source of the records -> (its licence, how many records come from it), sources sorted."""
    counts = Counter(str(record.get("source", "")) for record in records)
    return {source: (source_license(source, given), counts[source]) for source in sorted(counts)}


def size_category(n: int) -> str:
    for bound, name in SIZE_CATEGORIES:
        if n < bound:
            return name
    return "n>10M"


def card_metadata(records: list[dict[str, Any]], licenses: dict[str, tuple[str, int]], repo: str) -> dict[str, Any]:
    """The card's YAML: licence(s), task and size categories, and the one config that reads the records."""
    names = sorted({license for license, _ in licenses.values()})
    return {
        "license": names[0] if len(names) == 1 else names,
        "pretty_name": repo.split("/", 1)[1],
        "task_categories": ["text-generation"],
        "size_categories": [size_category(len(records))],
        "tags": ["instruction-tuning", "data-selection"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILE}]}],
    }


def _settings_lines(params: dict[str, Any]) -> list[str]:
    return [f"  - `{key}`: `{json.dumps(value)}`" for key, value in sorted(params.items())] or ["  - (none)"]


def _contamination_line(manifest: dict[str, Any]) -> str:
    found = manifest.get("contamination")
    if found is None:
        return "not run: no registered target with held-out items was given"
    verb = "kept in the pool (--keep-contaminated)" if found["action"] == "kept" else "dropped before scoring"
    return (f"{found['found']:,} pool example(s) shared a {found['ngram_words']}-gram with the "
            f"{found['heldout_items']:,} held-out items of `{found['target']}`: {verb}")


def card_body(files: SelectionFiles, fmt: str, licenses: dict[str, tuple[str, int]], repo: str) -> str:
    """The card's text: what the dataset is, how it was selected, and the licences its examples carry."""
    manifest = files.manifest
    selector, pool, target = manifest["selector"], manifest["pool"], manifest.get("target")
    sources = ", ".join(f"`{s['spec']}` ({s['kept']:,} kept)" for s in pool.get("sources", []))
    lines = [
        f"# {repo.split('/', 1)[1]}",
        "",
        f"{len(files.records):,} instruction-tuning examples chosen by the `{selector['name']}` selector of "
        f"`influence`, best first (`rank`, `score`), in the `{fmt}` layout.",
        "",
        "## How they were selected",
        "",
        f"- selector: `{selector['name']}`, with settings:",
        *_settings_lines(selector.get("params") or {}),
        f"- k: {manifest['k']:,}",
        f"- seed: {manifest['seed']}",
        f"- pool: {pool['size']:,} examples from {sources or 'its sources'} (fingerprint `{pool['fingerprint']}`)",
        ("- target: none (an untargeted selection)" if target is None else
         f"- target: `{target['name']}`, {target['examples']:,} examples in {target['subtasks']:,} subtask(s) "
         f"(fingerprint `{target['fingerprint']}`)"),
        f"- contamination guard: {_contamination_line(manifest)}",
        f"- made with influence {manifest.get('versions', {}).get('influence', '?')}; the full record is "
        f"`{MANIFEST_FILE}`",
        "",
        "## Licences",
        "",
        "Each example keeps the licence of the data it came from:",
        "",
        "| source | licence | examples |",
        "|---|---|---|",
        *[f"| `{source}` | {license} | {count:,} |" for source, (license, count) in licenses.items()],
        "",
    ]
    if any(license == "cc-by-nc-4.0" for license, _ in licenses.values()):
        lines += ["Examples from Stanford Alpaca are CC BY-NC 4.0: non-commercial use only.", ""]
    if any(license == UNKNOWN_LICENSE for license, _ in licenses.values()):
        lines += ["Sources marked unknown came from files whose licence was not given (`--license`); check "
                  "their terms before use.", ""]
    lines += ["## Loading", "", "```python", "from datasets import load_dataset", "",
              f'dataset = load_dataset("{repo}", split="train")', "```", ""]
    return "\n".join(lines)


def dataset_card(files: SelectionFiles, records: list[dict[str, Any]], fmt: str, settings: PublishSettings) -> str:
    """README.md: the YAML metadata block, then the body."""
    # heavy: imported on use, not at start-up
    from huggingface_hub import DatasetCardData

    licenses = licenses_by_source(records, settings.license)
    data = DatasetCardData(**card_metadata(records, licenses, settings.repo))
    return f"---\n{data.to_yaml()}\n---\n\n{card_body(files, fmt, licenses, settings.repo)}"


def dataset_files(files: SelectionFiles, settings: PublishSettings) -> dict[str, bytes]:
    """The dataset folder's files, relative path -> bytes."""
    fmt = settings.fmt or files.manifest.get("format") or "alpaca"
    records = files.records if fmt == files.manifest.get("format") else reformat(files.records, fmt)
    data = jsonl_bytes(records)
    manifest = {**files.manifest, "published": {"repo": settings.repo, "format": fmt, "path": DATA_FILE,
                                                "records": len(records), "sha256": sha256_bytes(data),
                                                "licenses": sorted({source_license(str(r.get("source", "")),
                                                                                   settings.license)
                                                                    for r in records})}}
    return {DATA_FILE: data, MANIFEST_FILE: json_bytes(manifest),
            CARD_FILE: dataset_card(files, records, fmt, settings).encode("utf-8")}


def check_local_dir(path: Path, overwrite: bool) -> None:
    """Fail before anything is written unless `path` can take the dataset folder.

    Raises:
        OutputExistsError: it is a non-empty directory and overwrite is False.
        OutputError: it is a file, or cannot be created or written.
    """
    if path.exists() and not path.is_dir():
        raise OutputError(f"--local-dir {path} is a file; give a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(f"--local-dir {path} exists and is not empty; pass --overwrite to replace it")
    check_output_dir(path.parent)


def _write_folder(contents: dict[str, bytes], folder: Path) -> None:
    for name, data in contents.items():
        write_bytes(folder / name, data)


def push(folder: Path, settings: PublishSettings) -> str:
    """Create the dataset repository (if needed) and upload `folder`; returns the commit's URL.

    Raises:
        PublishError: the hub refused or could not be reached.
    """
    # heavy: imported on use, not at start-up
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(settings.repo, repo_type="dataset", private=settings.private, exist_ok=True)
        commit = api.upload_folder(folder_path=folder, repo_id=settings.repo, repo_type="dataset",
                                   commit_message="Publish a selection made with influence")
    except (HfHubHTTPError, OSError) as exc:
        raise PublishError(f"cannot push to dataset {settings.repo}: {one_line(str(exc), 200)}; log in with "
                           "`hf auth login`, check the name, or write the folder with --local-dir") from None
    return str(getattr(commit, "commit_url", commit))


def publish(selection: str | Path, settings: PublishSettings, *,
            echo: Callable[[str], None] = print) -> str:
    """Publish `selection` as a dataset: a local folder (settings.local_dir) or a hub repository.

    Returns:
        The folder written, or the URL of the hub commit.

    Raises:
        DataError, OutputExistsError, OutputError, PublishError: bad input, before anything is written.
    """
    files = read_selection(selection)
    if settings.local_dir is not None:
        check_local_dir(settings.local_dir, settings.overwrite)
    elif offline():
        raise PublishError("pushing to the hub needs the network, but huggingface_hub is offline (HF_HUB_OFFLINE); "
                           "pass --local-dir DIR to write the dataset folder instead")
    contents = dataset_files(files, settings)
    if settings.local_dir is not None:
        with atomic_directory(settings.local_dir) as staging:
            _write_folder(contents, staging)
        echo(f"wrote dataset {settings.repo} to {settings.local_dir} ({len(files.records):,} records)")
        return str(settings.local_dir)
    with tempfile.TemporaryDirectory(prefix="influence-publish-") as staging:
        _write_folder(contents, Path(staging))
        url = push(Path(staging), settings)
    echo(f"pushed {len(files.records):,} records to dataset {settings.repo}: {url}")
    return url
