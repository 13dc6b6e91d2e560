"""Per-example LoRA gradient features: exact batched gradients, random projection, featurization.

The math only; where features are stored is the datastore's and the orchestration's business.
"""

from influence.features.compute import (FeatureBatch, FeaturizeStats, SubtaskQueries, featurize, length_batches,
                                       normalize_blocks, query_memory_bytes, subtask_queries)
from influence.features.grads import (ADAM_FORMS, DEFAULT_ADAM_FORM, GRAD_TYPES, AdamMoments, LoraGradients,
                                      ParameterSlot, adam_update, match_moments, per_example_gradients)
from influence.features.projection import (PROJECTORS, Projector, SJLTProjector, StreamingProjector,
                                           TrakBasicProjector, TrakCudaProjector, default_projector_name, dim_slices,
                                           make_projector)

__all__ = [
    "ADAM_FORMS", "DEFAULT_ADAM_FORM", "GRAD_TYPES", "AdamMoments", "LoraGradients", "ParameterSlot", "adam_update",
    "match_moments", "per_example_gradients",
    "PROJECTORS", "Projector", "SJLTProjector", "StreamingProjector", "TrakBasicProjector", "TrakCudaProjector",
    "default_projector_name", "dim_slices", "make_projector",
    "FeatureBatch", "FeaturizeStats", "SubtaskQueries", "featurize", "length_batches", "normalize_blocks",
    "query_memory_bytes", "subtask_queries",
]
