"""Training checkpoints: the weights, AdamW's moments keyed by parameter name, and the state.

Every epoch ends in `checkpoints/epoch-N/`; with `save_steps`, every N optimizer steps also
leave `checkpoints/step-S/` (only the newest is kept: it exists to resume a killed run
mid-epoch). Both have one layout, and a directory appears only complete (it is written
under a temporary name and renamed):

    adapter/                  the LoRA adapter (peft save_pretrained, safetensors)   [lora]
    weights.safetensors       every trained parameter by name, float32 master copies
    exp_avg.safetensors       AdamW first moments, keyed by parameter name
    exp_avg_sq.safetensors    AdamW second moments, keyed by parameter name
    state.json                epoch, step, steps done in the epoch, the learning rates and
                              losses so far, betas, eps, the LoRA signature and seeds

Under FSDP each rank holds a shard of the weights and moments; `gather_training_state`
collects full tensors by parameter name (torch.distributed.checkpoint's state dicts) and rank
0 writes them, so LESS's warmup reads the same files however the run was sharded. The
warmup reads epoch checkpoints with `load_checkpoint` / `list_checkpoints`: the moments
precondition pool gradients, and `avg_lr` weights each checkpoint's scores.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from influence.constants import ADAPTER_WEIGHTS_FILE
from influence.errors import ManifestMismatchError, TrainingError
from influence.io import atomic_directory, write_bytes, write_json
from influence.lora import lora_parameters
from influence.provenance import envelope, read_envelope

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_ARTIFACT = "influence.checkpoint"
CHECKPOINT_FORMAT = 1
ADAPTER_DIR = "adapter"
WEIGHTS_FILE = "weights.safetensors"
EXP_AVG_FILE = "exp_avg.safetensors"
EXP_AVG_SQ_FILE = "exp_avg_sq.safetensors"
STATE_FILE = "state.json"
_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class Checkpoint:
    """One epoch's end (or, mid-epoch, a step's): where its weights are, its Adam moments by name, its state.

    `exp_avg` and `exp_avg_sq` are empty when loaded with `moments=False`.
    """

    path: Path
    epoch: int
    step: int
    avg_lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    method: str
    lora_signature: dict[str, Any] | None
    seeds: dict[str, int]
    losses: list[float]
    steps_done_in_epoch: int = 0     # optimizer steps of `epoch` this checkpoint has taken
    steps_in_epoch: int = 0
    exp_avg: dict[str, Any] = field(default_factory=dict, repr=False)
    exp_avg_sq: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def adapter_dir(self) -> Path | None:
        """The peft adapter directory (LoRA runs), loadable with PeftModel.from_pretrained."""
        return self.path / ADAPTER_DIR if self.method == "lora" else None

    @property
    def weights_file(self) -> Path:
        """Every trained parameter by name, float32 (the LoRA weights, or the whole model's)."""
        return self.path / WEIGHTS_FILE

    @property
    def ends_epoch(self) -> bool:
        return self.steps_done_in_epoch >= self.steps_in_epoch

    @property
    def moments(self) -> dict[str, tuple[Any, Any]]:
        """Parameter name -> (first moment, second moment)."""
        return {name: (self.exp_avg[name], self.exp_avg_sq[name]) for name in self.exp_avg}


def checkpoint_dir(out_dir: str | os.PathLike, epoch: int) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / f"epoch-{epoch}"


def step_checkpoint_dir(out_dir: str | os.PathLike, step: int) -> Path:
    """Where a mid-epoch checkpoint after optimizer step `step` goes."""
    return Path(out_dir) / CHECKPOINT_DIR / f"step-{step}"


def step_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """The complete mid-epoch checkpoints of a training output directory, oldest first."""
    return _complete(out_dir, _STEP_DIR)


def latest_checkpoint(out_dir: str | os.PathLike, max_step: int) -> Checkpoint | None:
    """The checkpoint (epoch end or mid-epoch) with the most steps, up to `max_step`, with its moments."""
    found = [(state["step"], path) for path in list_checkpoints(out_dir) + step_checkpoints(out_dir)
             if (state := read_state(path))["step"] <= max_step]
    return load_checkpoint(max(found)[1]) if found else None


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """The complete epoch checkpoints of a training output directory, in epoch order."""
    return _complete(out_dir, _EPOCH_DIR)


def _complete(out_dir: str | os.PathLike, pattern: re.Pattern) -> list[Path]:
    root = Path(out_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = pattern.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def load_checkpoint(path: str | os.PathLike, *, moments: bool = True) -> Checkpoint:
    """Read one epoch checkpoint written by `train`.

    Args:
        path: an `epoch-N` directory (see `list_checkpoints`).
        moments: also load the AdamW moments (CPU float tensors keyed by parameter name).

    Raises:
        TrainingError: the directory is not a complete checkpoint, or a file is unreadable.
    """
    path = Path(path)
    state = read_state(path)
    checkpoint = Checkpoint(path=path, epoch=state["epoch"], step=state["step"], avg_lr=state["avg_lr"],
                            betas=tuple(state["betas"]), eps=state["eps"], weight_decay=state["weight_decay"],
                            method=state["method"], lora_signature=state.get("lora_signature"),
                            seeds=state["seeds"], losses=state["losses"],
                            steps_done_in_epoch=state.get("steps_done_in_epoch", state["steps_in_epoch"]),
                            steps_in_epoch=state["steps_in_epoch"])
    if moments:
        checkpoint.exp_avg = _read_tensors(path / EXP_AVG_FILE)
        checkpoint.exp_avg_sq = _read_tensors(path / EXP_AVG_SQ_FILE)
        if set(checkpoint.exp_avg) != set(checkpoint.exp_avg_sq):
            raise TrainingError(f"{path}: first and second moments name different parameters; retrain")
    return checkpoint


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's state.json, checked to be one.

    Raises:
        TrainingError: no state.json, or it is unreadable or of another kind or format.
    """
    try:
        return read_envelope(Path(path) / STATE_FILE, CHECKPOINT_ARTIFACT, CHECKPOINT_FORMAT, error=TrainingError,
                             fix="delete the checkpoint and rerun training")
    except FileNotFoundError:
        raise TrainingError(f"{path} is not a training checkpoint (no {STATE_FILE}); "
                            "pass a checkpoints/epoch-N directory") from None


def _read_tensors(path: Path) -> dict[str, Any]:
    # heavy: imported on use, not at start-up
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise TrainingError(f"{path} is missing; the checkpoint is incomplete, delete it and rerun") from None
    except (SafetensorError, OSError) as exc:
        raise TrainingError(f"{path}: corrupt ({exc}); delete the checkpoint and rerun") from None


def _tensor_bytes(tensors: dict[str, Any], kind: str) -> bytes:
    # heavy: imported on use, not at start-up
    from safetensors.torch import save

    return save({name: t.detach().to("cpu").contiguous() for name, t in tensors.items()},
                metadata={"format": f"influence-{kind}"})


staged_directory = atomic_directory  # the one way to write a directory whole


def remove_stale_staging(directory: Path) -> None:
    """Delete half-written directories left by a killed run."""
    if directory.is_dir():
        for path in directory.glob(".*.tmp"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


@dataclass
class TrainingState:
    """Full tensors by parameter name, gathered from however the model and optimizer are sharded.

    Empty on every rank but 0 under torch.distributed (rank 0 alone writes them).
    """

    weights: dict[str, Any]
    exp_avg: dict[str, Any]
    exp_avg_sq: dict[str, Any]


_FULL = {"full_state_dict": True, "cpu_offload": True}


def gather_training_state(model: Any, optimizer: Any) -> TrainingState:
    """The trained parameters and AdamW moments as full CPU tensors keyed by parameter name.

    A collective under torch.distributed: every rank calls it. Names are the unwrapped
    model's (no DDP `module.` or FSDP prefixes), as `lora_parameters` gives them.
    """
    # heavy: imported on use, not at start-up
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    weights, optim = get_state_dict(model, optimizer, options=StateDictOptions(**_FULL, ignore_frozen_params=True))
    moments: dict[str, dict[str, Any]] = {"exp_avg": {}, "exp_avg_sq": {}}
    for name, slot in optim.get("state", {}).items():
        for key in moments:
            moments[key][name] = slot[key] if key in slot else weights[name].new_zeros(weights[name].shape)
    trained = {name: weights[name] for name in moments["exp_avg"]}  # tied weights once, under their optimizer name
    return TrainingState(weights=trained, **moments)


def save_checkpoint(directory: Path, *, model: Any, gathered: TrainingState, method: str,
                    state: dict[str, Any]) -> Path:
    """Write one checkpoint atomically (see the module docstring for the layout); rank 0 only.

    Args:
        model: the unwrapped model (its peft config goes beside the adapter).
        gathered: `gather_training_state`'s full tensors.
    """
    with staged_directory(directory) as staging:
        if method == "lora":
            save_adapter(model, staging / ADAPTER_DIR, state_dict=gathered.weights)
        write_bytes(staging / WEIGHTS_FILE, _tensor_bytes(gathered.weights, "weights"))
        write_bytes(staging / EXP_AVG_FILE, _tensor_bytes(gathered.exp_avg, "exp-avg"))
        write_bytes(staging / EXP_AVG_SQ_FILE, _tensor_bytes(gathered.exp_avg_sq, "exp-avg-sq"))
        write_json(staging / STATE_FILE, {**envelope(CHECKPOINT_ARTIFACT, CHECKPOINT_FORMAT), **state})
    return directory


def save_adapter(model: Any, directory: Path, state_dict: dict[str, Any] | None = None) -> None:
    """peft's save_pretrained (safetensors), without a transformers deprecation notice it triggers.

    `state_dict`: full LoRA tensors by parameter name, when the model's own are sharded.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model.save_pretrained(str(directory), safe_serialization=True, state_dict=state_dict)


def restore_checkpoint(checkpoint: Checkpoint, *, model: Any, optimizer: Any) -> None:
    """Load a checkpoint's weights into `model` and its moments into `optimizer`, by name, on every rank.

    Works on a plain, DDP or FSDP model alike (torch.distributed.checkpoint shards full tensors).

    Raises:
        ManifestMismatchError: the checkpoint's parameters differ from the model's.
        TrainingError: a file of the checkpoint is missing or unreadable.
    """
    # heavy: imported on use, not at start-up
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_state_dict

    options = StateDictOptions(**_FULL, ignore_frozen_params=True)
    layout = get_optimizer_state_dict(model, optimizer, options=options)  # this run's names and param groups
    names = [name for group in layout["param_groups"] for name in group["params"]]
    if sorted(names) != sorted(checkpoint.exp_avg):
        missing = sorted(set(names) - set(checkpoint.exp_avg))[:3]
        extra = sorted(set(checkpoint.exp_avg) - set(names))[:3]
        raise ManifestMismatchError(f"{checkpoint.path}: its parameters differ from the model's "
                                    f"(missing {missing}, unexpected {extra}); use a new output directory")
    weights = _read_tensors(checkpoint.weights_file)
    for name in names:
        for source in (weights, checkpoint.exp_avg_sq):
            _check_shape(checkpoint.path, name, source.get(name), checkpoint.exp_avg[name])
    step = torch.tensor(float(checkpoint.step))
    layout["state"] = {name: {"step": step.clone(), "exp_avg": checkpoint.exp_avg[name].clone(),
                              "exp_avg_sq": checkpoint.exp_avg_sq[name].clone()} for name in names}
    try:
        set_state_dict(model, optimizer, model_state_dict={name: weights[name] for name in names},
                       optim_state_dict=layout, options=StateDictOptions(full_state_dict=True, strict=False))
    except RuntimeError as exc:  # torch reports a shape that differs from the model's this way
        raise ManifestMismatchError(f"{checkpoint.path}: its tensors do not fit the model "
                                    f"({str(exc).strip().splitlines()[-1].strip()}); "
                                    "use a new output directory") from None


def _check_shape(path: Path, name: str, tensor: Any, param: Any) -> None:
    if tensor is None or tuple(tensor.shape) != tuple(param.shape):
        shape = None if tensor is None else tuple(tensor.shape)
        raise ManifestMismatchError(f"{path}: parameter {name} has shape {shape} in the checkpoint but "
                                    f"{tuple(param.shape)} in its moments; delete the checkpoint")


def load_adapter_weights(model: Any, adapter_dir: str | os.PathLike) -> None:
    """Load a saved LoRA adapter into `model`'s adapter, refusing one that does not fit it exactly.

    Raises:
        ManifestMismatchError: the adapter names a weight the model lacks, lacks one of the model's
            LoRA weights, or a shape differs (another rank, target modules or model).
        TrainingError: the adapter file is missing or unreadable.
    """
    # heavy: imported on use, not at start-up
    from peft import set_peft_model_state_dict

    adapter_dir = Path(adapter_dir)
    weights = _read_tensors(adapter_dir / ADAPTER_WEIGHTS_FILE)
    try:
        result = set_peft_model_state_dict(model, weights)
    except RuntimeError as exc:  # torch's load_state_dict reports shape mismatches this way
        raise ManifestMismatchError(f"{adapter_dir}: adapter weights do not fit the model ("
                                    f"{str(exc).strip().splitlines()[-1].strip()}); use the LoRA settings "
                                    "the adapter was trained with") from None
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing_keys = set(getattr(result, "missing_keys", []) or [])
    missing = [name for name, _ in lora_parameters(model) if name in missing_keys]
    if unexpected or missing:
        detail = [f"{label} {names[:3]}" for label, names in (("unexpected", unexpected), ("missing", missing))
                  if names]
        raise ManifestMismatchError(f"{adapter_dir}: adapter weights do not fit the model ({'; '.join(detail)}); "
                                    "use the model and LoRA settings the adapter was trained with")
