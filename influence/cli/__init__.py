"""The `influence` command: a thin layer of click commands over the library."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from influence import __version__
from influence.data.readers import one_line
from influence.errors import InfluenceError


def _usage_error(exc: click.UsageError) -> None:
    """click's usage errors in the one-line form of every other user error (`--help` stays as it is)."""
    hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
    click.echo(f"error: {one_line(exc.format_message())}{hint}", err=True)
    sys.exit(2)


class _Group(click.Group):
    """Turns every user error into one line on stderr and exit status 2."""

    def make_context(self, *args, **kwargs) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError:
            raise  # bare `influence` shows the help
        except click.UsageError as exc:
            _usage_error(exc)
            raise  # not reached: _usage_error exits

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            _usage_error(exc)
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
COMMAND_MODULES = ("select", "catalog", "less", "train", "evaluate", "compare", "publish")


def _register() -> None:
    for name in COMMAND_MODULES:
        for command in importlib.import_module(f"influence.cli.{name}").COMMANDS:
            main.add_command(command)


_register()
