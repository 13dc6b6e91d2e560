"""Supervised fine-tuning, as a recipe: set up, train epoch by epoch, save, clean up.

    from influence.training import TrainSettings, train
    result = train("selection.jsonl", TrainSettings(epochs=2), "runs/my-run")
    result.weights_dir     # runs/my-run/adapter (peft) or runs/my-run/model (full)

The same prompt formatting and response-only loss as the rest of the toolkit
(`influence.data.formatting`). Every epoch ends in a checkpoint that keeps AdamW's moments
by parameter name and the epoch's average learning rate (what LESS's warmup needs); a rerun
on the same output directory resumes from the last complete epoch and ends with the same
weights as an uninterrupted run, because each epoch's data order is seeded from (seed, epoch)
and each micro-batch's dropout from (seed, epoch, step, micro-batch) alone. `manifest.json`
is written last: its presence means done.

Under torch.distributed (`torchrun`), every rank runs `train` on the same data: each takes
its share of every step's micro-batches, the summed gradients are all-reduced once per step,
and rank 0 alone writes checkpoints and output. Since the dropout seeds belong to the
micro-batch, not the process, N ranks train the same model as one process, up to the
order of floating-point additions.

The output directory's checks, claim and lock are `run_dir`'s; what a finished run leaves
there, and how it is read back, `outputs`'s.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from influence import distributed
from influence.data.example import Example
from influence.data.formatting import collate, encode_example
from influence.data.pools import load_pool
from influence.errors import ManifestMismatchError, TrainingError
from influence.io import sha256_file, sha256_json, write_json
from influence.lora import add_lora, lora_parameters, lora_signature
from influence.models import load_model, strip_gguf_flag
from influence.provenance import envelope, settings_difference
from influence.training.batching import epoch_seed, micro_batch_seed, plan_epoch, steps_per_epoch
from influence.training.checkpoint import (ADAPTER_DIR, CHECKPOINT_DIR, checkpoint_dir, list_checkpoints,
                                           load_checkpoint, read_state, restore_checkpoint, save_adapter,
                                           save_checkpoint, staged_directory)
from influence.training.loss import example_nll
from influence.training.outputs import MANIFEST_ARTIFACT, MANIFEST_FILE, MANIFEST_FORMAT, MODEL_DIR, TrainResult
from influence.training.run_dir import check_out_dir, finished_run, out_dir_lock, prepare_out_dir
from influence.training.settings import TrainSettings

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """The examples to train on and where they came from."""

    examples: list[Example]
    source: str | None = None        # the file or pool spec, when one was given
    file_sha256: str | None = None   # of that file

    @property
    def fingerprint(self) -> str:
        return sha256_json([e.id for e in self.examples])


def train(examples: Sequence[Example] | str | os.PathLike, config: TrainSettings | None = None,
          out_dir: str | os.PathLike = "runs/train", *, loaded: Any = None,
          overwrite: bool = False) -> TrainResult:
    """Fine-tune a model on `examples` and save the adapter (or model) with a manifest.

    Args:
        examples: Examples, or a data file / pool spec (e.g. a selection JSONL) read with load_pool.
        config: training settings; None is `TrainSettings()` (the LESS recipe, see config.py).
        out_dir: where checkpoints, the adapter or model, and manifest.json go. Rerunning on
            the same directory resumes; a finished run is returned without training again.
        loaded: a `LoadedModel` to start from instead of loading `config.model`; it is
            copied, not modified.
        overwrite: delete whatever `out_dir` holds first.

    Returns:
        TrainResult with the output directory and the manifest.

    Raises:
        TrainingError: no example has a response token left, another run holds out_dir, ...
        ManifestMismatchError: out_dir holds a run with other settings, data or model.
        OutputError: out_dir is a file or cannot be created or written.
        ConfigError, DataError, ModelError: from the settings, data or model loading.
    """
    # heavy: imported on use, not at start-up
    import torch
    from transformers import get_linear_schedule_with_warmup

    # ---- set up
    config = config or TrainSettings()
    out_dir = Path(out_dir)
    check_out_dir(out_dir)  # before the data and model are read
    data = _training_data(examples)
    if loaded is None:
        loaded = load_model(config.model)
    identity = _run_identity(config, data, loaded)
    job = distributed.current()
    with out_dir_lock(out_dir) if job.is_main else contextlib.nullcontext():
        finished = prepare_out_dir(out_dir, identity, overwrite) if job.is_main else None
        distributed.barrier()  # the other ranks see the prepared directory
        if not job.is_main:
            finished = finished_run(out_dir, identity)
        if finished is not None:
            return finished

        encoded, encoding_stats = _encode(data.examples, loaded.tokenizer, config.max_length)
        model, params = _trainable_model(loaded, config)
        device = next(model.parameters()).device
        lora_signature = _lora_signature(model, config)
        optimizer = torch.optim.AdamW([p for _, p in params], lr=config.learning_rate, betas=config.betas,
                                      eps=config.eps, weight_decay=config.weight_decay)
        per_epoch = steps_per_epoch(len(encoded), config.batch_size)
        total_steps = per_epoch * config.epochs
        scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * total_steps),
                                                    total_steps)
        history = _resume(out_dir, config, model, params, optimizer, scheduler, lora_signature)
        resumed_from = len(history)
        step = history[-1]["step"] if history else 0

        # ---- train
        lengths = [len(e.input_ids) for e in encoded]
        pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
        bar = _progress(total_steps, step, config, job)
        try:
            model.train()
            for epoch in range(resumed_from + 1, config.epochs + 1):
                started = time.perf_counter()
                plan = plan_epoch(lengths, config.batch_size, config.micro_batch_size, seed=config.seed, epoch=epoch)
                losses, lrs, nll_total, token_total = [], [], 0.0, 0
                for micro_batches in plan:
                    lr = scheduler.get_last_lr()[0]
                    seeds = [micro_batch_seed(config.seed, epoch, step, j) for j in range(len(micro_batches))]
                    nll, tokens, step_loss = _optimizer_step(model, params, optimizer, micro_batches, seeds, encoded,
                                                             pad_id, device, config.max_grad_norm, job,
                                                             config.loss_reduction)
                    scheduler.step()
                    step += 1
                    losses.append(step_loss)
                    lrs.append(lr)
                    nll_total += nll
                    token_total += tokens
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
                record = {"epoch": epoch, "step": step, "steps_in_epoch": len(plan), "avg_lr": sum(lrs) / len(lrs),
                          "mean_loss": nll_total / token_total, "tokens": token_total,
                          "seconds": round(time.perf_counter() - started, 3)}
                state = {**record, "betas": list(config.betas), "eps": config.eps,
                         "weight_decay": config.weight_decay, "method": config.method,
                         "lora_signature": lora_signature,
                         "seeds": {"seed": config.seed, "epoch_seed": epoch_seed(config.seed, epoch)},
                         "losses": losses, "learning_rates": lrs}
                if job.is_main:
                    save_checkpoint(checkpoint_dir(out_dir, epoch), model=model, params=params,
                                    optimizer=optimizer, method=config.method, state=state)
                distributed.barrier()
                history.append(record)
        finally:
            bar.close()

        # ---- save (rank 0), clean up
        model.eval()
        weights_dir = out_dir / (ADAPTER_DIR if config.method == "lora" else MODEL_DIR)
        manifest = _manifest(identity, config, data, loaded, encoding_stats, lora_signature, history, weights_dir)
        manifest_path = out_dir / MANIFEST_FILE
        if job.is_main:
            _save_output(out_dir, model, loaded, config)
            write_json(manifest_path, manifest)
            if not config.keep_checkpoints:
                shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
        del optimizer, scheduler, model
        distributed.barrier()
    return TrainResult(out_dir=out_dir, weights_dir=weights_dir, manifest_path=manifest_path, manifest=manifest,
                       checkpoints=list_checkpoints(out_dir), resumed_from_epoch=resumed_from)


# ------------------------------------------------------------------ set-up helpers
def _training_data(examples: Sequence[Example] | str | os.PathLike) -> TrainingData:
    if isinstance(examples, (str, os.PathLike)):
        spec = str(examples)
        pool = load_pool(spec)
        digest = sha256_file(spec) if Path(spec).is_file() else None
        return TrainingData(list(pool.examples), source=spec, file_sha256=digest)
    examples = list(examples)
    if not examples:
        raise TrainingError("no training examples given; pass a non-empty selection or data file")
    if not all(isinstance(e, Example) for e in examples):
        raise TrainingError("train() takes Example objects or a data file path; "
                            "read records with influence.data.load_pool")
    return TrainingData(examples)


def _run_identity(config: TrainSettings, data: TrainingData, loaded: Any) -> dict[str, Any]:
    settings = config.identity()
    settings.pop("model")
    return {"settings": settings, "data_sha256": data.fingerprint, "examples": len(data.examples),
            "model": {"spec": loaded.spec, "weights_sha256": loaded.weights_sha256}}


def _encode(examples: list[Example], tokenizer: Any, max_length: int) -> tuple[list[Any], dict[str, int]]:
    """Encode every example; drop those whose response was cut away entirely, and count both."""
    encoded, truncated, empty = [], 0, 0
    for example in examples:
        item = encode_example(example, tokenizer, max_length)
        truncated += item.truncated
        if item.response_tokens == 0:
            empty += 1
            continue
        encoded.append(item)
    if truncated:
        log.warning("%d of %d examples are longer than max_length=%d and were cut", truncated, len(examples),
                    max_length)
    if not encoded:
        raise TrainingError(f"none of the {len(examples)} examples has a response token within "
                            f"max_length={max_length}; raise max_length or check the data")
    if empty:
        log.warning("%d examples lost their whole response to max_length=%d and are skipped", empty, max_length)
    return encoded, {"examples": len(examples), "trained": len(encoded), "truncated": truncated,
                     "skipped_no_response": empty, "max_length": max_length,
                     "tokens": sum(len(e.input_ids) for e in encoded),
                     "response_tokens": sum(e.response_tokens for e in encoded)}


def _trainable_model(loaded: Any, config: TrainSettings) -> tuple[Any, list[tuple[str, Any]]]:
    """A private copy of the model, wrapped with fresh seeded LoRA (or fully trainable)."""
    # heavy: imported on use, not at start-up
    import torch

    model = copy.deepcopy(loaded.model)
    if config.method == "lora":
        torch.manual_seed(config.seed)  # the adapter's initial A matrices
        model = add_lora(model, config.lora)
        return model, lora_parameters(model)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model, [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def _lora_signature(model: Any, config: TrainSettings) -> dict[str, Any] | None:
    return lora_signature(model) if config.method == "lora" else None


def _resume(out_dir: Path, config: TrainSettings, model: Any, params: list[tuple[str, Any]], optimizer: Any,
            scheduler: Any, lora_signature: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Restore the last complete epoch, if any; returns the finished epochs' records."""
    done = [p for p in list_checkpoints(out_dir) if load_checkpoint(p, moments=False).epoch <= config.epochs]
    if not done:
        return []
    last = load_checkpoint(done[-1])
    differs = settings_difference({"lora_signature": last.lora_signature}, {"lora_signature": lora_signature})
    if differs is not None:
        raise ManifestMismatchError(f"{last.path}: LoRA parameters differ from this run's ({differs[0]}); "
                                    "use a new output directory or --overwrite")
    restore_checkpoint(last, model=model, params=params, optimizer=optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepping a scheduler without an optimizer step warns
        for _ in range(last.step):
            scheduler.step()
    log.warning("resuming %s after epoch %d (step %d)", out_dir, last.epoch, last.step)
    keys = ("epoch", "step", "steps_in_epoch", "avg_lr", "mean_loss", "tokens", "seconds")
    history = []
    for path in done:
        state = read_state(path)
        history.append({key: state[key] for key in keys})
    return history


def _progress(total: int, done: int, config: TrainSettings, job: distributed.Dist) -> Any:
    # heavy: imported on use, not at start-up (tqdm.auto brings asyncio)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="train", unit="step", disable=not (config.progress and job.is_main),
                file=sys.stderr, dynamic_ncols=True)


# ------------------------------------------------------------------ the step
def _optimizer_step(model: Any, params: list[tuple[str, Any]], optimizer: Any, micro_batches: list[list[int]],
                    seeds: list[int], encoded: list[Any], pad_id: int, device: Any, max_grad_norm: float,
                    job: distributed.Dist, loss_reduction: str = "token") -> tuple[float, int, float]:
    """One AdamW step over micro-batches.

    The loss is the mean NLL over all the step's response tokens (`loss_reduction` "token"),
    or the mean over its examples of each example's mean token NLL ("example"). Each rank
    of a job runs micro-batches rank, rank + N, ...; their gradient sums are all-reduced
    before clipping, so every rank takes the same step. Returns the step's summed NLL, its
    response-token count and the loss it minimised.
    """
    # heavy: imported on use, not at start-up
    import torch

    step_tokens = sum(encoded[i].response_tokens for batch in micro_batches for i in batch)
    step_examples = sum(len(batch) for batch in micro_batches)
    optimizer.zero_grad(set_to_none=True)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # summed NLL, the minimised loss
    for j in range(job.rank, len(micro_batches), job.world_size):
        torch.manual_seed(seeds[j])  # this micro-batch's dropout, whichever rank runs it
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in micro_batches[j]], pad_id).items()}
        nll, tokens = example_nll(model, batch)
        if loss_reduction == "example":
            loss = (nll / tokens.clamp(min=1)).sum() / step_examples
        else:
            loss = nll.sum() / step_tokens
        loss.backward()
        sums += torch.stack([nll.detach().sum(), loss.detach()]).double()
    if job.world_size > 1:
        # heavy: imported on use, not at start-up
        import torch.distributed as dist

        _all_reduce_gradients([p for _, p in params])
        dist.all_reduce(sums)  # float64: summed token losses need the precision
    nll_total = float(sums[0])
    step_loss = float(sums[1]) if loss_reduction == "example" else nll_total / step_tokens
    if not math.isfinite(nll_total):
        raise TrainingError(f"the training loss became {nll_total}; lower the learning rate")
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for _, p in params], max_grad_norm)
    optimizer.step()
    return nll_total, step_tokens, step_loss


def _all_reduce_gradients(parameters: list[Any]) -> None:
    """Sum every rank's gradients in one flat all-reduce; a rank without a micro-batch adds zeros."""
    # heavy: imported on use, not at start-up
    import torch
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1).to(torch.float32) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for parameter, grad in zip(parameters, grads):
        size = grad.numel()
        parameter.grad = flat[offset: offset + size].view_as(grad).to(grad.dtype)
        offset += size


# ------------------------------------------------------------------ saving
def _save_output(out_dir: Path, model: Any, loaded: Any, config: TrainSettings) -> Path:
    if config.method == "lora":
        target = out_dir / ADAPTER_DIR
        with staged_directory(target) as staging:
            save_adapter(model, staging)
        return target

    target = out_dir / MODEL_DIR
    strip_gguf_flag(model)
    with staged_directory(target) as staging:
        model.save_pretrained(str(staging), safe_serialization=True)
        loaded.tokenizer.save_pretrained(str(staging))
    return target


def _manifest(identity: dict[str, Any], config: TrainSettings, data: TrainingData, loaded: Any,
              encoding: dict[str, int], lora_signature: dict[str, Any] | None, history: list[dict[str, Any]],
              weights_dir: Path) -> dict[str, Any]:
    tokenizer = loaded.tokenizer
    return {
        **envelope(MANIFEST_ARTIFACT, MANIFEST_FORMAT),
        "identity": identity,
        "output": {"kind": "adapter" if config.method == "lora" else "model", "path": weights_dir.name},
        "model": {"spec": loaded.spec, "weights_sha256": loaded.weights_sha256,
                  **{k: v for k, v in loaded.info.items() if k in ("location", "dtype", "device", "num_parameters")}},
        "tokenizer": {"name_or_path": str(getattr(tokenizer, "name_or_path", "")), "vocab_size": len(tokenizer),
                      "chat_template": bool(getattr(tokenizer, "chat_template", None))},
        "data": {"source": data.source, "file_sha256": data.file_sha256, "examples_sha256": data.fingerprint,
                 **encoding},
        "config": config.to_dict(),
        "lora": {"settings": config.lora.to_dict(), "signature": lora_signature} if config.method == "lora" else None,
        "epochs": history,
        "steps": history[-1]["step"] if history else 0,
        "seconds": round(sum(epoch["seconds"] for epoch in history), 3),
    }
