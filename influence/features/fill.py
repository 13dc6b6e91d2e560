"""Fill one datastore from a generator of feature batches, a shard at a time, resuming what is there.

For forward-only features (hidden states, sentence embeddings): one process writes. The
computation is passed in as `compute(rows)`, yielding `FeatureBatch`es for those rows, so
this module owns the store's policy (resume, shard order, finalize) and not the math.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from influence.features.compute import FeatureBatch
from influence.features.datastore import FeatureStore

log = logging.getLogger(__name__)


def fill_store(path: Path, compute: Callable[[range], Iterable[FeatureBatch]], *, identity: Mapping[str, Any],
               example_ids: Sequence[str], dim: int, shard_rows: int, dtype: str = "float16",
               progress: bool = True, desc: str = "features") -> FeatureStore:
    """Make (or resume, or reuse) the store at `path` and compute only its missing shards.

    A kill loses at most the shard in flight; a rerun under the same identity computes the
    rest and gives the bytes of one uninterrupted run.

    Returns:
        The complete store, opened for reading.

    Raises:
        ManifestMismatchError: a store made under another identity or pool is at `path`.
        DatastoreError: another process is writing it.
    """
    # heavy: imported on use, not at start-up
    from tqdm.auto import tqdm

    store = FeatureStore.create(path, identity=identity, example_ids=example_ids, dim=dim, shard_rows=shard_rows,
                                dtype=dtype)
    try:
        shards = store.pending_shards()
        if shards:
            todo = sum(stop - start for start, stop in map(store.shard_range, shards))
            bar = tqdm(total=todo, desc=desc, unit="ex", disable=not progress, dynamic_ncols=True)
            for shard in shards:
                for batch in compute(range(*store.shard_range(shard))):
                    store.write_rows(batch.indices, batch.features.numpy())
                    bar.update(len(batch.indices))
            bar.close()
        store.finalize()
    finally:
        store.close()
    return FeatureStore.open(path, example_ids=example_ids)
