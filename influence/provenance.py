"""What every artifact records about its making, and how a rerun checks it.

One envelope heads every manifest the package writes (feature store, training run and its
checkpoints, selection, evaluation results): the artifact's kind and format version, when
it was made, the installed versions of the packages a result depends on, and optionally
the settings that decided it. One reader checks kind and format; one diff names the first
setting that differs, so a refusal to reuse an artifact always says which field to change.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any, Mapping

from influence.errors import InfluenceError

VERSIONED_PACKAGES = ("influence", "numpy", "torch", "transformers", "peft", "datasets", "faiss-cpu", "traker",
                      "sentence-transformers")
ABSENT = "<absent>"   # a setting present on one side of a diff only


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result may depend on (without importing them)."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def created_now() -> str:
    """The current UTC time to the second, ISO 8601 with its offset."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def envelope(artifact: str, format_version: int, settings: Mapping[str, Any] | None = None, *,
             dated: bool = True) -> dict[str, Any]:
    """The header of an artifact's manifest: kind, format version, created, versions (and settings).

    `dated=False` leaves out the time, for an artifact whose bytes must not depend on when it
    was written (a resumed feature store equals an uninterrupted one byte for byte).
    """
    head: dict[str, Any] = {"artifact": artifact, "format_version": format_version}
    if dated:
        head["created"] = created_now()
    head["versions"] = {"python": sys.version.split()[0], **package_versions()}
    if settings is not None:
        head["settings"] = dict(settings)
    return head


def check_envelope(manifest: Any, path: str | Path, artifact: str, format_version: int, *,
                   error: type[InfluenceError], fix: str) -> dict[str, Any]:
    """`manifest` if it is a dict headed by this artifact's kind and format version, else `error`."""
    if not isinstance(manifest, dict) or manifest.get("artifact") != artifact \
            or manifest.get("format_version") != format_version:
        found = (f"{manifest.get('artifact')!r} format {manifest.get('format_version')!r}"
                 if isinstance(manifest, dict) else type(manifest).__name__)
        raise error(f"{path} is not a {artifact} manifest of format {format_version} (found {found}); {fix}")
    return manifest


def read_envelope(path: str | Path, artifact: str, format_version: int, *, error: type[InfluenceError],
                  fix: str) -> dict[str, Any]:
    """Read a manifest written with `envelope` and check its kind and format version.

    Raises:
        FileNotFoundError: there is no file at `path` (callers say what that means for them).
        `error`: the file is unreadable, not JSON, or another kind or format of artifact.
    """
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise error(f"{path} is unreadable ({type(err).__name__}: {str(err)[:200]}); {fix}") from None
    return check_envelope(manifest, path, artifact, format_version, error=error, fix=fix)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix or "<settings>": obj}


def settings_differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """Every setting (dotted path, sorted) whose value or type differs, with the stored and wanted values."""
    left, right = _flatten(dict(stored)), _flatten(dict(wanted))
    out = []
    for key in sorted(set(left) | set(right)):
        a, b = left.get(key, ABSENT), right.get(key, ABSENT)
        if a != b or type(a) is not type(b):
            out.append((key, a, b))
    return out


def settings_difference(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> tuple[str, Any, Any] | None:
    """The first setting (dotted path, sorted) that differs, with both values; None if they agree."""
    differences = settings_differences(stored, wanted)
    return differences[0] if differences else None
