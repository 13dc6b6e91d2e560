"""The LESS selector: targeted selection by LoRA gradient influence (Xia et al., arXiv 2402.04333)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from influence.data.pools import Pool
from influence.features.projection import default_projector_name
from influence.less.pipeline import build_features, less_run, similarity_matrix
from influence.less.settings import LessSettings
from influence.models import DEFAULT_MODEL
from influence.selectors.base import Scores, SelectionContext, Selector


class LessSelector(Selector):
    """Scores each pool example by its LESS influence on the target.

    Per warmup checkpoint, the cosine between the example's Adam-preconditioned gradient
    and each target example's SGD gradient, weighted by the checkpoint's learning rate and
    summed; then the mean over each subtask and the max over subtasks. The gradients are
    the full ones by default (scoring="unprojected"), projected features otherwise.

    For a selection algorithm other than top-k (`context.pairwise`) it hands over the scores
    before aggregation: per target example from projected features (every pair, exactly, no
    FAISS search), per subtask from the exact cosines, whose queries are subtask means.
    """

    name = "less"
    requires_target = True
    pairwise = True  # per target example from projected features; per subtask with the exact score

    def __init__(self, settings: LessSettings | None = None, *, loaded: Any = None, existing_only: bool = False,
                 **changes: Any):
        """`existing_only`: score from datastores already built, never warm up or featurize."""
        settings = settings or LessSettings()
        self.settings = settings.with_(**changes) if changes else settings
        self.existing_only = existing_only
        self._loaded = loaded

    def prepare(self, pool: Pool, context: SelectionContext) -> None:
        """This rank's share of the work that can be spread over torch.distributed ranks: the
        warmup and the features (or, with existing_only, their checks). Rank 0 calls `score`
        meanwhile, which goes through the same steps with it and then scores alone."""
        build_features(pool, context.target, self.settings.with_(seed=context.seed), loaded=self._loaded,
                       existing_only=self.existing_only)

    def score(self, pool: Pool, context: SelectionContext) -> Scores:
        settings = self.settings.with_(seed=context.seed)
        if context.pairwise:
            features = build_features(pool, context.target, settings, loaded=self._loaded,
                                      existing_only=self.existing_only)
            similarities, scoring = similarity_matrix(features, pool, context.target, settings)
            run = replace(features, stats={**features.stats, "scoring": scoring})
            return Scores(similarities.aggregate(), run.provenance(), similarities)
        run = less_run(pool, context.target, self.settings.with_(seed=context.seed), k=context.k,
                       loaded=self._loaded, existing_only=self.existing_only)
        return Scores(run.scores, run.provenance())

    def params(self) -> dict[str, Any]:
        """The settings, with the model and projector that defaults resolve to (never null in a manifest)."""
        params = self.settings.to_dict()
        if params.get("model") is None:
            params["model"] = self._loaded.spec if self._loaded is not None else DEFAULT_MODEL
        if params.get("projector") is None:
            params["projector"] = default_projector_name(self.settings.device or "cpu")
        return params
