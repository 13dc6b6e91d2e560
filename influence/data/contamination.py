"""The contamination guard: find pool examples that contain a target's held-out evaluation items.

An example is contaminated when it shares a word 13-gram with a held-out item, after
lower-casing and splitting on whitespace: the test of the GPT-3 (Brown et al. 2020, app. C)
and LLaMA contamination analyses. As in GPT-3, an item shorter than 13 words is matched
whole (its full word sequence), down to 8 words; shorter items are too generic to match
("True and False is") and are not checked. A target split from a dataset (`flan_cot:<source>`)
names that dataset's texts, and an n-gram found in 3 or more of them is its shared wording
("Is the claim above correct, and can it be verified by human common sense ..."), not an
item's: it is not checked, or every row of the source would look like a copy. Such a target's
own rows are also found by example id (`find_own_rows`), whatever their length.

The held-out n-grams are kept exactly, as 64-bit hashes in a Python set (about 70 bytes
each: MMLU's 14,042 test items give about 0.9M n-grams, some 60 MB), and the pool is read
once, an example at a time, so a pool of any size is checked in bounded memory. Exact sets
fit for any held-out set up to tens of millions of n-grams, which covers every benchmark
here, so no MinHash-LSH approximation is used: LSH estimates Jaccard similarity of whole
documents and would miss a held-out item embedded in a long pool example, which is the
case the guard is for.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

from influence.data.example import Example, example_text
from influence.data.heldout import HeldOutItem
from influence.data.targets import guarded_items, registered_target, target_row_ids, target_templates

NGRAM_WORDS = 13      # GPT-3's and LLaMA's n
MIN_ITEM_WORDS = 8    # GPT-3's lower bound for n on short items
TEMPLATE_TEXTS = 3    # an n-gram in this many distinct texts of a target's dataset is its template, not an item's
KEEP_CONTAMINATED_HELP = (f"Keep pool examples that share a {NGRAM_WORDS}-gram with the target's held-out evaluation "
                          "items (by default they are dropped before scoring; either way the manifest lists them).")


def normalized_words(text: str) -> list[str]:
    """Lower-cased words split on any whitespace."""
    return text.lower().split()


def heldout_text(item: HeldOutItem) -> str:
    """What of an evaluation item may leak into training data: the question, its options and passage.

    The answer alone (a letter, a word) is too short to count.
    """
    return "\n".join([item.question, *item.choices, item.context])


def _ngram_keys(words: Sequence[str], n: int) -> Iterator[int]:
    return map(hash, zip(*(words[i:] for i in range(n))))


class HeldOutNgrams:
    """The n-grams of some held-out texts, for membership tests of pool texts.

    Keys are Python hashes of word tuples: stable within a process, which is all they are
    used for (nothing is stored); a 64-bit collision between a pool n-gram and a held-out
    one has probability about 1e-19 per pair. Items shorter than n words are found by their
    first `min_words` words, then compared whole, so a pool text is read twice, not once per
    short length. Given `templates` (every text of the dataset the items were split from),
    an n-gram found in at least `template_texts` of them is the dataset's wording ("Is the
    claim above correct, and can it be verified by human common sense and without a web
    search?") rather than an item's, and is not checked.
    """

    def __init__(self, texts: Iterable[str], *, n: int = NGRAM_WORDS, min_words: int = MIN_ITEM_WORDS,
                 templates: Iterable[str] = (), template_texts: int = TEMPLATE_TEXTS):
        if not 1 <= min_words <= n:
            raise ValueError(f"min_words must be in [1, n={n}], got {min_words}")
        self.n, self.min_words = n, min_words
        self.keys: set[int] = set()
        self.short: dict[int, set[tuple[str, ...]]] = {}  # key of the first min_words words -> short items
        self.items = self.skipped = 0
        for text in texts:
            words = normalized_words(text)
            self.items += 1
            if len(words) < min_words:
                self.skipped += 1
            elif len(words) < n:
                self.short.setdefault(hash(tuple(words[:min_words])), set()).add(tuple(words))
            else:
                self.keys.update(_ngram_keys(words, n))
        self.template_ngrams = 0
        if templates:
            found: dict[int, int] = {}
            for text in dict.fromkeys(templates):
                for key in set(_ngram_keys(normalized_words(text), n)) & self.keys:
                    found[key] = found.get(key, 0) + 1
            common = {key for key, count in found.items() if count >= template_texts}
            self.keys -= common
            self.template_ngrams = len(common)

    def overlaps(self, text: str) -> bool:
        """Whether `text` contains one of the held-out n-grams, or a short held-out item whole."""
        words = normalized_words(text)
        if not self.keys.isdisjoint(_ngram_keys(words, self.n)):
            return True
        if self.short:
            for position, key in enumerate(_ngram_keys(words, self.min_words)):
                for item in self.short.get(key, ()):
                    if tuple(words[position: position + len(item)]) == item:
                        return True
        return False


def heldout_ngrams(target: str, n: int = NGRAM_WORDS, min_words: int = MIN_ITEM_WORDS) -> HeldOutNgrams:
    """The n-grams of every item a registered target is evaluated on (held out and validation, whichever
    part `target` names), built once per process and target."""
    return _target_ngrams(registered_target(target) or target, n, min_words)


@functools.lru_cache(maxsize=4)
def _target_ngrams(name: str, n: int, min_words: int) -> HeldOutNgrams:
    return HeldOutNgrams((heldout_text(item) for item in guarded_items(name)), n=n, min_words=min_words,
                         templates=target_templates(name))


def find_own_rows(ids: Sequence[str], target: str) -> list[int]:
    """Positions of the pool examples that are a registered target's own rows, by example id."""
    own = target_row_ids(target)
    return [position for position, example_id in enumerate(ids) if example_id in own] if own else []


def has_heldout(target: str) -> bool:
    """Whether `target` names a registered target (`NAME` or `NAME:validation`), whose evaluation items
    the guard can check."""
    return registered_target(target) is not None


@dataclass
class Contamination:
    """What the guard found in a pool: the examples that overlap the target's held-out items."""

    target: str
    heldout_items: int
    heldout_skipped: int        # items under min_words, not checked
    indices: list[int]          # into the pool as it was given
    ids: list[str]
    kept: bool                  # True: found and recorded, but left in the pool (--keep-contaminated)
    n: int = NGRAM_WORDS
    min_words: int = MIN_ITEM_WORDS
    seconds: float = 0.0
    pool_fingerprint: str = ""  # the pool as given, before any example was dropped
    own_rows: int = 0           # of `ids`, those that are the target's own rows by example id (FLAN CoT targets)
    template_ngrams: int = 0    # held-out n-grams not checked: the wording of the target's whole dataset

    def manifest(self) -> dict[str, Any]:
        return {"target": self.target, "heldout_items": self.heldout_items, "heldout_skipped": self.heldout_skipped,
                "ngram_words": self.n, "min_item_words": self.min_words, "normalization": "lower-case, whitespace",
                "found": len(self.ids), "action": "kept" if self.kept else "dropped", "ids": self.ids,
                **({"own_rows_by_id": self.own_rows, "template_ngrams_skipped": self.template_ngrams,
                    "template_texts": TEMPLATE_TEXTS} if self.own_rows or self.template_ngrams else {}),
                "pool_fingerprint_before": self.pool_fingerprint, "seconds": round(self.seconds, 3)}

    def describe(self) -> str:
        if not self.ids:
            return (f"contamination guard: no pool example shares a {self.n}-gram with {self.target}'s "
                    f"{self.heldout_items:,} held-out items")
        action = "kept (--keep-contaminated)" if self.kept else "dropped before scoring"
        rows = f" or are its own rows ({self.own_rows:,} by example id)" if self.own_rows else ""
        return (f"contamination guard: {len(self.ids):,} pool example(s) share a {self.n}-gram with {self.target}'s "
                f"{self.heldout_items:,} held-out items{rows}: {action}")


def find_contaminated(examples: Iterable[Example], ngrams: HeldOutNgrams) -> list[int]:
    """Positions of the examples whose text overlaps `ngrams`, in one pass."""
    return [position for position, example in enumerate(examples) if ngrams.overlaps(example_text(example))]
