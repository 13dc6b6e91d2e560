"""`influence publish`: a selection as a Hugging Face dataset, pushed or written to a folder."""

from __future__ import annotations

from pathlib import Path

import click

from influence.cli.settings_options import field_metadata, settings_option
from influence.publish import PublishSettings, publish


def _option(name: str, **overrides):
    return settings_option(PublishSettings, name, **overrides)


@click.command("publish")
@click.argument("selection", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--repo", required=True, metavar="ORG/NAME", help=field_metadata(PublishSettings, "repo")["help"])
@_option("local_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR")
@_option("overwrite")
@_option("license", metavar="ID")
@_option("fmt", flag="--format", param="fmt")
@_option("private")
def publish_command(selection, repo, local_dir, overwrite, license, fmt, private) -> None:
    """Publish SELECTION (the .jsonl `influence select` wrote, its manifest beside it) as a dataset with a card.

    Licences travel with the examples: Alpaca's CC BY-NC 4.0, FLAN CoT's Apache-2.0, and
    --license (default: unknown) for your own files.
    """
    settings = PublishSettings(repo=repo, local_dir=local_dir, overwrite=overwrite, license=license, fmt=fmt,
                               private=private)
    publish(selection, settings, echo=click.echo)


COMMANDS = [publish_command]
