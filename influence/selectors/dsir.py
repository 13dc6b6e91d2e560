"""DSIR: importance weights from hashed n-gram models of the target and the pool (Xie et al., NeurIPS 2023)."""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from influence.data.example import Example, example_text
from influence.data.pools import Pool
from influence.errors import SelectionError
from influence.scoring import subtask_rows
from influence.selectors.base import Scores, SelectionContext, Selector

SAMPLING = ("gumbel", "none")
SAMPLING_HELP = ("gumbel resamples in proportion to the importance weights (seeded, as DSIR does); none ranks by "
                 "the log weight.")
TARGET_MODELS = ("per-subtask", "pooled")
MIN_LENGTH_HELP = ("examples with fewer word-punct tokens are never drawn, as the authors' package does "
                   "(`min_example_length`, 100); 0 keeps every example")
SMOOTHING = 1e-8  # added to both bucket probabilities before the log, as the authors' package does
CHUNK = 1024      # pool examples scored at a time


class NgramBuckets:
    """The hashed bucket of every n-gram occurrence in a text, n = 1..ngrams: the features of the
    authors' `data_selection.hashed_ngram_dsir.get_ngram_counts` (lower-cased word-punct tokens,
    n-grams joined by spaces, sha256 mod buckets), as a list rather than dense counts.

    Each distinct n-gram is hashed once; the memo is cleared when it reaches `memo_size`
    entries (about 150 bytes each), which bounds memory on any pool.
    """

    def __init__(self, ngrams: int, buckets: int, memo_size: int = 1 << 20):
        # the authors' tokenizer object, imported on use: data-selection brings nltk (seconds to import)
        from data_selection.hashed_ngram_dsir import wpt

        self.tokenize = wpt.tokenize
        self.ngrams, self.buckets, self.memo_size = ngrams, buckets, memo_size
        self._memo: dict[str, int] = {}

    def __call__(self, text: str) -> list[int]:
        words = self.tokenize(text.lower())
        grams = list(words)
        for n in range(2, self.ngrams + 1):
            grams += [" ".join(words[i: i + n]) for i in range(len(words) - n + 1)]
        memo = self._memo
        if len(memo) > self.memo_size:
            memo.clear()
        for gram in set(grams).difference(memo):
            memo[gram] = int(hashlib.sha256(gram.encode("utf-8")).hexdigest(), 16) % self.buckets
        return list(map(memo.__getitem__, grams))


class _HashedCounts:
    """Every example's hashed n-gram occurrences (bucket ids), with row offsets: the sparse counts."""

    def __init__(self, texts: Iterable[str], ngrams: int, buckets: int):
        dtype = np.uint16 if buckets <= 1 << 16 else np.uint32
        ids, lengths = [], []
        featurize = NgramBuckets(ngrams, buckets)
        for text in texts:
            found = featurize(text)
            ids.append(np.asarray(found, dtype=dtype))
            lengths.append(len(found))
        self.ids = np.concatenate(ids) if ids else np.empty(0, dtype)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.buckets, self.ngrams = buckets, ngrams

    def words(self) -> np.ndarray:
        """[N] each example's token count, read back from its n-gram count as the authors'
        `get_perexample_metadata` does (n-gram occurrences plus n(n-1)/2, over n)."""
        return (np.diff(self.offsets) + self.ngrams * (self.ngrams - 1) // 2) // self.ngrams

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def total(self, rows: np.ndarray | None = None) -> np.ndarray:
        """[buckets] counts summed over `rows` (all rows when None)."""
        ids = self.ids if rows is None else np.concatenate(
            [self.ids[self.offsets[r]: self.offsets[r + 1]] for r in rows])
        return np.bincount(ids, minlength=self.buckets).astype(np.float64)

    def dot(self, weights: np.ndarray, start: int, stop: int) -> np.ndarray:
        """[stop - start, S]: the counts of rows start..stop times `weights` [S, buckets]."""
        ids = self.ids[self.offsets[start]: self.offsets[stop]]
        rows = np.repeat(np.arange(stop - start), np.diff(self.offsets[start: stop + 1]))
        return np.stack([np.bincount(rows, weights=w[ids], minlength=stop - start) for w in weights], axis=1)


def _bucket_probabilities(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total > 0 else np.zeros(len(counts))


@dataclass
class DsirSelector(Selector):
    """Scores each pool example by its DSIR log importance weight log p_target(x) / p_pool(x).

    Both distributions are bag-of-n-grams models over hashed unigrams and bigrams of the
    lower-cased, word-punct tokenized text (prompt and response), fitted on the target
    and on the raw pool; an example's log weight is the sum over its n-grams of
    log(p_target + eps) - log(p_pool + eps). The features are those of the authors' package
    (`data-selection`'s `get_ngram_counts`, with its tokenizer; a test checks the buckets
    agree), hashed once per distinct n-gram rather than per occurrence. Its `DSIR` class
    is not used: it reads and writes JSONL shard files in a cache directory, splits the
    pool over worker processes and resamples with unseeded numpy noise; here the estimator
    runs in memory over any pool (streamed too), and the resampling is reproducible from --seed.

    Like the authors' `resample`, examples under `min_length` tokens (100) are never drawn:
    their scores are NaN. The filter matters more than its name suggests: a log weight is a
    sum over n-grams, and when most n-grams are rarer in a small target than in the pool, short
    texts (log weight near zero) come first without it. Most instruction examples are shorter
    than 100 tokens (three quarters of a 1,000-example Alpaca sample); fewer long ones than k
    fail with their count, and min_length=0 turns the filter off.

    sampling="gumbel" (default, what DSIR does) adds Gumbel noise drawn from the seed to
    the log weights, so that the shared top-k draws k examples without replacement with
    probability proportional to their importance weights; sampling="none" ranks by the
    log weight itself, deterministically. target_model="per-subtask" (default) fits one
    target model per subtask and takes the max log weight over subtasks, so that a small
    subtask is not drowned by a large one, as LESS takes its max over subtasks;
    "pooled" fits one model on all target examples, as DSIR with one target.

    Memory: the pool is read once and its n-gram buckets kept, 2 bytes per n-gram occurrence
    (1.4 MB for the 5k Alpaca sample; about 1.2 GB for a million 300-word examples).
    """

    ngrams: int = 2
    buckets: int = 10000
    sampling: str = field(default=SAMPLING[0], metadata={"help": SAMPLING_HELP, "choices": SAMPLING})
    target_model: str = "per-subtask"
    min_length: int = field(default=100, metadata={"help": MIN_LENGTH_HELP})
    name: str = "dsir"
    requires_target: bool = True

    def __post_init__(self) -> None:
        if self.ngrams < 1:
            raise ValueError(f"ngrams must be >= 1 (2: unigrams and bigrams), got {self.ngrams}")
        if self.buckets < 2:
            raise ValueError(f"buckets must be >= 2, got {self.buckets}")
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got {self.sampling!r}")
        if self.target_model not in TARGET_MODELS:
            raise ValueError(f"target_model must be one of {TARGET_MODELS}, got {self.target_model!r}")
        if self.min_length < 0:
            raise ValueError(f"min_length must be >= 0 (0 keeps every example), got {self.min_length}")

    def _counts(self, examples: Iterable[Example]) -> _HashedCounts:
        return _HashedCounts((example_text(e) for e in examples), self.ngrams, self.buckets)

    def log_importance(self, pool: Pool, context: SelectionContext) -> np.ndarray:
        """[N, S] log importance weights of the pool examples under each target model (NaN: under
        min_length tokens, never drawn)."""
        target = context.target
        pool_counts = self._counts(pool.examples)
        target_counts = self._counts(target.examples)
        groups = ([rows for _, rows in subtask_rows(target.subtasks(), len(target))]
                  if self.target_model == "per-subtask" else [np.arange(len(target))])
        log_pool = np.log(_bucket_probabilities(pool_counts.total()) + SMOOTHING)
        log_diff = np.stack([np.log(_bucket_probabilities(target_counts.total(rows)) + SMOOTHING) - log_pool
                             for rows in groups])
        out = np.empty((len(pool_counts), len(groups)))
        for start in range(0, len(pool_counts), CHUNK):
            stop = min(start + CHUNK, len(pool_counts))
            out[start:stop] = pool_counts.dot(log_diff, start, stop)
        out[pool_counts.words() < self.min_length] = np.nan
        return out

    def score(self, pool: Pool, context: SelectionContext) -> Scores:
        scores = self.log_importance(pool, context).max(axis=1)
        left_out = int(np.isnan(scores).sum())
        if context.k is not None and len(scores) - left_out < context.k:
            raise SelectionError(f"dsir: only {len(scores) - left_out:,} of {len(scores):,} pool examples have "
                                 f"{self.min_length} or more word-punct tokens (the authors' filter), fewer than "
                                 f"k={context.k:,}; lower --dsir-min-length (0 keeps every example)")
        if self.sampling == "gumbel":
            scores = scores + np.random.default_rng(context.seed).gumbel(size=len(scores))
        return Scores(scores, provenance={"under_min_length": left_out})

    def params(self) -> dict[str, Any]:
        return {"ngrams": self.ngrams, "buckets": self.buckets, "hash": "sha256 mod buckets (data-selection)",
                "tokenizer": "nltk WordPunctTokenizer, lower-cased", "smoothing": SMOOTHING,
                "sampling": self.sampling, "target_model": self.target_model, "min_length": self.min_length,
                "data-selection": importlib.metadata.version("data-selection")}
