"""The cascade: a cheap selector's shortlist of N pool examples, which a costly selector then scores alone.

`--prefilter bm25:1000` ranks the whole pool by BM25 against the target and keeps the
best 1,000; LESS (or rds, ifd, any selector) then scores only those, and the final k come
from the shortlist. The shortlist is a pool of its own (its examples in pool order), so its
content fingerprint differs from the whole pool's: a LESS run over it gets its own run
directory and datastores, and its warmup trains on its share of the shortlist.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from influence.data.pools import Pool, SubsetExamples
from influence.data.targets import Target
from influence.errors import SelectionError, UnknownNameError
from influence.io import sha256_json
from influence.selectors import SELECTORS, SelectionContext, make_selector, top_k

PREFILTER_HELP = ("SELECTOR:N: a cheap selector (bm25, embed, dsir, ...) shortlists N pool examples and the "
                  "selector scores only those; the k come from the shortlist [default: off].")


@dataclass
class Prefilter:
    """The cascade's first stage: `selector` (a registered name, made with `options`) keeps its best `n`."""

    selector: str = field(metadata={"help": "The registered selector that shortlists."})
    n: int = field(metadata={"help": "How many pool examples the shortlist keeps (at least k)."})
    options: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "Keyword options for the shortlisting selector's factory (e.g. LESS settings for embed)."})

    def __post_init__(self) -> None:
        if self.selector not in SELECTORS:
            raise UnknownNameError("prefilter selector", self.selector, list(SELECTORS))
        if not isinstance(self.n, (int, np.integer)) or isinstance(self.n, bool) or self.n < 1:
            raise SelectionError(f"the prefilter's shortlist size must be a positive integer, got {self.n!r}; "
                                 "write --prefilter SELECTOR:N, e.g. bm25:1000")
        self.n = int(self.n)

    @classmethod
    def parse(cls, spec: str, options: dict[str, Any] | None = None) -> "Prefilter":
        """`SELECTOR:N` (e.g. `embed:1000`).

        Raises:
            SelectionError: not of that form, or N not a positive integer.
            UnknownNameError: SELECTOR is not a registered selector.
        """
        name, colon, count = str(spec).strip().rpartition(":")
        if not colon or not name or not count.strip().isdigit():
            raise SelectionError(f"prefilter {spec!r}: expected SELECTOR:N with N a positive integer, "
                                 "e.g. bm25:1000")
        return cls(selector=name.strip(), n=int(count), options=dict(options or {}))

    @property
    def label(self) -> str:
        """`bm25:1000`: as the prefilter is written on the command line."""
        return f"{self.selector}:{self.n}"

    def check(self, k: int, target: Any) -> None:
        """Refuse, before any work, a shortlist smaller than k or a targeted prefilter without a target.

        Raises:
            SelectionError: naming the fix.
        """
        if self.n < k:
            raise SelectionError(f"the prefilter keeps {self.n:,} examples, fewer than k={k:,}; give "
                                 f"--prefilter {self.selector}:N with N >= {k:,}")
        if not target and self.targeted:
            raise SelectionError(f"prefilter {self.selector!r} ranks against a target; pass --target (see "
                                 "`influence targets`)")

    def check_pool(self, pool_size: int) -> None:
        """Refuse a shortlist larger than the pool it is drawn from.

        Raises:
            SelectionError: N exceeds the pool.
        """
        if self.n > pool_size:
            raise SelectionError(f"the prefilter keeps {self.n:,} examples but the pool has {pool_size:,}; give "
                                 f"--prefilter {self.selector}:N with N <= {pool_size:,}, or no prefilter")

    def make(self) -> Any:
        """The shortlisting selector."""
        return make_selector(self.selector, **self.options)

    @property
    def targeted(self) -> bool:
        """Whether the prefilter ranks against a target (bm25, embed, ...), so its shortlist differs by target."""
        return bool(self.make().requires_target)

    def to_dict(self) -> dict[str, Any]:
        return {"selector": self.selector, "n": self.n}


@dataclass
class Shortlist:
    """The prefilter's N best, as a pool of their own (pool order) and where they sit in the whole pool."""

    pool: Pool
    indices: np.ndarray        # into the whole pool, ascending: shortlist position i is pool index indices[i]
    record: dict[str, Any]     # the manifest's `prefilter` entry

    def expand(self, values: np.ndarray, pool_size: int) -> np.ndarray:
        """Scores over the shortlist spread over the whole pool: NaN (never selected) elsewhere."""
        full = np.full(pool_size, np.nan)
        full[self.indices] = values
        return full


def shortlist(pool: Pool, prefilter: Prefilter, *, target: Target | None = None, seed: int = 0) -> Shortlist:
    """Score `pool` with the prefilter's selector and keep its best N (ties by id, as every top-k).

    Raises:
        SelectionError: N exceeds the pool, the prefilter needs a target, or it scores fewer than N examples.
    """
    prefilter.check_pool(len(pool))
    selector = prefilter.make()
    if selector.requires_target and target is None:
        raise SelectionError(f"prefilter {prefilter.selector!r} ranks against a target; pass --target")
    start = time.perf_counter()
    result = selector.score(pool, SelectionContext(target=target, seed=seed, k=prefilter.n))
    values = np.asarray(result.values, dtype=np.float64)
    if values.shape != (len(pool),):
        raise SelectionError(f"prefilter {prefilter.selector!r} returned {values.shape} scores for {len(pool)} "
                             "examples")
    best = top_k(values, pool.ids, prefilter.n)
    keep = np.sort(best)
    short = Pool(examples=SubsetExamples(pool.examples, keep.tolist()), sources=pool.sources,
                 duplicates=pool.duplicates)
    ids = pool.ids
    record = {**prefilter.to_dict(), "params": selector.params(), "pool_size": len(pool),
              "seconds": round(time.perf_counter() - start, 3),
              # the shortlist's pool fingerprint: the identity its datastores are keyed by
              "fingerprint": short.fingerprint,
              "ranked_ids_sha256": sha256_json([ids[i] for i in best]),
              **({"provenance": dict(result.provenance)} if result.provenance else {})}
    return Shortlist(pool=short, indices=keep, record=record)
