"""Copy the real datasets from shared/data into the package, compressed with xz.

Each bundle is a byte-for-byte copy of the original files (a tar archive with fixed
metadata, so the bundle is reproducible), next to the licence files it came with.
Run from the repository root: `python scripts/bundle_data.py ../shared/data`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import lzma
import tarfile
from pathlib import Path

BUNDLED = Path(__file__).resolve().parent.parent / "influence" / "data" / "bundled"

# bundle name -> folder (or file) under shared/data
SOURCES = {
    "alpaca_5000.tar.xz": ["pools/alpaca_5000.json", "pools/alpaca_5000.LICENSE"],
    "flan_v2_cot.tar.xz": ["pools/flan_v2_cot"],
    "bbh.tar.xz": ["targets/bbh"],
    "mmlu.tar.xz": ["targets/mmlu"],
    "tydiqa.tar.xz": ["targets/tydiqa"],
    "self_instruct_user_oriented.tar.xz": ["targets/self_instruct_user_oriented"],
}


def _files(root: Path, rel: str) -> list[Path]:
    path = root / rel
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def build(root: Path) -> None:
    for name, rels in SOURCES.items():
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rel in rels:
                for path in _files(root, rel):
                    info = tarfile.TarInfo(str(path.relative_to(root)))
                    data = path.read_bytes()
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))
        packed = lzma.compress(buf.getvalue(), preset=9 | lzma.PRESET_EXTREME)
        (BUNDLED / name).write_bytes(packed)
        print(f"{name}: {len(packed):,} bytes, sha256 {hashlib.sha256(packed).hexdigest()[:16]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("shared_data", type=Path)
    build(parser.parse_args().shared_data)
