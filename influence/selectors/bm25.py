"""BM25: lexical relevance of each pool example to the target (Robertson & Zaragoza 2009; a LESS baseline)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import bm25s
import numpy as np
from bm25s.tokenization import Tokenizer

from influence.algorithms import TARGET, Similarities
from influence.data.example import example_text
from influence.data.pools import Pool
from influence.scoring import mean_max_over_subtasks
from influence.selectors.base import Scores, SelectionContext, Selector

BM25_METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
STEMMERS = ("english", "none")     # Snowball stemmers through PyStemmer
STOPWORDS = ("en", "none")         # bm25s's English list
TOKEN_PATTERN = r"(?u)\b\w\w+\b"   # bm25s's default: words of two or more characters
CHUNK = 2048                       # pool examples tokenized at a time

# bm25s sets its logger to DEBUG on import; let it follow the root level (-v) like every other logger
logging.getLogger("bm25s").setLevel(logging.NOTSET)


@dataclass
class Bm25Selector(Selector):
    """Scores each pool example by its BM25 relevance to the target examples, aggregated as LESS.

    The target examples are the queries and the pool is the corpus, as a retrieval baseline
    ranks training data for a few validation examples: term weights (IDF) and length
    normalisation come from the pool, the collection being ranked, so a target word that
    is rare in the pool counts for more and a long pool example does not win by length.
    Each side is read whole (prompt and response), lower-cased, split into words of two or
    more characters, English stop words removed, Snowball-stemmed. An example's score is
    the mean BM25 over each subtask's target examples, then the max over subtasks.

    Memory: the pool's token ids and the BM25 index (both about the pool's size in tokens),
    plus one [pool, target] float32 score matrix.
    """

    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    stemmer: str = "english"
    stopwords: str = "en"
    name: str = "bm25"
    requires_target: bool = True
    pairwise: bool = True

    def __post_init__(self) -> None:
        if not self.k1 >= 0:
            raise ValueError(f"k1 must be >= 0, got {self.k1}")
        if not 0 <= self.b <= 1:
            raise ValueError(f"b must be in [0, 1], got {self.b}")
        for value, allowed, what in ((self.method, BM25_METHODS, "method"), (self.stemmer, STEMMERS, "stemmer"),
                                     (self.stopwords, STOPWORDS, "stopwords")):
            if value not in allowed:
                raise ValueError(f"{what} must be one of {allowed}, got {value!r}")

    def _tokenizer(self) -> Tokenizer:
        stemmer = None
        if self.stemmer != "none":
            import Stemmer  # optional: PyStemmer, the stemmer bm25s takes, imported on use

            stemmer = Stemmer.Stemmer(self.stemmer)
        return Tokenizer(lower=True, splitter=TOKEN_PATTERN, stemmer=stemmer,
                         stopwords=[] if self.stopwords == "none" else self.stopwords)

    def score(self, pool: Pool, context: SelectionContext) -> Scores:
        tokenizer = self._tokenizer()
        corpus: list[list[int]] = []
        chunk: list[str] = []
        for example in pool.examples:  # one pass, a chunk of text at a time (streamed pools too)
            chunk.append(example_text(example))
            if len(chunk) == CHUNK:
                corpus += tokenizer.tokenize(chunk, update_vocab=True, return_as="ids", show_progress=False)
                chunk = []
        if chunk:
            corpus += tokenizer.tokenize(chunk, update_vocab=True, return_as="ids", show_progress=False)
        index = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        index.index((corpus, tokenizer.get_vocab_dict()), show_progress=False)
        del corpus
        target = context.target
        queries = tokenizer.tokenize([example_text(e) for e in target.examples], update_vocab="never",
                                     return_as="ids", show_progress=False)
        # bm25s gives a text with no known word the empty token "", which every empty pool example
        # holds too: drop it, so that such a query scores 0 everywhere rather than favour empty examples
        empty = tokenizer.get_vocab_dict().get("")
        per_target = np.zeros((len(pool), len(queries)), dtype=np.float32)
        for column, query in enumerate(queries):
            query = [token for token in query if token != empty]
            if query:
                per_target[:, column] = index.get_scores(query)
        similarities = None
        if context.pairwise:  # BM25 has no upper bound: not a cosine
            similarities = Similarities(per_target, TARGET, tuple(e.id for e in target.examples), target.subtasks(),
                                        bounded=False)
        return Scores(mean_max_over_subtasks(per_target, target.subtasks()), similarities=similarities)

    def params(self) -> dict[str, Any]:
        return {"k1": self.k1, "b": self.b, "method": self.method, "tokenizer": f"bm25s regex {TOKEN_PATTERN}, lower",
                "stemmer": self.stemmer, "stopwords": self.stopwords, "query": "target examples",
                "corpus": "pool examples", "aggregation": "mean over subtask, max over subtasks",
                "bm25s": bm25s.__version__}
