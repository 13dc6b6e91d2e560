"""The LESS run: warmup, featurize pool and target at every checkpoint, score.

Layout of one run, `indexes/<name>/`:

    warmup/                          the warmup LoRA run (influence.training), per-epoch checkpoints
    features/epoch-N/pool-<grad>/    FeatureStore of the pool at checkpoint N
    features/epoch-N/target-<fp>-<grad>/   FeatureStore of one target at checkpoint N

Every step is reused when its manifest matches and resumed when it is incomplete, so
rerunning the same command after a kill, or with another target, redoes only what is missing.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from influence import distributed
from influence.constants import ADAPTER_WEIGHTS_FILE, safe_name
from influence.data.example import Example
from influence.data.formatting import formatting_identity
from influence.data.pools import Pool, example_ids, load_pool
from influence.data.targets import Target, load_target
from influence.errors import DataError, DatastoreError, ModelError, SelectionError
from influence.features import (AdamMoments, FeaturizeStats, LoraGradients, SubtaskQueries, dim_slices, featurize,
                                make_projector, query_memory_bytes, subtask_queries)
from influence.features.datastore import FeatureStore
from influence.hub import offline
from influence.io import sha256_file, sha256_json
from influence.less.estimate import ModelShape, available_memory, estimate_less, subtask_groups, token_stats
from influence.less.settings import LessSettings
from influence.lora import add_lora, lora_signature
from influence.models import hub_commit, load_model, model_commit, resolve_model
from influence.provenance import package_versions
from influence.algorithms import SUBTASK, TARGET, Similarities
from influence.scoring import (checkpoint_weights, less_scores, less_top_k, pairwise_scores, unprojected_scores,
                               unprojected_subtask_scores)
from influence.training import TrainSettings, load_adapter_weights, load_checkpoint, train

log = logging.getLogger(__name__)


@dataclass
class LessRun:
    """One run's datastores: the pool's (and a target's) features at every checkpoint and, with
    scoring=unprojected, the pool's exact cosines with the target's subtask queries (per
    checkpoint, one store per group of subtasks); once scored (`less_run`), the pool's scores."""

    workdir: Path
    checkpoints: list[dict[str, Any]]         # epoch, step, avg_lr, weight (featurized ones only)
    pool_stores: list[Path]
    target_stores: list[Path]
    stats: dict[str, Any] = field(default_factory=dict)  # featurized counts, skipped checkpoints, projector, scoring
    cosine_stores: list[list[Path]] = field(default_factory=list)
    scores: np.ndarray | None = None          # one per pool example; NaN where the FAISS search proved it out

    def provenance(self) -> dict[str, Any]:
        cosines = {"cosine_stores": [[str(p) for p in group] for group in self.cosine_stores]} \
            if self.cosine_stores else {}
        return {"datastore": {"workdir": str(self.workdir), "checkpoints": self.checkpoints,
                              "pool_stores": [str(p) for p in self.pool_stores],
                              "target_stores": [str(p) for p in self.target_stores], **cosines, **self.stats}}


def run_name(pool: Pool, settings: LessSettings) -> str:
    """A readable, content-keyed name: the pool's sources plus a hash of pool and warmup settings (and,
    for a hub model, the commit its id resolves to, so new weights under the same id get a new name)."""
    tag = "+".join(safe_name(s.spec) for s in pool.sources)[:60] or "pool"
    key: dict[str, Any] = {"pool": pool.fingerprint, "warmup": settings.warmup_identity()}
    commit = model_commit(settings.model)
    if commit is not None:
        key["model_commit"] = commit
    digest = sha256_json(key)[:10]
    return f"{tag}-{digest}"


def workdir_for(pool: Pool, settings: LessSettings) -> Path:
    return settings.index_root / (settings.name or run_name(pool, settings))


def warmup_examples(pool: Pool, settings: LessSettings) -> list[Example]:
    """The seeded random fraction of the pool that the warmup trains on, in pool order."""
    count = max(1, round(settings.warmup_fraction * len(pool)))
    chosen = np.random.default_rng(settings.seed).choice(len(pool), size=count, replace=False)
    return pool.take(sorted(chosen))


def run_warmup(pool: Pool, settings: LessSettings, *, loaded: Any = None) -> Any:
    """Train (or reuse, or resume) the warmup LoRA; returns the trainer's `TrainResult`."""
    config = TrainSettings.less_warmup(model=settings.model, lora=settings.lora, epochs=settings.warmup_epochs,
                                     learning_rate=settings.warmup_lr, batch_size=settings.warmup_batch_size,
                                     micro_batch_size=settings.warmup_micro_batch_size,
                                     loss_reduction=settings.warmup_loss_reduction,
                                     max_length=settings.max_length, seed=settings.seed, progress=settings.progress)
    return train(warmup_examples(pool, settings), config, workdir_for(pool, settings) / "warmup", loaded=loaded)


def store_dir(folder: Path, role: str, grad: str, fingerprint: str, dim: int, settings: LessSettings) -> Path:
    """`pool-adam-less` / `target-<hash>-sgd`, with `-d<dim>` for every dimension but the scored one.

    Adam features name their form, so both forms of one warmup live side by side and never mix.
    """
    label = settings.grad_label(grad)
    name = f"pool-{label}" if role == "pool" else f"target-{fingerprint[:12]}-{label}"
    return folder / (name if dim == settings.score_dim else f"{name}-d{dim}")


@dataclass(frozen=True)
class CosineJob:
    """The unprojected pass's share of a featurization: exact cosines with some target subtasks' queries.

    `queries` is called (once, and only if some shard is still to compute) to build the
    float32 [S, dim] subtask queries on the model's device (`subtask_queries`).
    """

    path: Path
    identity: dict[str, Any]
    subtasks: list[str]
    queries: Callable[[], Any]


def featurize_examples(examples: Sequence[Example], store_paths: dict[int, Path], identity: dict[str, Any], *,
                       model: Any, tokenizer: Any, projector: Any, grad_type: str, moments: AdamMoments | None,
                       settings: LessSettings, desc: str, cosines: CosineJob | None = None,
                       on_gradients: Callable[[list[int], Any], None] | None = None,
                       ) -> tuple[dict[int, FeatureStore], FeatureStore | None, FeaturizeStats]:
    """Fill (or resume, or reuse) one datastore per projection dimension with the features of `examples`,
    and with `cosines`, a float32 store of their exact cosines with the subtask queries.
    `on_gradients` sees the gradient vectors of every batch computed (see `featurize`).

    All of it comes from one pass. Work goes one shard at a time (a streamed pool is read
    shard by shard, so memory holds one shard's examples), examples sorted by
    length inside it, so a kill loses at most one shard, and a shard's bytes do not depend
    on which process computed it: under torch.distributed each rank takes its own shards of
    the same stores, and the result is identical to a single process's. Rank 0 creates and
    finalizes the stores.
    """
    # heavy: imported on use, not at start-up
    from tqdm.auto import tqdm

    job = distributed.current()
    group = job.group  # the job's lock key: a collective the first time, so every rank asks here, together
    stats = FeaturizeStats()
    ids = example_ids(examples)
    slices = dim_slices(settings.all_dims)
    wanted: dict[Any, tuple[Path, dict[str, Any], int, str]] = {
        dim: (path, {**identity, "projector": {**identity["projector"], "dims": [dim]}}, dim, "float16")
        for dim, path in store_paths.items()}
    if cosines is not None:
        wanted["cosines"] = (cosines.path, cosines.identity, len(cosines.subtasks), "float32")

    def open_stores() -> dict[Any, FeatureStore]:
        opened: dict[Any, FeatureStore] = {}
        try:
            for key, (path, own, dim, dtype) in wanted.items():
                opened[key] = FeatureStore.create(path, identity=own, example_ids=ids, dim=dim, dtype=dtype,
                                                  shard_rows=settings.shard_rows, group=group)
        except BaseException:
            for store in opened.values():
                store.close()
            raise
        return opened

    stores = open_stores() if job.is_main else {}
    distributed.barrier()
    stores = stores or open_stores()
    try:
        first = next(iter(stores.values()))
        pending = {key: set(store.pending_shards(job.rank, job.world_size)) for key, store in stores.items()}
        shards = sorted(set().union(*pending.values()))
        todo = sum(stop - start for start, stop in map(first.shard_range, shards))
        queries = cosines.queries() if cosines is not None and pending["cosines"] else None
        if todo:
            bar = tqdm(total=todo, desc=desc + (f" [rank {job.rank}]" if job.world_size > 1 else ""),
                       unit="ex", disable=not settings.progress, dynamic_ncols=True)
            for shard in shards:
                project = any(shard in pending[dim] for dim in store_paths)
                for batch in featurize(model, tokenizer, examples, projector if project else None,
                                       grad_type=grad_type, moments=moments, batch_size=settings.batch_size,
                                       max_length=settings.max_length, indices=range(*first.shard_range(shard)),
                                       stats=stats, queries=queries if shard in pending.get("cosines", ()) else None,
                                       on_gradients=on_gradients):
                    if batch.features is not None:
                        features = batch.features.numpy()
                        for dim in store_paths:
                            stores[dim].write_rows(batch.indices, features[:, slices[dim]])
                    if batch.cosines is not None:
                        stores["cosines"].write_rows(batch.indices, batch.cosines.numpy())
                    bar.update(len(batch.indices))
            bar.close()
        del queries
        distributed.barrier()
        if job.is_main:
            for store in stores.values():
                store.finalize()
        distributed.barrier()
    finally:
        for store in stores.values():
            store.close()
    if stats.truncated:
        log.warning("%s: %d of %d examples were cut at max_length=%d", desc, stats.truncated, stats.examples,
                    settings.max_length)
    made = {dim: FeatureStore.open(path, example_ids=ids) for dim, path in store_paths.items()}
    return made, FeatureStore.open(cosines.path, example_ids=ids) if cosines is not None else None, stats


def query_budget(device: Any) -> int:
    """Half the memory free now where the queries live: the GPU's on CUDA, else the machine's."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.mem_get_info(torch.device(device))[0]) // 2
    return available_memory() // 2


def _score_rates(checkpoints: list[dict[str, Any]], *, warn: bool = True) -> list[float]:
    """Each checkpoint's average learning rate; equal weights if a warmup was too short to leave zero.

    A linear schedule with warmup starts at 0, so a warmup of a single step records 0. `warn`:
    say so (once per run: the features' weights are computed first, the scores read them again).
    """
    rates = [float(c["avg_lr"]) for c in checkpoints]
    if not any(rate > 0 for rate in rates):
        if warn:
            log.warning("every warmup checkpoint has learning rate 0 (a warmup of one step?); weighting them "
                        "equally")
        return [1.0] * len(rates)
    return rates


def _weighted_checkpoints(checkpoints: list[Any]) -> tuple[list[Any], list[dict[str, Any]]]:
    """The checkpoints worth featurizing, and a record of those skipped.

    A checkpoint with learning rate 0 (a short warmup's first epoch: one step at the
    schedule's start) weighs 0 in every score, so its features would be work for nothing;
    it is skipped unless every checkpoint has rate 0 (then all are weighted equally).
    """
    if not any(float(c.avg_lr) > 0 for c in checkpoints):
        return checkpoints, []
    kept, skipped = [], []
    for ckpt in checkpoints:
        if float(ckpt.avg_lr) > 0:
            kept.append(ckpt)
            continue
        log.warning("skipping warmup checkpoint of epoch %d (step %d): its learning rate is 0, so its scores "
                    "would weigh 0", ckpt.epoch, ckpt.step)
        skipped.append({"epoch": ckpt.epoch, "step": ckpt.step, "avg_lr": float(ckpt.avg_lr),
                        "reason": "learning rate 0: weight 0 in every score"})
    return kept, skipped


def cosine_dir(folder: Path, pool_grad: str, target_grad: str, target_fp: str, group: Sequence[str]) -> Path:
    """`cosines-<pool grad>-<target hash>-<target grad>-<subtasks hash>`: one group's exact cosines."""
    return folder / f"cosines-{pool_grad}-{target_fp[:12]}-{target_grad}-{sha256_json(list(group))[:8]}"


def build_features(pool: Pool, target: Target | None, settings: LessSettings, *, loaded: Any = None,
                   existing_only: bool = False) -> LessRun:
    """Warmup, then the pool's (and the target's) features at each checkpoint; reuses what exists.

    With scoring=unprojected and a target, the pool pass takes the exact cosines with the
    target's subtask queries (full dimension, no projection) and writes projected features
    only with settings.store_features. The queries are held in memory during the pool pass;
    when all of them would take more than half the memory free, the subtasks are split
    into groups, one pool pass each (a warning says how many).

    Raises:
        DataError: the target has no examples.
        DatastoreError: with existing_only, a datastore is missing or incomplete.
        ManifestMismatchError: a datastore of that name was made under other settings or pool.
        ConfigError: with scoring=unprojected, a single subtask's query does not fit in memory.
    """
    if target is not None and not len(target):
        raise DataError(f"target {target.name} has no examples")
    workdir = workdir_for(pool, settings)
    if existing_only and not (workdir / "warmup" / "manifest.json").exists():
        raise DatastoreError(f"no finished warmup under {workdir}; run `influence featurize` with the same "
                             "pool and settings first")
    loaded = loaded or load_model(settings.model, device=settings.device)
    model = add_lora(copy.deepcopy(loaded.model), settings.lora).eval()
    device = next(model.parameters()).device
    dim = LoraGradients(model).dim
    unprojected = settings.scoring == "unprojected" and target is not None
    write_features = not unprojected or settings.store_features
    groups: list[list[str]] = []
    if unprojected:
        names = list(target.subtasks())
        groups = subtask_groups(names, dim, query_budget(device))  # before any work: fails fast
        if len(groups) > 1:
            log.warning("the %d subtask queries of the unprojected score need %.1f GB, more than half the memory "
                        "free: the pool is passed %d times, %d subtasks each", len(names),
                        query_memory_bytes(len(names), dim) / 1e9, len(groups), len(groups[0]))
    warm = run_warmup(pool, settings, loaded=loaded)  # under torch.distributed, every rank trains its share
    checkpoints = [load_checkpoint(path) for path in warm.checkpoints]

    projector = make_projector(settings.projector, dim, settings.all_dims, settings.seed, device=device)
    common = {"model": {"spec": loaded.spec, "weights_sha256": loaded.weights_sha256},
              "lora": settings.lora.to_dict(), "lora_signature": lora_signature(model)["sha256"],
              "projector": projector.describe(), "max_length": settings.max_length, "dtype": "float16",
              "formatting": formatting_identity(loaded.tokenizer),
              "versions": {k: v for k, v in package_versions().items() if k in ("influence", "torch")}}
    target_fp = sha256_json([e.id for e in target.examples]) if target is not None else ""
    roles = [("pool", pool.examples, settings.pool_grad, pool.fingerprint)]
    if target is not None:  # the target first: its pass can also form the unprojected score's queries
        roles.insert(0, ("target", target.examples, settings.target_grad, target_fp))
    stores: dict[str, list[Path]] = {"pool": [], "target": []}  # the scored dimension's
    extra: dict[str, list[str]] = {"pool": [], "target": []}       # the other dimensions'
    cosine_stores: list[list[Path]] = []

    totals = {role: FeaturizeStats() for role, *_ in roles}
    summary = []
    checkpoints, skipped = _weighted_checkpoints(checkpoints)
    for ckpt in checkpoints:
        load_adapter_weights(model, ckpt.adapter_dir)
        checkpoint_id = {"epoch": ckpt.epoch, "step": ckpt.step,
                         "adapter_sha256": sha256_file(ckpt.adapter_dir / ADAPTER_WEIGHTS_FILE)}
        moments = AdamMoments.from_checkpoint(ckpt, form=settings.adam_form)
        folder = workdir / "features" / f"epoch-{ckpt.epoch}"
        jobs = [_cosine_job(folder, group, common, checkpoint_id, pool, target, target_fp, model, loaded.tokenizer,
                            moments, settings, totals["target"]) for group in groups]
        found = None
        if write_features and len(jobs) == 1:  # the target pass that projects also forms the queries
            found = SubtaskQueries(target.subtasks(), len(target), dim, device)
            jobs[0] = _reuse_queries(jobs[0], found)
        if existing_only:
            _require_complete([p for role, _, grad, fp in roles for p in
                               ([store_dir(folder, role, grad, fp, d, settings) for d in settings.all_dims]
                                if write_features else [])] + [job.path for job in jobs])
        cosine_stores.append([job.path for job in jobs])
        for role, examples, grad, fingerprint in roles:
            passes = [None] if write_features else []
            if role == "pool":  # the first group's cosines come from the pass that writes features
                passes = jobs if not write_features else [jobs[0] if jobs else None] + jobs[1:]
            for n, job in enumerate(passes):
                with_features = write_features and n == 0
                paths = {dim: store_dir(folder, role, grad, fingerprint, dim, settings)
                         for dim in settings.all_dims} if with_features else {}
                identity = {**common, "checkpoint": checkpoint_id, "grad_type": grad, "role": role,
                            "examples": fingerprint, **({"adam_form": settings.adam_form} if grad == "adam" else {})}
                made, _, stats = featurize_examples(
                    examples, paths, identity, model=model, tokenizer=loaded.tokenizer, projector=projector,
                    grad_type=grad, moments=moments if grad == "adam" else None, settings=settings,
                    desc=f"features epoch {ckpt.epoch} {role} ({settings.grad_label(grad)})"
                    + (" and exact cosines" if job else ""),
                    cosines=job, on_gradients=found.add if found is not None and role == "target" else None)
                if with_features:
                    stores[role].append(made[settings.score_dim].path)
                    extra[role].extend(str(made[dim].path) for dim in settings.all_dims[1:])
                totals[role].add(stats)  # in place: the cosine jobs add the target's query passes to it too
        summary.append({"epoch": ckpt.epoch, "step": ckpt.step, "avg_lr": ckpt.avg_lr})
    for entry, weight in zip(summary, checkpoint_weights(_score_rates(summary))):
        entry["weight"] = float(weight)
    return LessRun(workdir=workdir, checkpoints=summary, pool_stores=stores["pool"],
                   target_stores=stores["target"], cosine_stores=cosine_stores if unprojected else [],
                   stats={"featurized": {role: s.to_dict() for role, s in totals.items()},
                          "warmup": {"dir": str(warm.out_dir), "seconds": float(warm.manifest.get("seconds", 0.0))},
                          **({"skipped_checkpoints": skipped} if skipped else {}),
                          "model": {"spec": loaded.spec, "location": loaded.info.get("location"),
                                    "weights_sha256": loaded.weights_sha256},
                          "projector": projector.describe(), "scored_dim": settings.score_dim,
                          **({"other_dim_stores": extra} if len(settings.all_dims) > 1 else {}),
                          **({"unprojected": {"subtask_groups": len(groups), "lora_params": dim,
                                              "query_bytes": query_memory_bytes(len(groups[0]), dim)}}
                             if unprojected else {})})


def _require_complete(paths: Sequence[Path]) -> None:
    for path in paths:
        if not (FeatureStore.exists(path) and FeatureStore.open(path).is_complete):
            raise DatastoreError(f"{path} is missing or incomplete; run `influence featurize` with the same pool, "
                                 "target and settings first")


def _cosine_job(folder: Path, group: list[str], common: dict[str, Any], checkpoint_id: dict[str, Any], pool: Pool,
                target: Target, target_fp: str, model: Any, tokenizer: Any, moments: AdamMoments,
                settings: LessSettings, target_stats: FeaturizeStats) -> CosineJob:
    """One group of subtasks' share of the unprojected pool pass at one checkpoint; forming its
    queries counts as featurizing the target (`target_stats`)."""
    rows = target.subtasks()
    identity = {key: value for key, value in common.items() if key not in ("projector", "dtype")}
    identity.update({"checkpoint": checkpoint_id, "role": "pool-cosines", "grad_type": settings.pool_grad,
                     "target_grad_type": settings.target_grad, "examples": pool.fingerprint, "target": target_fp,
                     "subtasks": list(group), "dtype": "float32"})
    if "adam" in (settings.pool_grad, settings.target_grad):
        identity["adam_form"] = settings.adam_form

    def queries() -> Any:
        # heavy: imported on use, not at start-up
        from tqdm.auto import tqdm

        wanted = {name: rows[name] for name in group}
        count = len({i for members in wanted.values() for i in members})
        label = settings.grad_label(settings.target_grad)
        with tqdm(total=count, desc=f"features {folder.name.replace('-', ' ')} target ({label}) queries", unit="ex",
                  disable=not settings.progress, dynamic_ncols=True) as bar:
            return subtask_queries(model, tokenizer, target.examples, wanted, grad_type=settings.target_grad,
                                   moments=moments if settings.target_grad == "adam" else None,
                                   batch_size=settings.batch_size, max_length=settings.max_length,
                                   stats=target_stats, progress=bar.update)

    path = cosine_dir(folder, settings.grad_label(settings.pool_grad), settings.grad_label(settings.target_grad),
                      target_fp, group)
    return CosineJob(path=path, identity=identity, subtasks=list(group), queries=queries)


def _reuse_queries(job: CosineJob, found: SubtaskQueries) -> CosineJob:
    """`job`, taking its queries from `found` when the target pass formed them all (a resumed or
    distributed target pass sees only some examples: then they are computed anew)."""
    def queries() -> Any:
        if found.complete:
            return found.queries
        found.queries = None  # free the partial sums before forming the queries anew
        return job.queries()

    return replace(job, queries=queries)


def score_features(features: LessRun, pool: Pool, target: Target, settings: LessSettings, *,
                   k: int | None = None, memory_bytes: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """LESS scores from a run's features: exact for every example, or NaN outside the FAISS candidates.

    With cosine stores (scoring=unprojected), the scores are the exact unprojected ones,
    computed from them for every example. A flat index holds the whole pool in float32;
    when that would take more than `memory_bytes` (default: half the memory available now),
    scoring falls back to exact chunked scoring over the memory-mapped features, which needs
    a block at a time.
    """

    lrs = _score_rates(features.checkpoints, warn=False)
    subtasks = target.subtasks()
    if settings.scoring == "unprojected" and features.cosine_stores:
        cosines = [[FeatureStore.open(p).rows() for p in group] for group in features.cosine_stores]
        return unprojected_scores(cosines, lrs), {"method": "unprojected", "subtasks": len(subtasks),
                                                  "passes": len(features.cosine_stores[0])}
    pool_rows = [FeatureStore.open(p).rows() for p in features.pool_stores]
    target_rows = [np.asarray(FeatureStore.open(p).rows()[:]) for p in features.target_stores]
    method = settings.scoring if k is not None and settings.scoring != "unprojected" else "exact"
    flat_bytes = len(pool) * sum(int(rows.shape[1]) for rows in pool_rows) * 4
    budget = available_memory() // 2 if memory_bytes is None else memory_bytes
    if method == "faiss" and settings.index == "flat" and flat_bytes > budget:
        log.warning("a flat index of this pool needs %.1f GB, more than the %.1f GB budget; scoring every "
                    "example exactly in chunks instead (or pass --index ivf-pq)", flat_bytes / 1e9, budget / 1e9)
        method = "exact"
    if method == "faiss":
        on_gpu = str(settings.device or "").startswith("cuda")
        margin = 3 * k if settings.index == "ivf-pq" else None  # PQ codes misorder near the cut: rescore more hits
        found = less_top_k(pool_rows, target_rows, lrs, subtasks, k, ids=pool.ids, index_kind=settings.index,
                           margin=margin, device="gpu" if on_gpu else "auto")
        scores = np.full(len(pool), np.nan)
        scores[found.candidates] = found.candidate_scores
        return scores, {"method": "faiss", "index": settings.index, "candidates": int(len(found.candidates)),
                        "exact": bool(found.exact), "searched_k": int(found.searched_k), "subtasks": len(subtasks)}
    return less_scores(pool_rows, target_rows, lrs, subtasks), {"method": "exact", "subtasks": len(subtasks)}


def similarity_matrix(features: LessRun, pool: Pool, target: Target, settings: LessSettings
                      ) -> tuple[Similarities, dict[str, Any]]:
    """The scores before LESS's aggregation, for the selection algorithms: [pool, target example]
    from stored features, or [pool, subtask] from the exact cosines (scoring=unprojected keeps
    subtask-mean target gradients only, so no per-example similarity exists there)."""
    lrs = _score_rates(features.checkpoints, warn=False)
    subtasks = target.subtasks()
    if settings.scoring == "unprojected" and features.cosine_stores:
        cosines = [[FeatureStore.open(p).rows() for p in group] for group in features.cosine_stores]
        names = [name for p in features.cosine_stores[0] for name in FeatureStore.open(p).identity["subtasks"]]
        values = unprojected_subtask_scores(cosines, lrs)
        return (Similarities(values, SUBTASK, tuple(names), {name: [i] for i, name in enumerate(names)}),
                {"method": "unprojected", "matrix": "pool x subtask", "subtasks": len(names)})
    pool_rows = [FeatureStore.open(p).rows() for p in features.pool_stores]
    target_rows = [np.asarray(FeatureStore.open(p).rows()[:]) for p in features.target_stores]
    values = pairwise_scores(pool_rows, target_rows, lrs)
    return (Similarities(values, TARGET, tuple(e.id for e in target.examples), subtasks),
            {"method": "exact", "matrix": "pool x target example", "subtasks": len(subtasks)})


def less_run(pool: Pool, target: Target, settings: LessSettings, *, k: int | None = None,
             loaded: Any = None, existing_only: bool = False) -> LessRun:
    """Warmup, featurize and score; reuses every piece already on disk.

    With settings.scoring == "faiss" and k given, only the candidates of one FAISS top-k
    search per subtask are scored (exactly), and every other example gets NaN: the
    union of those searches provably holds the exact top k.
    """
    features = build_features(pool, target, settings, loaded=loaded, existing_only=existing_only)
    scores, scoring = score_features(features, pool, target, settings, k=k)
    return replace(features, scores=scores, stats={**features.stats, "scoring": scoring})


def print_estimate(pool_specs: Sequence[str], target: str | None, settings: LessSettings, *,
                   echo: Callable[[str], None] = print, shortlist: int | None = None) -> Any:
    """The dry run of featurize and select: load the pool's ids, estimate, report; nothing is written.

    `shortlist`: a cascade's N; LESS then runs over N examples of the pool's lengths, and only
    those are priced (the prefilter's own pass is not).
    Returns the estimate after `echo` has received the pool's description and its lines.

    Raises:
        SelectionError: a shortlist larger than the pool.
    """
    pool = load_pool(list(pool_specs), stream=True)  # ids in memory; examples read a chunk at a time
    for line in pool.describe():
        echo(line)
    if shortlist is not None and shortlist > len(pool):
        raise SelectionError(f"the prefilter keeps {shortlist:,} examples but the pool has {len(pool):,}; give "
                             f"N <= {len(pool):,}")
    estimate = dry_run(pool, load_target(target) if target else None, settings, shortlist=shortlist)
    if shortlist is not None:
        echo(f"cascade: LESS scores a shortlist of {shortlist:,} of the pool's {len(pool):,} examples, priced at "
             "the pool's lengths; the prefilter's own pass is not priced")
    for line in estimate.lines():
        echo(line)
    return estimate


def model_config_and_tokenizer(model: str | None) -> tuple[Any, Any]:
    """A model's transformers config and tokenizer, never its weights: what estimates need."""
    # heavy: imported on use, not at start-up
    from transformers import AutoConfig, AutoTokenizer

    location, identity = resolve_model(model)
    local_only, revision = Path(location).is_dir() or offline(), hub_commit(identity)
    try:
        return (AutoConfig.from_pretrained(location, local_files_only=local_only, revision=revision),
                AutoTokenizer.from_pretrained(location, local_files_only=local_only, revision=revision))
    except OSError as exc:
        raise ModelError(f"cannot read model {model!r} for an estimate: {str(exc).splitlines()[0]}") from None


def dry_run(pool: Pool, target: Target | None, settings: LessSettings, *, shortlist: int | None = None) -> Any:
    """Estimate a LESS run's time, disk and memory from sizes alone: loads the model's config and
    tokenizer, never its weights, and writes nothing. `shortlist`: price N examples of the pool's
    lengths instead of the whole pool (a cascade's LESS pass)."""
    config, tokenizer = model_config_and_tokenizer(settings.model)
    lengths: Any = pool.examples
    if shortlist is not None:
        lengths = token_stats(pool.examples, tokenizer=tokenizer, max_length=settings.max_length,
                              seed=settings.seed).scaled(shortlist)
    return estimate_less(lengths, target.examples if target is not None else [], settings,
                         shape=ModelShape.from_config(config, settings.lora), tokenizer=tokenizer)
