"""`influence train`: supervised fine-tuning on a selection or any data file."""

from __future__ import annotations

from pathlib import Path

import click

from influence import distributed
from influence.cli.settings_options import settings_option
from influence.data.readers import counted
from influence.training import train
from influence.training.settings import TrainSettings

_DEFAULTS = TrainSettings()


def default_out_dir(data: str, method: str, seed: int) -> Path:
    """runs/<data file stem>-<method>-s<seed>."""
    name = Path(data).name
    for suffix in (".gz", ".jsonl", ".json", ".csv", ".parquet"):
        name = name.removesuffix(suffix)
    return Path("runs") / f"{name}-{method}-s{seed}"


@click.command("train")
@click.option("--data", required=True, metavar="FILE",
              help="Training data: a selection JSONL from `influence select`, or any pool file or name.")
@settings_option(_DEFAULTS, "model", metavar="M")
@click.option("--lora/--full", "lora", default=_DEFAULTS.method == "lora", show_default=True,
              help=f"Train LoRA adapters (r={_DEFAULTS.lora.r}, alpha={_DEFAULTS.lora.alpha}, "
                   f"{'/'.join(m.removesuffix('_proj') for m in _DEFAULTS.lora.target_modules)}) or every weight.")
@settings_option(_DEFAULTS, "epochs")
@settings_option(_DEFAULTS, "learning_rate", flag="--lr", param="lr")
@settings_option(_DEFAULTS, "batch_size")
@settings_option(_DEFAULTS, "micro_batch_size")
@settings_option(_DEFAULTS, "loss_reduction")
@settings_option(_DEFAULTS, "max_length")
@settings_option(_DEFAULTS, "seed", type=click.IntRange(min=0))
@settings_option(_DEFAULTS, "precision")
@settings_option(_DEFAULTS, "gradient_checkpointing")
@settings_option(_DEFAULTS, "save_steps", type=click.IntRange(min=0), metavar="N")
@settings_option(_DEFAULTS, "report_to")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory [default: runs/<data>-<lora|full>-s<seed>]; rerun to resume.")
@click.option("--overwrite", is_flag=True,
              help="Delete the training run --out holds and start again (a directory of other files is refused).")
@click.option("--no-checkpoints", is_flag=True, help="Delete the per-epoch checkpoints after a successful run.")
def train_command(data, model, lora, epochs, lr, batch_size, micro_batch_size, loss_reduction, max_length, seed,
                  precision, gradient_checkpointing, save_steps, report_to, out, overwrite, no_checkpoints) -> None:
    """Fine-tune a model on DATA; saves the adapter (or model) and manifest.json under --out.

    Under `accelerate launch` or `torchrun --nproc_per_node N`, the N processes train data
    parallel (DDP, or FSDP as accelerate's config says) and rank 0 writes the output.
    """
    method = "lora" if lora else "full"
    config = TrainSettings(model=model, method=method, epochs=epochs, learning_rate=lr, batch_size=batch_size,
                           micro_batch_size=min(micro_batch_size, batch_size), loss_reduction=loss_reduction,
                           max_length=max_length, seed=seed, precision=precision,
                           gradient_checkpointing=gradient_checkpointing, save_steps=save_steps, report_to=report_to,
                           keep_checkpoints=not no_checkpoints)
    out = out or default_out_dir(data, method, seed)
    job = distributed.init_from_env()
    result = train(data, config, out, overwrite=overwrite)
    if not job.is_main:
        return
    manifest = result.manifest
    if result.reused:
        click.echo(f"{out} already holds this finished run; nothing to do")
    elif result.resumed_from_step:
        click.echo(f"resumed at step {result.resumed_from_step} ({result.resumed_from_epoch} epochs done)")
    encoding = manifest["data"]
    if encoding["truncated"]:
        click.echo(f"{encoding['truncated']:,} of {counted(encoding['examples'], 'example')} "
                   f"{'was' if encoding['truncated'] == 1 else 'were'} cut to {max_length} tokens")
    losses = ", ".join(f"{loss:.4f}" for loss in result.epoch_losses)
    click.echo(f"trained {counted(encoding['trained'], 'example')}, {counted(manifest['steps'], 'step')} in "
               f"{manifest['seconds']:.0f} s; loss per epoch: {losses}")
    click.echo(f"wrote {result.weights_dir} and {result.manifest_path}")


COMMANDS = [train_command]
