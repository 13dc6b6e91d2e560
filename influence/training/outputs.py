"""What a finished training run leaves in its output directory, and how it is read back.

``manifest.json`` (written last: its presence means done) records the run's identity, data,
settings and per-epoch history; beside it ``adapter/`` (LoRA) or ``model/`` (full
fine-tuning). `read_manifest` checks the manifest's envelope, `load_trained` turns the
directory back into a `LoadedModel`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from influence.constants import ADAPTER_WEIGHTS_FILE
from influence.errors import ManifestMismatchError, TrainingError
from influence.io import sha256_file, sha256_json
from influence.models import LoadedModel, load_model
from influence.provenance import read_envelope

MANIFEST_FILE = "manifest.json"
MODEL_DIR = "model"
MANIFEST_ARTIFACT = "influence.train"
MANIFEST_FORMAT = 1


@dataclass
class TrainResult:
    """What a training run produced."""

    out_dir: Path
    weights_dir: Path                # adapter/ (LoRA) or model/ (full fine-tuning), inside out_dir
    manifest_path: Path
    manifest: dict[str, Any]
    checkpoints: list[Path] = field(default_factory=list)
    resumed_from_epoch: int = 0      # epochs finished before this call: 0 when started fresh
    resumed_from_step: int = 0       # optimizer steps taken before this call (a mid-epoch checkpoint's)
    reused: bool = False             # the directory already held this finished run; nothing was trained

    @property
    def epoch_losses(self) -> list[float]:
        return [epoch["mean_loss"] for epoch in self.manifest["epochs"]]


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a finished training run.

    Raises:
        TrainingError: out_dir holds no finished run.
    """
    path = Path(out_dir) / MANIFEST_FILE
    try:
        return read_envelope(path, MANIFEST_ARTIFACT, MANIFEST_FORMAT, error=TrainingError,
                             fix="train again into another directory, or pass --overwrite")
    except FileNotFoundError:
        raise TrainingError(f"{out_dir} holds no finished training run (no {MANIFEST_FILE}); "
                            "run `influence train` into it, or rerun to resume") from None


def is_training_output(path: str | os.PathLike) -> bool:
    """Whether `path` holds a finished training run (its manifest reads and checks)."""
    try:
        read_manifest(path)
    except TrainingError:
        return False
    return True



def load_trained(out_dir: str | os.PathLike, *, base: Any = None, merge: bool = True) -> Any:
    """Load a finished training run as a `LoadedModel`: the base model with its adapter, or the full model.

    Args:
        out_dir: a directory written by `train`.
        base: the base `LoadedModel` (LoRA runs); None loads the manifest's model spec. It is
            copied, not modified.
        merge: fold the adapter into the weights (faster inference, same outputs).

    Raises:
        TrainingError: out_dir holds no finished run.
        ManifestMismatchError: `base` is not the model the adapter was trained on.
    """
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    output = out_dir / manifest["output"]["path"]
    if manifest["output"]["kind"] == "model":
        loaded = load_model(str(output))
        loaded.info["trained"] = str(out_dir)
        return loaded
    # heavy: imported on use, not at start-up
    from peft import PeftModel

    trained_on = manifest["model"]
    if base is None:
        base = load_model(trained_on["spec"])
    if base.weights_sha256 != trained_on["weights_sha256"]:
        raise ManifestMismatchError(f"{out_dir} was trained on {trained_on['spec']} "
                                    f"(weights {trained_on['weights_sha256'][:12]}), not on {base.spec} "
                                    f"(weights {base.weights_sha256[:12]}); pass the matching base model")
    model = PeftModel.from_pretrained(copy.deepcopy(base.model), str(output))
    if merge:
        model = model.merge_and_unload()
    model.eval()
    adapter_sha = sha256_file(output / ADAPTER_WEIGHTS_FILE)
    info = {**base.info, "spec": str(out_dir), "trained": str(out_dir), "base": trained_on["spec"],
            "adapter_sha256": adapter_sha}
    return LoadedModel(model=model, tokenizer=base.tokenizer, spec=str(out_dir),
                       weights_sha256=sha256_json([base.weights_sha256, adapter_sha]), info=info)
