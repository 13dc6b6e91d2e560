"""`influence pools` and `influence targets`: what can be named on the command line."""

from __future__ import annotations

import click

from influence.data.pools import POOLS
from influence.data.readers import FILE_SUFFIXES
from influence.data.targets import TARGETS


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
    """List the registered targets; a data file with a `subtask` field works too."""
    for name, target in TARGETS.items():
        click.echo(f"{name:8} {target.description}")
    click.echo(f"{'FILE':8} a pool-format file whose records may carry a 'subtask' field")


COMMANDS = [pools_command, targets_command]
