"""Select: score a pool with a selector, take the top k, write the SFT-ready files.

Every selector goes through this one path, so the JSONL records, the manifest and the
summary look the same whichever selector made them.
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from influence import distributed
from influence.algorithms import Algorithm, TopK, check_similarity_size
from influence.cascade import Prefilter, shortlist
from influence.constants import DEFAULT_SELECTION_DIR, OUTPUT_FORMATS, manifest_path, safe_name
from influence.data.contamination import (Contamination, find_contaminated, find_own_rows, has_heldout,
                                         heldout_ngrams)
from influence.data.pools import Pool, load_pool
from influence.data.readers import counted
from influence.data.targets import Target, load_target, split_record
from influence.errors import ConfigError, OutputError, SelectionError
from influence.io import (check_output_dir, check_output_file, json_bytes, jsonl_bytes, replace_together, sha256_bytes,
                          sha256_json)
from influence.less.settings import LessSettings
from influence.provenance import envelope
from influence.ranking import diverse_top_k
from influence.selectors import Scores, SelectionContext, Selector, check_k, make_selector, top_k
from influence.selectors.dsir import DsirSelector

SELECTION_ARTIFACT = "influence.selection"
SELECTION_FORMAT = 1


DIVERSE = "diverse"
DEFAULT_DIVERSITY_TAU = 0.9  # DEITA's threshold (Liu et al., ICLR 2024)


@dataclass
class Diversity:
    """Diversity-aware top-k: skip an example whose sentence embedding has cosine above `tau`
    with one already chosen. The embeddings are the `embed` selector's, stored once per pool
    under the datastore settings' run directory (`settings`: a LessSettings)."""

    tau: float = field(default=DEFAULT_DIVERSITY_TAU, metadata={
        "help": "Largest cosine allowed with an example already chosen (DEITA: 0.9)."})
    encoder: str | None = field(default=None, metadata={
        "help": "sentence-transformers directory or id; None is the bundled all-MiniLM-L6-v2."})
    batch_size: int = field(default=64, metadata={"help": "Examples per encoder batch."})
    settings: Any = field(default=None, metadata={
        "help": "LessSettings giving index_root, name, shard_rows, device and progress; None: the defaults."})

    def __post_init__(self) -> None:
        if not 0.0 < self.tau < 1.0:
            raise ConfigError(f"the diversity threshold must be a cosine in (0, 1), got {self.tau}; DEITA uses 0.9")
        if self.batch_size < 1:
            raise ConfigError(f"the encoder batch size must be at least 1, got {self.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "encoder": self.encoder}


def selector_options(name: str, settings: Any, *, length_unit: str = "chars", pooling: str = "last",
                     embed_model: str | None = None, dsir_sampling: str = DsirSelector.sampling,
                     dsir_min_length: int = DsirSelector.min_length) -> dict[str, Any]:
    """Selector `name`'s keyword options, from the LESS settings (model, datastore, device) and the rest."""
    if name == "longest":
        return {"unit": length_unit}
    if name == "dsir":
        return {"sampling": dsir_sampling, "min_length": dsir_min_length}
    if name in ("less", "ifd"):
        return {"settings": settings}
    if name == "rds":
        return {"settings": settings, "pooling": pooling}
    if name == "embed":
        return {"settings": settings, "encoder": embed_model}
    return {}


@dataclass
class Selection:
    """The chosen examples, best first, with the scores and settings that chose them."""

    pool: Pool
    indices: np.ndarray        # into pool.examples, best first
    scores: np.ndarray         # one per pool example
    selector: Selector
    k: int
    seed: int
    target: Target | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # selector-specific provenance (e.g. datastore)
    contamination: Contamination | None = None  # what the guard found in the pool as given
    target_in_pool: int = 0    # target examples whose content is also in the pool
    algorithm: dict[str, Any] = field(default_factory=lambda: TopK().to_dict())  # what chose, with its settings

    @functools.cached_property
    def examples(self) -> list:
        """The chosen examples, best first (read once, even from a streamed pool)."""
        return self.pool.take(self.indices)

    @property
    def multi_turn(self) -> int:
        """How many chosen examples are chats of more than one turn (see `Example.multi_turn`)."""
        return sum(example.multi_turn for example in self.examples)

    def default_format(self) -> str:
        """`messages` when any chosen example has more than one turn (alpaca would flatten it), else `alpaca`."""
        return "messages" if self.multi_turn else "alpaca"

    def records(self, fmt: str = "alpaca") -> list[dict]:
        """SFT-ready records with id, rank, score and selector."""
        if fmt not in OUTPUT_FORMATS:
            raise SelectionError(f"unknown format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
        out = []
        for rank, (index, example) in enumerate(zip(self.indices, self.examples), start=1):
            out.append({"id": example.id, "rank": rank, "score": float(self.scores[index]),
                        "selector": self.selector.name, **example.to_record(fmt)})
        return out

    def manifest(self, fmt: str) -> dict[str, Any]:
        return {
            **envelope(SELECTION_ARTIFACT, SELECTION_FORMAT),
            "kind": "selection",  # what readers of selection manifests key on, beside the envelope's artifact
            "selector": {"name": self.selector.name, "params": self.selector.params()},
            "algorithm": self.algorithm,
            "k": self.k,
            "seed": self.seed,
            "format": fmt,
            "pool": {
                "fingerprint": self.pool.fingerprint,
                "size": len(self.pool),
                "duplicates_removed": self.pool.duplicates,
                "sources": [{"spec": s.spec, "origin": s.origin, "read": s.read,
                             "skipped_empty": s.skipped_empty, "kept": s.kept} for s in self.pool.sources],
            },
            "target": None if self.target is None else {
                "name": self.target.name, "examples": len(self.target),
                "subtasks": len(self.target.subtasks()), "also_in_pool": self.target_in_pool,
                "fingerprint": sha256_json([e.id for e in self.target.examples]),
                **({"split": split} if (split := split_record(self.target.name)) is not None else {})},
            "contamination": None if self.contamination is None else self.contamination.manifest(),
            "selection_seconds": round(self.seconds, 3),
            "selected_ids_sha256": sha256_json([self.pool.ids[i] for i in self.indices]),
            **self.extra,
        }

    def summary(self, fmt: str | None = None) -> list[str]:
        """A few lines for the terminal: how many, lengths against the pool, and what deserves a warning
        (target examples also in the pool; chats flattened by `fmt` alpaca)."""
        def stats(lengths: list[int]) -> str:
            return (f"mean {statistics.fmean(lengths):,.0f}, median {statistics.median(lengths):,.0f}, "
                    f"max {max(lengths):,}")

        chosen = self.examples
        pool_lengths, pool_sources = [], set()
        for example in self.pool.examples:  # one pass, for a streamed pool
            pool_lengths.append(len(example.response))
            pool_sources.add(example.source)
        lines = [self.contamination.describe()] if self.contamination is not None else []
        how = "" if self.algorithm["name"] == TopK().name else f" by {self.algorithm['name']}"
        lines += [f"selected {len(chosen):,} of {counted(len(self.pool), 'example')} with {self.selector.name}{how}"
                  f" in {self.seconds:.1f}s",
                  f"  response chars, selection: {stats([len(e.response) for e in chosen])}",
                  f"  response chars, pool:      {stats(pool_lengths)}"]
        sources: dict[str, int] = {}
        for example in chosen:
            sources[example.source] = sources.get(example.source, 0) + 1
        if len(sources) > 1 or len(pool_sources) > 1:
            lines.append("  by source: " + ", ".join(f"{s} {n:,}" for s, n in sorted(sources.items())))
        if self.target_in_pool:
            lines.append(f"warning: {counted(self.target_in_pool, 'example')} of the target ({len(self.target):,}) "
                         f"{'is' if self.target_in_pool == 1 else 'are'} also in the pool, and such copies rank "
                         "first; remove them from the pool or the target")
        turns = self.multi_turn
        if turns and (fmt or self.default_format()) == "alpaca":
            lines.append(f"note: {counted(turns, 'selected example')} with several chat turns "
                         f"{'is' if turns == 1 else 'are'} written as \"User: ... Assistant: ...\" text in the "
                         "instruction (--format alpaca); --format messages keeps the turns")
        if "prefilter" in self.extra:
            kept = self.extra["prefilter"]
            lines.append(f"  prefilter: {kept['selector']} shortlisted {kept['n']:,} of {kept['pool_size']:,} in "
                         f"{kept['seconds']:.1f}s; {self.selector.name} scored only those")
        if "diversity" in self.extra:
            diversity = self.extra["diversity"]
            closest = diversity.get("closest_pair_cosine")
            lines.append(f"  diversity: skipped {diversity['skipped']:,} examples with cosine above "
                         f"{diversity['tau']} to one chosen before"
                         + (f"; the closest two picks have cosine {closest:.2f}" if closest is not None else ""))
        return lines


def decontaminate(pool: Pool, target: Target | None, *, keep: bool = False) -> tuple[Pool, Contamination | None]:
    """The contamination guard: `pool` less the examples that overlap the target's held-out items.

    Runs whenever `target` is a registered target (one with held-out evaluation items), for
    every selector, before any scoring; a target file has no held-out items and is not checked.
    A target split from a pool's own data (`flan_cot:<source>`) also loses its rows (every
    part: held out, validation, selection) by example id.
    With keep=True the overlapping examples are found and recorded but stay in the pool.

    Returns:
        The pool to score (the same object when nothing is dropped) and what was found, or
        None when there was nothing to check against.
    """
    if target is None or not has_heldout(target.name):
        return pool, None
    start = time.perf_counter()
    ngrams = heldout_ngrams(target.name)
    ids = pool.ids
    own = find_own_rows(ids, target.name)
    found = sorted(set(find_contaminated(pool.examples, ngrams)) | set(own))
    contamination = Contamination(target=target.name, heldout_items=ngrams.items, heldout_skipped=ngrams.skipped,
                                  indices=found, ids=[ids[i] for i in found], kept=keep, n=ngrams.n,
                                  min_words=ngrams.min_words, pool_fingerprint=pool.fingerprint, own_rows=len(own),
                                  template_ngrams=ngrams.template_ngrams)
    if found and not keep:
        pool = pool.without(found)
    contamination.seconds = time.perf_counter() - start
    return pool, contamination


def check_algorithm(selector: Selector, algorithm: Algorithm, *, diversity: Diversity | None = None,
                    pool_size: int | None = None, target_size: int | None = None) -> None:
    """Refuse, before any work, an algorithm the selector cannot serve or a matrix past the memory bound.

    Raises:
        SelectionError: an algorithm that needs per-target similarities with a selector that keeps
            none, or a [pool, target] matrix larger than `algorithms.SIMILARITY_BUDGET_BYTES`.
        ConfigError: diversity-aware top-k with another algorithm.
    """
    if diversity is not None and algorithm.name != TopK().name:
        raise ConfigError(f"--diversity walks the top-k ranking; it does not combine with --algorithm {algorithm.name}")
    if not algorithm.pairwise:
        return
    if not selector.pairwise:
        raise SelectionError(f"--algorithm {algorithm.name} needs per-target similarities, and selector "
                             f"{selector.name!r} gives one score per example; use less, rds, embed or bm25, or "
                             "--algorithm top-k")
    if pool_size is not None and target_size is not None:
        check_similarity_size(pool_size, target_size, bytes_per_value=algorithm.bytes_per_pair)


def select(pool: Pool, k: int, selector: Selector, *, target: Target | None = None, seed: int = 0,
           keep_contaminated: bool = False, contamination: Contamination | None = None,
           diversity: Diversity | None = None, algorithm: Algorithm | None = None,
           prefilter: Prefilter | None = None) -> Selection:
    """Score `pool` with `selector` and keep `k` by `algorithm` (default: the top k; with `diversity`,
    the top k that are not near-duplicates of a better one; every example is then scored, as the
    walk may pass k). An algorithm other than top-k is given the selector's [pool, target] similarities.

    With `prefilter` (the cascade), its selector first shortlists N examples of the cleared
    pool and `selector` scores only those; examples off the shortlist get NaN scores.

    A registered `target` turns on the contamination guard (`decontaminate`) for every
    selector, targeted or not: an untargeted selector ignores the target but its selection
    is still kept clear of the target's test items. A caller that has already run
    `decontaminate` passes its pool and `contamination`, and the guard is not run again.

    Raises:
        SelectionError: bad k, a targeted selector without a target, bad scores, or an algorithm
            the selector cannot serve (see `check_algorithm`).
    """
    k = check_k(k, len(pool))
    algorithm = algorithm or TopK()
    if selector.requires_target and target is None:
        raise SelectionError(f"selector {selector.name!r} needs a target; pass --target (see `influence targets`)")
    check_algorithm(selector, algorithm, diversity=diversity, pool_size=len(pool),
                    target_size=len(target) if target is not None else None)
    if prefilter is not None:
        prefilter.check(k, target)
    start = time.perf_counter()
    if contamination is None:
        pool, contamination = decontaminate(pool, target, keep=keep_contaminated)
    whole, short = pool, None
    if prefilter is not None:
        short = shortlist(whole, prefilter, target=target, seed=seed)
        pool = short.pool
    # the FAISS top-k scores only its candidates: enough for top-k, not for a walk or another algorithm
    if selector.whole_pool:  # `full`: every example the guard (and a prefilter) left, whatever k
        k = len(pool)
    context = SelectionContext(target=target, seed=seed, k=None if diversity or algorithm.pairwise else k,
                               pairwise=algorithm.pairwise)
    result = selector.score(pool, context)
    if not isinstance(result, Scores):
        raise SelectionError(f"selector {selector.name!r} returned {type(result).__name__}; "
                             "Selector.score must return influence.selectors.Scores")
    scores = result.values
    if scores.shape != (len(pool),):
        raise SelectionError(f"selector {selector.name!r} returned {scores.shape} scores for {len(pool)} examples")
    extra = dict(result.provenance)
    in_pool = len({e.id for e in target.examples} & set(pool.ids)) if target is not None and selector.requires_target \
        else 0
    if diversity is None:
        indices, record = algorithm.choose(scores, pool.ids, k, result.similarities)
    else:
        indices, extra["diversity"] = diverse_selection(pool, scores, k, diversity)
        record = algorithm.to_dict()
    if short is not None:  # back to the whole pool, which the manifest describes
        pool, indices, scores = whole, short.indices[indices], short.expand(scores, len(whole))
        extra["prefilter"] = short.record
    return Selection(pool=pool, indices=indices, scores=scores, selector=selector, k=k, seed=seed,
                     target=target, seconds=time.perf_counter() - start, extra=extra, contamination=contamination,
                     target_in_pool=in_pool, algorithm=record)


def diverse_selection(pool: Pool, scores: np.ndarray, k: int, diversity: Diversity) -> tuple[np.ndarray, dict]:
    """`diverse_top_k` over the pool's stored sentence embeddings (computed on first use); with its record."""
    # imported on use: the encoder and the datastore bring torch and sentence-transformers
    from influence.representations import pool_embeddings

    store = pool_embeddings(pool, diversity.settings or LessSettings(), encoder_spec=diversity.encoder,
                            batch_size=diversity.batch_size)
    indices, skipped, closest = diverse_top_k(scores, pool.ids, k, store.rows(), diversity.tau)
    return indices, {**diversity.to_dict(), "skipped": skipped,
                     "closest_pair_cosine": None if closest is None else round(closest, 4),
                     "encoder_identity": store.identity.get("encoder"), "store": str(store.path)}


def default_output_path(pool_specs: list[str], selector: str, k: int, target: str | None = None) -> Path:
    """selections/<pools>[-<target>]-<selector>-k<k>.jsonl, with names made file-safe."""
    parts = ["+".join(safe_name(s) for s in pool_specs)] + ([safe_name(target)] if target else []) + [selector, f"k{k}"]
    return DEFAULT_SELECTION_DIR / ("-".join(parts) + ".jsonl")


def check_writable(out: str | Path, overwrite: bool) -> None:
    """Fail before any work unless the selection and its manifest can both be written.

    Raises:
        OutputExistsError: either exists and overwrite is False.
        OutputError: `-` (standard output), a directory, a device, or a place that cannot be written.
    """
    if str(out) == "-":
        raise OutputError("--out - is not supported: a selection is a JSONL file plus its manifest; give a file "
                          "path (then `cat` it)")
    for path in (Path(out), manifest_path(out)):
        check_output_file(path, overwrite=overwrite)


def write_selection(selection: Selection, out: str | Path, *, fmt: str | None = None,
                    overwrite: bool = False) -> tuple[Path, Path]:
    """Write `out` (JSONL) and its manifest as one unit: both new, or (on failure) both as before.

    `fmt` None takes `selection.default_format()`: messages when a chosen chat has several turns,
    else alpaca. Returns both paths. Raises OutputExistsError or OutputError as `check_writable` does.
    """
    out = Path(out)
    check_writable(out, overwrite)
    fmt = fmt or selection.default_format()
    records = selection.records(fmt)
    data = jsonl_bytes(records)
    manifest = selection.manifest(fmt)
    manifest["output"] = {"path": out.name, "records": len(records), "sha256": sha256_bytes(data)}
    meta_path = manifest_path(out)
    replace_together({out: data, meta_path: json_bytes(manifest)})
    return out, meta_path


def echo_line(line: str, err: bool = False) -> None:
    """Print one line of a run's report to stdout (or stderr)."""
    print(line, file=sys.stderr if err else sys.stdout, flush=True)


def run_selection(pool_specs: Sequence[str], k: int, selector: str, *, seed: int = 0, fmt: str | None = None,
                  out: str | Path | None = None, overwrite: bool = False, target: str | None = None,
                  selector_options: dict[str, Any] | None = None, keep_contaminated: bool = False,
                  ignored: Sequence[str] = (), diversity: Diversity | None = None,
                  algorithm: Algorithm | None = None, prefilter: Prefilter | None = None,
                  echo: Callable[..., None] = echo_line) -> tuple[Path, Path] | None:
    """Check, load, decontaminate, select, summarise and write: `influence select` and `influence score`.

    Everything that can be refused is refused before any work. Under torchrun every rank
    loads the pool and runs the selector's `prepare` (its share of the distributed work);
    rank 0 alone selects, reports and writes.

    Args:
        pool_specs: pool names, files or hf: ids, mixed in order.
        k: how many examples to keep.
        selector: a registered selector name; `selector_options` go to its factory.
        target: a target name or file; its held-out items are kept out of the pool either way.
        out: the JSONL path [default: `default_output_path`]; its manifest goes beside it.
        fmt: alpaca, messages or prompt-completion [default: `Selection.default_format`].
        keep_contaminated: keep pool examples that share a 13-gram with the target's held-out items.
        ignored: options the user gave that do not apply to the selector, named once in a note.
        diversity: diversity-aware top-k instead of plain top-k.
        algorithm: how k are chosen from the scores [default: top-k] (`influence.algorithms`).
        prefilter: the cascade: a cheap selector's shortlist, which `selector` alone scores.
        echo: receives each report line (and `err=True` for notes and warnings).

    Returns:
        The JSONL and manifest paths on rank 0, None on the other ranks.

    Raises:
        SelectionError, OutputExistsError, UnknownNameError, DataError: bad input, before any work.
    """
    job = distributed.init_from_env()

    def say(line: str) -> None:
        if job.is_main:  # one voice per job; notes and warnings on stderr
            echo(line, err=line.startswith(("note:", "warning:")))

    k = check_k(k)
    selector_options = selector_options or {}
    chosen = make_selector(selector, **selector_options)
    if chosen.requires_target and not target:
        raise SelectionError(f"selector {selector!r} needs a target; pass --target (see `influence targets`)")
    algorithm = algorithm or TopK()
    check_algorithm(chosen, algorithm, diversity=diversity)
    if prefilter is not None:
        prefilter.check(k, target)
    label = selector if diversity is None else f"{selector}+{DIVERSE}"
    label = label if algorithm.name == TopK().name else f"{label}+{algorithm.name}"
    label = label if prefilter is None else f"{prefilter.selector}{prefilter.n}+{label}"
    out = out or default_output_path(list(pool_specs), label, k, target if chosen.requires_target else None)
    check_writable(out, overwrite)
    if "settings" in selector_options and not selector_options.get("existing_only"):
        check_output_dir(selector_options["settings"].index_root)  # where LESS keeps its datastores
    if ignored:
        say(f"note: selector {selector!r} ignores {', '.join(ignored)}")
    target_set = load_target(target) if target else None  # before the pool: a bad name fails at once
    pool = load_pool(list(pool_specs), stream=True)  # ids in memory; examples read a chunk at a time
    if target_set is not None:  # the similarity matrix's size is known now: refuse it before any scoring
        check_algorithm(chosen, algorithm, pool_size=len(pool), target_size=len(target_set))
    if prefilter is not None:
        prefilter.check_pool(len(pool))
    for line in pool.describe():
        say(line)
    if target and not chosen.requires_target and not (prefilter and prefilter.targeted):
        use = ("its held-out items are still kept out of the pool" if has_heldout(target)
               else "a target file has no held-out items to keep out")
        say(f"note: selector {selector!r} does not score against --target; {use}")
    # every rank drops the same contaminated examples, so that all of them score the same pool
    pool, contamination = decontaminate(pool, target_set, keep=keep_contaminated)
    if prefilter is not None and job.world_size > 1:
        # rank 0 draws the shortlist first, so that a model-based prefilter stores its features once
        if job.is_main:
            shortlist(pool, prefilter, target=target_set, seed=seed)
        distributed.barrier()
    if not job.is_main:  # every rank draws the same shortlist, so that all of them score the same pool
        scored = pool if prefilter is None else shortlist(pool, prefilter, target=target_set, seed=seed).pool
        chosen.prepare(scored, SelectionContext(target=target_set, seed=seed, k=k))
        return None
    selection = select(pool, k, chosen, target=target_set, seed=seed, contamination=contamination,
                       diversity=diversity, algorithm=algorithm, prefilter=prefilter)
    fmt = fmt or selection.default_format()
    for line in selection.summary(fmt):
        say(line)
    jsonl, manifest = write_selection(selection, out, fmt=fmt, overwrite=overwrite)
    say(f"wrote {jsonl} and {manifest}")
    return jsonl, manifest
