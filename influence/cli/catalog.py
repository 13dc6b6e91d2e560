"""`influence pools` and `influence targets`: what can be named on the command line."""

from __future__ import annotations

import click

from influence.data.pools import POOLS
from influence.data.readers import FILE_SUFFIXES
from influence.data.targets import TARGETS, split_record


@click.command("pools")
def pools_command() -> None:
    """List the registered pools and the other accepted pool specs."""
    for name, pool in POOLS.items():
        click.echo(f"{name:10} {pool.description}")
    click.echo(f"{'FILE':10} a local {', '.join(FILE_SUFFIXES)} file (optionally .gz) with instruction/input/output, "
               "prompt/response or messages records")
    click.echo(f"{'hf:ID[:SPLIT]':10} any datasets id, e.g. hf:tatsu-lab/alpaca:train")
    click.echo(f"{'SPEC:sample=N[,seed=S][,stratify=source|subtask]':10} a seeded sample of any of the above, "
               "e.g. flan_cot:sample=300,stratify=source")


@click.command("targets")
def targets_command() -> None:
    """List the registered targets, with the split sizes of those split from one dataset; a data file
    with a `subtask` field works too."""
    width = max(len(name) for name in TARGETS)
    for name, target in TARGETS.items():
        split = split_record(name)
        sizes = (f" [selection {split['selection']} / validation {split['validation']} / held-out "
                 f"{split['heldout']}; split seed {split['seed']}; also {name}:validation]") if split else ""
        click.echo(f"{name:{width}} {target.description}{sizes}")
    click.echo(f"{'FILE':{width}} a pool-format file whose records may carry a 'subtask' field")


COMMANDS = [pools_command, targets_command]
