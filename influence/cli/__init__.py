"""The `influence` command: a thin layer of click commands over the library."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from influence import __version__
from influence.errors import InfluenceError


class _Group(click.Group):
    """Turns every user error into one line on stderr and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except InfluenceError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; rerun the same command to resume", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="influence")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
def main(verbose: bool) -> None:
    """Pick the few training examples that matter for a target capability."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


# One module per command group under influence/cli/, each exposing COMMANDS.
COMMAND_MODULES = ("select", "catalog", "less", "train", "evaluate", "compare")


def _register() -> None:
    for name in COMMAND_MODULES:
        for command in importlib.import_module(f"influence.cli.{name}").COMMANDS:
            main.add_command(command)


_register()
