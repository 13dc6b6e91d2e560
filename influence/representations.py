"""Forward-only features in LESS's datastore: RDS hidden states, sentence embeddings, IFD losses.

They live in the LESS run directory (`indexes/<name>/`, the same name LESS derives or
`--name`), beside the gradient features, and go through the same `FeatureStore`
(manifest, shards, resume) and the same scoring (`score_features`: a FAISS top-k per
subtask, or exact), with one "checkpoint" of weight 1: the cosine with each target
example, averaged over each subtask, maximised over subtasks, as for LESS.

    features/base/pool-repr-<pooling>             the model's final hidden states (no warmup)
    features/base/target-<fp>-repr-<pooling>
    features/base/pool-ifd                        mean response NLL with and without the instruction
    features/encoder-<hash>/pool-embed            sentence embeddings of the encoder <hash>
    features/encoder-<hash>/target-<fp>-embed

RDS uses the base model, not the warmup adapter: LESS's released code computes RDS
representations (`collect_reps`) with whatever model it is given and ships no script that
runs it on a warmup checkpoint (its reps script is empty), so RDS here costs forward passes
alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from influence.data.example import Example
from influence.data.formatting import formatting_identity
from influence.data.pools import Pool, example_ids
from influence.data.targets import Target
from influence.errors import DataError
from influence.features.compute import FeatureBatch, FeaturizeStats
from influence.features.datastore import FeatureStore
from influence.features.difficulty import response_losses
from influence.features.encoder import embeddings, load_encoder
from influence.features.fill import fill_store
from influence.features.represent import hidden_size, hidden_states
from influence.io import sha256_json
from influence.algorithms import Similarities
from influence.less.pipeline import LessRun, score_features, similarity_matrix, workdir_for
from influence.less.settings import LessSettings
from influence.models import load_model
from influence.provenance import package_versions

log = logging.getLogger(__name__)

ONE_CHECKPOINT = [{"checkpoint": "none", "avg_lr": 1.0, "weight": 1.0}]


def _versions() -> dict[str, str]:
    return {k: v for k, v in package_versions().items() if k in ("influence", "torch", "sentence-transformers")}


def _roles(pool: Pool, target: Target | None) -> list[tuple[str, Sequence[Example], str]]:
    if target is not None and not len(target):
        raise DataError(f"target {target.name} has no examples")
    roles = [("pool", pool.examples, pool.fingerprint)]
    if target is not None:
        roles.append(("target", target.examples, sha256_json([e.id for e in target.examples])))
    return roles


def _store_name(role: str, fingerprint: str, kind: str) -> str:
    return f"pool-{kind}" if role == "pool" else f"target-{fingerprint[:12]}-{kind}"


# ------------------------------------------------------------------ rds: the model's hidden states


def rds_features(pool: Pool, target: Target | None, settings: LessSettings, *, pooling: str = "last",
                 loaded: Any = None) -> LessRun:
    """The pool's (and the target's) pooled final hidden states in the datastore; reuses and resumes.

    Raises:
        DataError: the target has no examples.
        ManifestMismatchError: a store of that name was made under other settings or another pool.
    """
    roles = _roles(pool, target)
    loaded = loaded or load_model(settings.model, device=settings.device)
    model = loaded.model.eval()
    workdir = workdir_for(pool, settings)
    common = {"model": {"spec": loaded.spec, "weights_sha256": loaded.weights_sha256}, "features": "hidden-state",
              "layer": "final", "pooling": pooling, "normalised": "l2", "max_length": settings.max_length,
              "formatting": formatting_identity(loaded.tokenizer), "dtype": "float16", "versions": _versions()}
    stores: dict[str, Path] = {}
    totals: dict[str, dict[str, Any]] = {}
    for role, examples, fingerprint in roles:
        stats = FeaturizeStats()

        def compute(rows: range, examples: Sequence[Example] = examples, stats: FeaturizeStats = stats) -> Any:
            return hidden_states(model, loaded.tokenizer, examples, pooling=pooling, batch_size=settings.batch_size,
                                 max_length=settings.max_length, indices=rows, stats=stats)

        store = fill_store(workdir / "features" / "base" / _store_name(role, fingerprint, f"repr-{pooling}"), compute,
                           identity={**common, "role": role, "examples": fingerprint},
                           example_ids=example_ids(examples), dim=hidden_size(model), shard_rows=settings.shard_rows,
                           progress=settings.progress, desc=f"rds hidden states {role}")
        stores[role], totals[role] = store.path, stats.counts()
        if stats.truncated:
            log.warning("rds %s: %d of %d examples were cut at max_length=%d", role, stats.truncated, stats.examples,
                        settings.max_length)
    return LessRun(workdir=workdir, checkpoints=ONE_CHECKPOINT, pool_stores=[stores["pool"]],
                   target_stores=[stores["target"]] if "target" in stores else [],
                   stats={"featurized": totals, "features": "hidden-state", "pooling": pooling})


# ------------------------------------------------------------------ embed: a sentence encoder


def encoder_folder(workdir: Path, encoder: Any) -> Path:
    return workdir / "features" / f"encoder-{sha256_json(encoder.identity())[:10]}"


def _embed_store(examples: Sequence[Example], role: str, fingerprint: str, encoder: Any, workdir: Path,
                 settings: LessSettings, batch_size: int, totals: dict[str, Any]) -> FeatureStore:
    stats = FeaturizeStats()
    store = fill_store(encoder_folder(workdir, encoder) / _store_name(role, fingerprint, "embed"),
                       lambda rows: embeddings(encoder, examples, batch_size=batch_size, indices=rows, stats=stats),
                       identity={"encoder": encoder.identity(), "features": "sentence-embedding", "normalised": "l2",
                                 "text": "prompt, blank line, response", "dtype": "float16", "role": role,
                                 "examples": fingerprint, "versions": _versions()},
                       example_ids=example_ids(examples), dim=encoder.dim, shard_rows=settings.shard_rows,
                       progress=settings.progress, desc=f"sentence embeddings {role}")
    if stats.truncated:
        log.warning("embed %s: %d of %d examples were cut at the encoder's %d word pieces", role, stats.truncated,
                    stats.examples, encoder.model.max_seq_length)
    totals[role] = stats.counts()
    return store


def embed_features(pool: Pool, target: Target | None, settings: LessSettings, *, encoder: Any = None,
                   encoder_spec: str | None = None, batch_size: int = 64) -> LessRun:
    """The pool's (and the target's) sentence embeddings in the datastore; reuses and resumes.

    Raises:
        DataError: the target has no examples.
        ModelError: the encoder cannot be loaded.
    """
    roles = _roles(pool, target)
    encoder = encoder or load_encoder(encoder_spec, device=settings.device)
    workdir = workdir_for(pool, settings)
    totals: dict[str, Any] = {}
    stores = {role: _embed_store(examples, role, fingerprint, encoder, workdir, settings, batch_size, totals).path
              for role, examples, fingerprint in roles}
    return LessRun(workdir=workdir, checkpoints=ONE_CHECKPOINT, pool_stores=[stores["pool"]],
                   target_stores=[stores["target"]] if "target" in stores else [],
                   stats={"featurized": totals, "features": "sentence-embedding", "encoder": encoder.identity()})


def pool_embeddings(pool: Pool, settings: LessSettings, *, encoder_spec: str | None = None,
                    batch_size: int = 64) -> FeatureStore:
    """The pool's stored sentence embeddings (computed once, then read): what diverse top-k compares."""
    features = embed_features(pool, None, settings, encoder_spec=encoder_spec, batch_size=batch_size)
    return FeatureStore.open(features.pool_stores[0], example_ids=pool.ids)


def similarity_scores(features: LessRun, pool: Pool, target: Target, settings: LessSettings, *,
                      k: int | None = None, pairwise: bool = False
                      ) -> tuple[np.ndarray, dict[str, Any], Similarities | None]:
    """Cosine to the target, mean over each subtask, max over subtasks: LESS's scoring with one checkpoint;
    with `pairwise`, also every [pool, target example] cosine, for the selection algorithms.

    These features are the representations themselves, nothing is projected, so LESS's
    default `unprojected` scoring means the FAISS top-k here (exact with the flat index).
    """
    if settings.scoring == "unprojected":
        settings = settings.with_(scoring="faiss")
    similarities = None
    if pairwise:
        similarities, scoring = similarity_matrix(features, pool, target, settings)
        scores = similarities.aggregate()
    else:
        scores, scoring = score_features(features, pool, target, settings, k=k)
    return scores, {"datastore": {"workdir": str(features.workdir),
                                  "pool_stores": [str(p) for p in features.pool_stores],
                                  "target_stores": [str(p) for p in features.target_stores],
                                  **features.stats, "scoring": scoring}}, similarities


# ------------------------------------------------------------------ ifd: two losses per example


def ifd_losses(pool: Pool, settings: LessSettings, *, loaded: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Each pool example's mean response NLL with and without its instruction, [N, 2], from the datastore.

    An example with no response token left after cutting has zeros (its IFD is undefined).
    """
    loaded = loaded or load_model(settings.model, device=settings.device)
    model = loaded.model.eval()
    stats = FeaturizeStats()

    def compute(rows: range) -> Any:
        for indices, losses in response_losses(model, loaded.tokenizer, pool.examples, batch_size=settings.batch_size,
                                               max_length=settings.max_length, indices=rows, stats=stats):
            yield FeatureBatch(indices, torch.from_numpy(np.nan_to_num(losses, nan=0.0)))

    workdir = workdir_for(pool, settings)
    store = fill_store(workdir / "features" / "base" / "pool-ifd", compute,
                       identity={"model": {"spec": loaded.spec, "weights_sha256": loaded.weights_sha256},
                                 "features": "ifd-losses", "columns": ["nll given instruction", "nll alone"],
                                 "max_length": settings.max_length, "dtype": "float32", "role": "pool",
                                 "examples": pool.fingerprint, "versions": _versions()},
                       example_ids=pool.ids, dim=2, shard_rows=settings.shard_rows, dtype="float32",
                       progress=settings.progress, desc="ifd losses")
    return np.asarray(store.rows()[:], dtype=np.float64), {"store": str(store.path), "featurized": stats.counts()}
