"""`influence train`: supervised fine-tuning on a selection or any data file."""

from __future__ import annotations

from pathlib import Path

import click

from influence import distributed
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
@click.option("--model", default=None, metavar="M", help="Model id, directory or .gguf [default: bundled SmolLM2-135M].")
@click.option("--lora/--full", "lora", default=True, show_default=True,
              help="Train LoRA adapters (r=128, alpha=512, q/k/v/o) or every weight.")
@click.option("--epochs", type=int, default=_DEFAULTS.epochs, show_default=True, help="Passes over the data.")
@click.option("--lr", type=float, default=_DEFAULTS.learning_rate, show_default=True,
              help="Peak learning rate (linear schedule, 3% warmup).")
@click.option("--batch-size", type=int, default=_DEFAULTS.batch_size, show_default=True,
              help="Examples per optimizer step.")
@click.option("--micro-batch-size", type=int, default=_DEFAULTS.micro_batch_size, show_default=True,
              help="Examples per forward/backward pass (gradient accumulation makes up the rest).")
@click.option("--loss-reduction", type=click.Choice(["token", "example"]), default=_DEFAULTS.loss_reduction,
              show_default=True, help="token: every response token of a step weighs the same; example: the mean "
                                      "of each example's mean token loss (as LESS's Trainer computed it).")
@click.option("--max-length", type=int, default=_DEFAULTS.max_length, show_default=True,
              help="Tokens per example; longer ones are cut and counted.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds adapter init, data order and dropout.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory [default: runs/<data>-<lora|full>-s<seed>]; rerun to resume.")
@click.option("--overwrite", is_flag=True,
              help="Delete the training run --out holds and start again (a directory of other files is refused).")
@click.option("--no-checkpoints", is_flag=True, help="Delete the per-epoch checkpoints after a successful run.")
def train_command(data, model, lora, epochs, lr, batch_size, micro_batch_size, loss_reduction, max_length, seed, out,
                  overwrite, no_checkpoints) -> None:
    """Fine-tune a model on DATA; saves the adapter (or model) and manifest.json under --out.

    Under `torchrun --nproc_per_node N`, the N processes train data parallel (one gradient
    all-reduce per step) and rank 0 writes the output.
    """
    method = "lora" if lora else "full"
    config = TrainSettings(model=model, method=method, epochs=epochs, learning_rate=lr, batch_size=batch_size,
                         micro_batch_size=min(micro_batch_size, batch_size), loss_reduction=loss_reduction,
                         max_length=max_length, seed=seed, keep_checkpoints=not no_checkpoints)
    out = out or default_out_dir(data, method, seed)
    job = distributed.init_from_env()
    result = train(data, config, out, overwrite=overwrite)
    if not job.is_main:
        return
    manifest = result.manifest
    if result.reused:
        click.echo(f"{out} already holds this finished run; nothing to do")
    elif result.resumed_from_epoch:
        click.echo(f"resumed after epoch {result.resumed_from_epoch}")
    encoding = manifest["data"]
    if encoding["truncated"]:
        click.echo(f"{encoding['truncated']:,} of {counted(encoding['examples'], 'example')} "
                   f"{'was' if encoding['truncated'] == 1 else 'were'} cut to {max_length} tokens")
    losses = ", ".join(f"{loss:.4f}" for loss in result.epoch_losses)
    click.echo(f"trained {counted(encoding['trained'], 'example')}, {counted(manifest['steps'], 'step')} in "
               f"{manifest['seconds']:.0f} s; loss per epoch: {losses}")
    click.echo(f"wrote {result.weights_dir} and {result.manifest_path}")


COMMANDS = [train_command]
