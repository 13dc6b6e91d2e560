"""Supervised fine-tuning, as a recipe: set up, train, save, clean up, on Hugging Face `accelerate`.

    from influence.training import TrainSettings, train
    result = train("selection.jsonl", TrainSettings(epochs=2), "runs/my-run")
    result.weights_dir     # runs/my-run/adapter (peft) or runs/my-run/model (full)

The same prompt formatting and response-only loss as the rest of the toolkit
(`influence.data.formatting`). Every epoch ends in a checkpoint that keeps AdamW's moments
by parameter name and the epoch's average learning rate (what LESS's warmup needs); with
`save_steps` there are checkpoints mid-epoch too. A rerun on the same output directory
resumes from the newest checkpoint and ends with the same weights as an uninterrupted run:
each epoch's data order is seeded from (seed, epoch) and each micro-batch's dropout from
(seed, epoch, step, micro-batch) alone, so a resumed run replays the same batches and draws
without any saved sampler or RNG state. `manifest.json` is written last: its presence means done.

accelerate owns the devices and the processes: under `accelerate launch` or `torchrun` the
model is wrapped for DDP or FSDP (accelerate's config), each rank runs its share of every
step's micro-batches, gradients are reduced in the last backward of the step, and rank 0
alone writes checkpoints (full tensors gathered from every rank) and output. Since the
dropout seeds belong to the micro-batch, not the process, N ranks train the same model as
one process, up to the order of floating-point additions. Trained weights are float32
master copies; bf16 runs autocast over them.

The output directory's checks, claim and lock are `run_dir`'s; what a finished run leaves
there, and how it is read back, `outputs`'s; the trackers, `tracking`'s.
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
from dataclasses import dataclass, field
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
from influence.training.checkpoint import (ADAPTER_DIR, CHECKPOINT_DIR, TrainingState, checkpoint_dir,
                                           gather_training_state, latest_checkpoint, list_checkpoints, read_state,
                                           restore_checkpoint, save_adapter, save_checkpoint, staged_directory,
                                           step_checkpoint_dir, step_checkpoints)
from influence.training.loss import example_nll
from influence.training.outputs import MANIFEST_ARTIFACT, MANIFEST_FILE, MANIFEST_FORMAT, MODEL_DIR, TrainResult
from influence.training.run_dir import check_out_dir, finished_run, out_dir_lock, prepare_out_dir
from influence.training.settings import TrainSettings
from influence.training.tracking import LOGS_DIR, check_tracker, finish_tracking, start_tracking, tracker_names

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


@dataclass
class EpochProgress:
    """The running epoch's tallies: what a mid-epoch checkpoint saves and a resume restores."""

    epoch: int
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    nll_total: float = 0.0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def done(self) -> int:
        """Optimizer steps of this epoch taken."""
        return len(self.losses)

    def add(self, loss: float, lr: float, nll: float, tokens: int) -> None:
        self.losses.append(loss)
        self.learning_rates.append(lr)
        self.nll_total += nll
        self.tokens += tokens

    def record(self, step: int, steps_in_epoch: int) -> dict[str, Any]:
        """The epoch's line in the manifest (so far, for a mid-epoch checkpoint)."""
        return {"epoch": self.epoch, "step": step, "steps_in_epoch": steps_in_epoch,
                "avg_lr": sum(self.learning_rates) / len(self.learning_rates),
                "mean_loss": self.nll_total / self.tokens, "tokens": self.tokens, "seconds": round(self.seconds, 3)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "EpochProgress":
        return cls(epoch=state["epoch"], losses=list(state["losses"]), learning_rates=list(state["learning_rates"]),
                   nll_total=state["nll_total"], tokens=state["tokens"], seconds=state["seconds"])


def train(examples: Sequence[Example] | str | os.PathLike, config: TrainSettings | None = None,
          out_dir: str | os.PathLike = "runs/train", *, loaded: Any = None,
          overwrite: bool = False) -> TrainResult:
    """Fine-tune a model on `examples` and save the adapter (or model) with a manifest.

    Args:
        examples: Examples, or a data file / pool spec (e.g. a selection JSONL) read with load_pool.
        config: training settings; None is `TrainSettings()` (the LESS recipe, see settings.py).
        out_dir: where checkpoints, the adapter or model, logs and manifest.json go. Rerunning on
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
        ConfigError, DataError, ModelError: from the settings (a tracker not installed), data or model loading.
    """
    # heavy: imported on use, not at start-up
    import torch
    from transformers import get_linear_schedule_with_warmup

    # ---- set up
    config = config or TrainSettings()
    out_dir = Path(out_dir)
    check_out_dir(out_dir)  # before the data and model are read
    check_tracker(config.report_to)
    data = _training_data(examples)
    if loaded is None:
        loaded = load_model(config.model)
    identity = _run_identity(config, data, loaded)
    job = distributed.init_from_env()  # a script under `accelerate launch` may not have joined the group yet
    with out_dir_lock(out_dir) if job.is_main else contextlib.nullcontext():
        finished = prepare_out_dir(out_dir, identity, overwrite) if job.is_main else None
        distributed.barrier()  # the other ranks see the prepared directory
        if not job.is_main:
            finished = finished_run(out_dir, identity)
        if finished is not None:
            return finished

        encoded, encoding_stats = _encode(data.examples, loaded.tokenizer, config.max_length)
        accelerator = _accelerator(config, loaded, out_dir)
        try:
            model, lora_signature = _trainable_model(loaded, config)
            model = accelerator.prepare_model(model)
            optimizer = accelerator.prepare_optimizer(torch.optim.AdamW(
                [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, betas=config.betas,
                eps=config.eps, weight_decay=config.weight_decay))
            per_epoch = steps_per_epoch(len(encoded), config.batch_size)
            total_steps = per_epoch * config.epochs
            warmup_steps = math.ceil(config.warmup_ratio * total_steps)
            scheduler = get_linear_schedule_with_warmup(optimizer.optimizer, warmup_steps, total_steps)
            history, running, step = _resume(out_dir, config, model, optimizer.optimizer, scheduler, lora_signature,
                                             total_steps)
            resumed_epochs, resumed_step = len(history), step
            start_tracking(accelerator, out_dir, config.to_dict())

            # ---- train
            lengths = [len(e.input_ids) for e in encoded]
            pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
            bar = _progress(total_steps, step, config, job)
            gathered = None
            try:
                model.train()
                for epoch in range(len(history) + 1, config.epochs + 1):
                    plan = plan_epoch(lengths, config.batch_size, config.micro_batch_size, seed=config.seed,
                                      epoch=epoch)
                    progress = running if running is not None and running.epoch == epoch else EpochProgress(epoch)
                    started = time.perf_counter() - progress.seconds
                    for micro_batches in plan[progress.done:]:
                        lr = scheduler.get_last_lr()[0]
                        seeds = [micro_batch_seed(config.seed, epoch, step, j) for j in range(len(micro_batches))]
                        nll, tokens, step_loss = _optimizer_step(model, optimizer, micro_batches, seeds, encoded,
                                                                 pad_id, accelerator, config.max_grad_norm,
                                                                 config.loss_reduction)
                        scheduler.step()
                        step += 1
                        progress.add(step_loss, lr, nll, tokens)
                        progress.seconds = time.perf_counter() - started
                        accelerator.log({"train/loss": step_loss, "train/learning_rate": lr, "train/epoch": epoch},
                                        step=step)
                        bar.update(1)
                        bar.set_postfix(epoch=epoch, loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
                        if progress.done < len(plan) and config.save_steps and step % config.save_steps == 0:
                            _checkpoint(step_checkpoint_dir(out_dir, step), accelerator, model, optimizer, config,
                                        _state(config, progress, step, len(plan), lora_signature))
                    gathered = _checkpoint(checkpoint_dir(out_dir, epoch), accelerator, model, optimizer, config,
                                           _state(config, progress, step, len(plan), lora_signature))
                    history.append(progress.record(step, len(plan)))
                    accelerator.log({"train/epoch_loss": history[-1]["mean_loss"]}, step=step)
            finally:
                bar.close()

            # ---- save (rank 0)
            model.eval()
            weights_dir = out_dir / (ADAPTER_DIR if config.method == "lora" else MODEL_DIR)
            if gathered is None:  # resumed after the last epoch's checkpoint: the weights are the restored ones
                gathered = gather_training_state(model, optimizer.optimizer)
            manifest = _manifest(identity, config, data, loaded, encoding_stats, lora_signature, history, weights_dir,
                                 accelerator)
            manifest_path = out_dir / MANIFEST_FILE
            if job.is_main:
                _save_output(out_dir, accelerator.unwrap_model(model), gathered, loaded, config)
                write_json(manifest_path, manifest)
                for path in step_checkpoints(out_dir):  # they exist to resume; the run is done
                    shutil.rmtree(path, ignore_errors=True)
                if not config.keep_checkpoints:
                    shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
            del optimizer, scheduler, model, gathered
            accelerator.wait_for_everyone()
        finally:
            # ---- clean up: close the trackers and let the next run in this process choose its own precision
            finish_tracking(accelerator)
            _release(accelerator)
    return TrainResult(out_dir=out_dir, weights_dir=weights_dir, manifest_path=manifest_path, manifest=manifest,
                       checkpoints=list_checkpoints(out_dir), resumed_from_epoch=resumed_epochs,
                       resumed_from_step=resumed_step)


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


def _accelerator(config: TrainSettings, loaded: Any, out_dir: Path) -> Any:
    """accelerate's view of this job: devices, processes (DDP or FSDP under a launcher), precision, trackers."""
    # heavy: imported on use, not at start-up
    import torch
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=_autocast(config, loaded),
        log_with=tracker_names(config.report_to),
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / LOGS_DIR)))
    world = distributed.current().world_size
    if accelerator.num_processes != world:
        _release(accelerator)
        raise TrainingError(f"torch.distributed has {world} processes but accelerate sees "
                            f"{accelerator.num_processes}; start the job with `accelerate launch` or `torchrun`, "
                            "which set RANK, WORLD_SIZE and LOCAL_RANK")
    return accelerator


def _autocast(config: TrainSettings, loaded: Any) -> str:
    """accelerate's mixed_precision for a precision setting: "auto" follows the dtype the model was loaded in."""
    # heavy: imported on use, not at start-up
    import torch

    if config.precision == "auto":
        loaded_in = next(loaded.model.parameters()).dtype
        return "bf16" if loaded_in == torch.bfloat16 else "no"
    return "bf16" if config.precision == "bf16" else "no"


def _release(accelerator: Any) -> None:
    """Forget this run's accelerate settings (precision is fixed once per process otherwise); keep the process group."""
    # heavy: imported on use, not at start-up
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def _trainable_model(loaded: Any, config: TrainSettings) -> tuple[Any, dict[str, Any] | None]:
    """A private copy of the model, wrapped with fresh seeded LoRA (or fully trainable), and its LoRA signature.

    The trained parameters are float32 whatever the model was loaded in: they are the master
    weights that bf16 autocast reads, and an AdamW update of 2e-5 times a weight survives
    in float32 where bf16 storage (8 bits of mantissa) would round it away.
    """
    # heavy: imported on use, not at start-up
    import torch

    model = copy.deepcopy(loaded.model)
    if config.method == "lora":
        torch.manual_seed(config.seed)  # the adapter's initial A matrices
        model = add_lora(model, config.lora)
        params = [p for _, p in lora_parameters(model)]
    else:
        model = model.float()
        params = list(model.parameters())
        for parameter in params:
            parameter.requires_grad_(True)
    for parameter in params:
        if parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, (lora_signature(model) if config.method == "lora" else None)


def _resume(out_dir: Path, config: TrainSettings, model: Any, optimizer: Any, scheduler: Any,
            lora_signature: dict[str, Any] | None,
            total_steps: int) -> tuple[list[dict[str, Any]], EpochProgress | None, int]:
    """Restore the newest checkpoint, if any.

    Returns:
        (the finished epochs' records, the unfinished epoch's tallies or None, the step reached).
    """
    last = latest_checkpoint(out_dir, total_steps)
    if last is None:
        return [], None, 0
    differs = settings_difference({"lora_signature": last.lora_signature}, {"lora_signature": lora_signature})
    if differs is not None:
        raise ManifestMismatchError(f"{last.path}: LoRA parameters differ from this run's ({differs[0]}); "
                                    "use a new output directory or --overwrite")
    restore_checkpoint(last, model=model, optimizer=optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepping a scheduler without an optimizer step warns
        for _ in range(last.step):
            scheduler.step()
    where = "the end of" if last.ends_epoch else f"step {last.steps_done_in_epoch} of {last.steps_in_epoch} of"
    log.warning("resuming %s at step %d (%s epoch %d)", out_dir, last.step, where, last.epoch)
    keys = ("epoch", "step", "steps_in_epoch", "avg_lr", "mean_loss", "tokens", "seconds")
    history = []
    for path in list_checkpoints(out_dir):
        state = read_state(path)
        if state["epoch"] <= last.epoch:
            history.append({key: state[key] for key in keys})
    running = None if last.ends_epoch else EpochProgress.from_state(read_state(last.path))
    return history, running, last.step


def _state(config: TrainSettings, progress: EpochProgress, step: int, steps_in_epoch: int,
           lora_signature: dict[str, Any] | None) -> dict[str, Any]:
    """A checkpoint's state.json: the epoch so far, the optimizer's settings, and what a resume restores."""
    return {**progress.record(step, steps_in_epoch), "steps_done_in_epoch": progress.done,
            "nll_total": progress.nll_total, "betas": list(config.betas), "eps": config.eps,
            "weight_decay": config.weight_decay, "method": config.method, "lora_signature": lora_signature,
            "seeds": {"seed": config.seed, "epoch_seed": epoch_seed(config.seed, progress.epoch)},
            "losses": progress.losses, "learning_rates": progress.learning_rates}


def _checkpoint(directory: Path, accelerator: Any, model: Any, optimizer: Any, config: TrainSettings,
                state: dict[str, Any]) -> TrainingState:
    """Gather full tensors on every rank, write them on rank 0, drop older mid-epoch checkpoints; all ranks wait."""
    gathered = gather_training_state(model, optimizer.optimizer)
    if accelerator.is_main_process:
        save_checkpoint(directory, model=accelerator.unwrap_model(model), gathered=gathered, method=config.method,
                        state=state)
        for path in step_checkpoints(directory.parent.parent):  # checkpoints/<name> of the run's directory
            if path != directory:
                shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()
    return gathered


def _progress(total: int, done: int, config: TrainSettings, job: distributed.Dist) -> Any:
    # heavy: imported on use, not at start-up (tqdm.auto brings asyncio)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="train", unit="step", disable=not (config.progress and job.is_main),
                file=sys.stderr, dynamic_ncols=True)


# ------------------------------------------------------------------ the step
def _optimizer_step(model: Any, optimizer: Any, micro_batches: list[list[int]], seeds: list[int], encoded: list[Any],
                    pad_id: int, accelerator: Any, max_grad_norm: float,
                    loss_reduction: str = "token") -> tuple[float, int, float]:
    """One AdamW step over micro-batches.

    The loss is the mean NLL over all the step's response tokens (`loss_reduction` "token"),
    or the mean over its examples of each example's mean token NLL ("example"). Rank r of N
    runs micro-batches r, r + N, ...; gradients are synchronised (DDP all-reduce, FSDP
    reduce-scatter) in its last backward only. Both average over ranks, so each rank's loss is
    scaled by N to make the sum; a rank with fewer micro-batches than the others runs a stand-in
    whose loss counts zero, so that every rank makes the same collective calls. Returns the
    step's summed NLL, its response-token count and the loss it minimised.
    """
    # heavy: imported on use, not at start-up
    import torch

    ranks, rank = accelerator.num_processes, accelerator.process_index
    step_tokens = sum(encoded[i].response_tokens for batch in micro_batches for i in batch)
    step_examples = sum(len(batch) for batch in micro_batches)
    optimizer.zero_grad(set_to_none=True)
    sums = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # summed NLL, the minimised loss
    slots = -(-len(micro_batches) // ranks)
    for slot in range(slots):
        j = rank + slot * ranks
        real = j < len(micro_batches)
        torch.manual_seed(seeds[j] if real else 0)  # this micro-batch's dropout, whichever rank runs it
        rows = [encoded[i] for i in micro_batches[j if real else 0]]
        batch = {k: v.to(accelerator.device) for k, v in collate(rows, pad_id).items()}
        last = slot == slots - 1
        with accelerator.no_sync(model) if not last else contextlib.nullcontext(), accelerator.autocast():
            nll, tokens = example_nll(model, batch)
            if loss_reduction == "example":
                loss = (nll / tokens.clamp(min=1)).sum() / step_examples
            else:
                loss = nll.sum() / step_tokens
            if not real:
                loss = loss * 0.0
            accelerator.backward(loss * ranks)
        if real:
            sums += torch.stack([nll.detach().sum(), loss.detach()]).double()
    if ranks > 1:
        sums = accelerator.reduce(sums, reduction="sum")  # float64: summed token losses need the precision
    nll_total = float(sums[0])
    step_loss = float(sums[1]) if loss_reduction == "example" else nll_total / step_tokens
    if not math.isfinite(nll_total):
        raise TrainingError(f"the training loss became {nll_total}; lower the learning rate")
    if max_grad_norm > 0:
        accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    return nll_total, step_tokens, step_loss


# ------------------------------------------------------------------ saving
def _save_output(out_dir: Path, model: Any, gathered: TrainingState, loaded: Any, config: TrainSettings) -> Path:
    """The adapter or the whole model (float32 master weights), from the gathered full tensors."""
    if config.method == "lora":
        target = out_dir / ADAPTER_DIR
        with staged_directory(target) as staging:
            save_adapter(model, staging, state_dict=gathered.weights)
        return target

    target = out_dir / MODEL_DIR
    strip_gguf_flag(model)
    with staged_directory(target) as staging:
        model.save_pretrained(str(staging), safe_serialization=True, state_dict=gathered.weights)
        loaded.tokenizer.save_pretrained(str(staging))
    return target


def _manifest(identity: dict[str, Any], config: TrainSettings, data: TrainingData, loaded: Any,
              encoding: dict[str, int], lora_signature: dict[str, Any] | None, history: list[dict[str, Any]],
              weights_dir: Path, accelerator: Any) -> dict[str, Any]:
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
        "engine": {"accelerate": str(accelerator.distributed_type).split(".")[-1].lower(),
                   "processes": accelerator.num_processes, "autocast": accelerator.mixed_precision,
                   "master_weights": "float32", "gradient_checkpointing": config.gradient_checkpointing},
        "epochs": history,
        "steps": history[-1]["step"] if history else 0,
        "seconds": round(sum(epoch["seconds"] for epoch in history), 3),
    }
