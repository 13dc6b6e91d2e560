"""A read-only [N, d] view of a feature store's rows across its memory-mapped shard files.

Reading a pool larger than memory row by row (or shard by shard) without ever holding it
whole: the index builder, the scorers and diverse top-k slice it like an array.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from influence.features.store_manifest import FEATURE_DTYPE


class ShardedRows:
    """A read-only [N, d] view over memory-mapped shard files, sliced by rows.

    Supports ``len``, ``.shape``, ``.dtype``, ``view[a:b]``, ``view[index_array]``,
    ``view[i]`` and ``np.asarray(view)``; only the rows asked for are read into memory.
    """

    def __init__(self, shards: Sequence[np.ndarray], shard_rows: int, dim: int):
        self._shards = list(shards)
        self._shard_rows = shard_rows
        self.shape = (sum(len(s) for s in self._shards), dim)
        self.dtype = self._shards[0].dtype if self._shards else FEATURE_DTYPE
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            rows, rest = key[0], key[1:]
            return self[rows][(slice(None),) + rest] if not np.isscalar(rows) else self[rows][rest]
        n = self.shape[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return self[np.arange(start, stop, step)]
            if stop <= start:
                return np.empty((0, self.shape[1]), dtype=self.dtype)
            first, last = start // self._shard_rows, (stop - 1) // self._shard_rows
            parts = []
            for s in range(first, last + 1):
                base = s * self._shard_rows
                parts.append(self._shards[s][max(start - base, 0): min(stop - base, self._shard_rows)])
            return np.array(parts[0]) if len(parts) == 1 else np.concatenate(parts)
        if isinstance(key, (int, np.integer)):
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"row {key} out of range for {n} rows")
            return np.array(self._shards[i // self._shard_rows][i % self._shard_rows])
        index = np.asarray(key)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = np.where(index < 0, index + n, index).astype(np.int64)
        if index.size and (index.min() < 0 or index.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        out = np.empty(index.shape + (self.shape[1],), dtype=self.dtype)
        flat, target = index.reshape(-1), out.reshape(-1, self.shape[1])
        shard_of = flat // self._shard_rows
        for s in np.unique(shard_of):
            where = np.flatnonzero(shard_of == s)
            target[where] = self._shards[s][flat[where] - s * self._shard_rows]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[0: self.shape[0]]
        return out if dtype is None else out.astype(dtype, copy=False)

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, memory-mapped shard) in order; for streaming over a pool larger than memory."""
        for s, shard in enumerate(self._shards):
            yield s * self._shard_rows, shard
