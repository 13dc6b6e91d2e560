"""The bundled SFT trainer: settings, the training recipe, checkpoints LESS's warmup reads, finished runs.

    from influence.training import TrainSettings, train, list_checkpoints, load_checkpoint
    result = train("selection.jsonl", TrainSettings.less_warmup(), "runs/warmup")
    for path in list_checkpoints(result.out_dir):
        ckpt = load_checkpoint(path)     # ckpt.avg_lr, ckpt.exp_avg[name], ckpt.exp_avg_sq[name], ckpt.adapter_dir
"""

from influence.training.checkpoint import Checkpoint, list_checkpoints, load_adapter_weights, load_checkpoint
from influence.training.settings import TrainSettings
from influence.training.loss import example_nll
from influence.training.outputs import TrainResult, is_training_output, load_trained, read_manifest
from influence.training.trainer import train

__all__ = ["TrainSettings", "TrainResult", "train", "Checkpoint", "list_checkpoints", "load_checkpoint",
           "load_adapter_weights", "load_trained", "read_manifest", "is_training_output", "example_nll"]
