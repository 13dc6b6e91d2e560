"""File names, formats and the names of the kinds settings choose from, chosen once.

The kinds live here, with a line of help each, so that settings and the CLI can list them
without loading torch; the modules that implement them key their code by these names.
"""

from __future__ import annotations

import re
from pathlib import Path

MANIFEST_SUFFIX = ".manifest.json"   # a selection `x.jsonl` has its manifest at `.x.manifest.json`
SELECTION_SUFFIX = ".jsonl"
DATASTORE_MANIFEST = "manifest.json"  # inside indexes/<name>/
DEFAULT_INDEX_ROOT = Path("indexes")
DEFAULT_SELECTION_DIR = Path("selections")
OUTPUT_FORMATS = ("alpaca", "messages", "prompt-completion")
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"  # inside a peft adapter directory
# how rds reads an example's final hidden states: its last token's, their mean, or RDS+'s position-weighted mean
POOLINGS = ("last", "mean", "weighted")
LABEL_TURNS: dict[str, str] = {  # in a chat of several turns, which assistant turns carry the loss
    "all": "every assistant turn, as open-instruct's encode_with_messages_format (and so LESS) labels them",
    "last": "only the final assistant turn, the example's response",
}
DEFAULT_LABEL_TURNS = "all"
ID_LENGTH = 16  # hex characters of the content hash kept as an example's id

GRAD_TYPES: dict[str, str] = {
    "sgd": "raw gradient of the example's mean response NLL (LESS uses it for target examples)",
    "adam": "Adam-preconditioned update from a checkpoint's AdamW moments (LESS uses it for pool examples)",
    "sign": "sign of the raw gradient",
}
ADAM_FORMS: dict[str, str] = {
    "less": "LESS's released code (which produced its published results): m' / sqrt(v' + eps), "
            "no bias correction",
    "paper": "the LESS paper's formula: m_hat / (sqrt(v_hat) + eps), bias-corrected with the step count",
}
DEFAULT_ADAM_FORM = "less"
PROJECTOR_KINDS: dict[str, str] = {  # influence.features.projection.PROJECTORS builds them
    "sjlt": "our sparse Johnson-Lindenstrauss transform, the fastest on every device measured",
    "trak-basic": "TRAK's dense Rademacher projection, on any device",
    "trak-cuda": "TRAK's fast_jl CUDA kernel (falls back to trak-basic, loudly, without it)",
}


def manifest_path(selection_path: str | Path) -> Path:
    """`out/sel.jsonl` -> `out/.sel.manifest.json`.

    The leading dot hides the manifest from `datasets` (and the Hub), which skip hidden files:
    `load_dataset("json", data_dir="out")` then reads the selections' records only.
    """
    path = Path(selection_path)
    stem = path.name[: -len(SELECTION_SUFFIX)] if path.name.endswith(SELECTION_SUFFIX) else path.name
    return path.with_name("." + stem.lstrip(".") + MANIFEST_SUFFIX)


def safe_name(text: str, *, keep_suffix: bool = False, keep: str = "") -> str:
    """`text` as part of a file name: a file's suffix dropped (unless `keep_suffix`), characters other
    than letters, digits, `_`, `.`, `-` and those in `keep` replaced by `_`, none at either end (may be empty)."""
    if not keep_suffix and Path(text).suffix:
        text = Path(text).stem
    return re.sub(rf"[^A-Za-z0-9_.{re.escape(keep)}-]+", "_", text).strip("_")
