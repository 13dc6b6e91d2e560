"""Representation-targeted selectors: cosine to the target in a model's or an encoder's space.

`rds` is LESS's representation baseline (Xia et al., arXiv 2402.04333, Table 3): the
final-layer hidden state of the model LESS uses. `embed` uses a small sentence encoder
(all-MiniLM-L6-v2 by default). Both score like LESS: the cosine with each target example,
averaged over each subtask, maximised over subtasks.
"""

from __future__ import annotations

from typing import Any

from influence.constants import POOLINGS
from influence.data.pools import Pool
from influence.errors import ConfigError
from influence.less.settings import LessSettings
from influence.representations import embed_features, rds_features, similarity_scores
from influence.selectors.base import Scores, SelectionContext, Selector


def _settings(settings: LessSettings | None, changes: dict[str, Any]) -> LessSettings:
    settings = settings or LessSettings()
    return settings.with_(**changes) if changes else settings


class RdsSelector(Selector):
    """Cosine between pooled final-layer hidden states of the base model (no warmup); with
    pooling="weighted" this is RDS+."""

    name = "rds"
    requires_target = True
    pairwise = True

    def __init__(self, settings: LessSettings | None = None, *, pooling: str = "last", loaded: Any = None,
                 **changes: Any):
        """`pooling`: "last" (the last token's state, as LESS's code does), "mean" over the tokens, or
        "weighted", RDS+'s position-weighted mean (Ivison et al., arXiv 2503.01807)."""
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.settings = _settings(settings, changes)
        self.pooling = pooling
        self._loaded = loaded

    def score(self, pool: Pool, context: SelectionContext) -> Scores:
        features = rds_features(pool, context.target, self.settings, pooling=self.pooling, loaded=self._loaded)
        return Scores(*similarity_scores(features, pool, context.target, self.settings, k=context.k,
                                         pairwise=context.pairwise))

    def params(self) -> dict[str, Any]:
        s = self.settings
        return {"model": s.model, "pooling": self.pooling, "max_length": s.max_length, "scoring": s.scoring,
                "index": s.index}


class EmbedSelector(Selector):
    """Cosine between sentence embeddings of a small encoder (all-MiniLM-L6-v2 by default)."""

    name = "embed"
    requires_target = True
    pairwise = True

    def __init__(self, settings: LessSettings | None = None, *, encoder: str | None = None,
                 encoder_batch_size: int = 64, **changes: Any):
        """`encoder`: a sentence-transformers directory or hub id; None is the bundled all-MiniLM-L6-v2."""
        if encoder_batch_size < 1:
            raise ConfigError(f"encoder_batch_size must be at least 1, got {encoder_batch_size}")
        self.settings = _settings(settings, changes)
        self.encoder = encoder
        self.encoder_batch_size = encoder_batch_size

    def score(self, pool: Pool, context: SelectionContext) -> Scores:
        features = embed_features(pool, context.target, self.settings, encoder_spec=self.encoder,
                                  batch_size=self.encoder_batch_size)
        return Scores(*similarity_scores(features, pool, context.target, self.settings, k=context.k,
                                         pairwise=context.pairwise))

    def params(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "scoring": self.settings.scoring, "index": self.settings.index}
