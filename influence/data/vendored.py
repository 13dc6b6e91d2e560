"""Access to the real datasets shipped inside the package (xz-compressed tar bundles).

`scripts/bundle_data.py` made each bundle from byte-for-byte copies of the originals;
`bundled/README.md` gives their provenance and `bundled/licenses/` their licences.
"""

from __future__ import annotations

import functools
import io
import lzma
import tarfile
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"


@functools.lru_cache(maxsize=None)
def bundle(name: str) -> dict[str, bytes]:
    """All files of one bundle (e.g. 'bbh'), keyed by their path inside shared/data."""
    raw = lzma.decompress((BUNDLED_DIR / f"{name}.tar.xz").read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def bundle_files(name: str, prefix: str, suffix: str = "") -> dict[str, bytes]:
    """The files of a bundle under `prefix` ending in `suffix`, keyed by file stem, sorted."""
    files = bundle(name)
    picked = {path: data for path, data in files.items() if path.startswith(prefix) and path.endswith(suffix)}
    return {Path(path).name[: len(Path(path).name) - len(suffix)] if suffix else Path(path).name: data
            for path, data in sorted(picked.items())}


def bundle_text(name: str, path: str) -> str:
    return bundle(name)[path].decode("utf-8")
