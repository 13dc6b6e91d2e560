"""click options made from the fields of a settings dataclass, so that defaults, choices and help are said once.

A field gives its option the name (`warmup_lr` -> `--warmup-lr`), the default (read from a
settings instance, so presets and nested settings work alike, or from the class's declaration
when the settings have fields the CLI gives otherwise), the type (a bool field becomes a flag; a
list field takes comma-separated text, which the command splits), the help (`metadata["help"]`),
the choices (`metadata["choices"]`, a registry whose keys are the names) and what a None default
means (`metadata["none"]`, shown as the default).
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import click


def field_metadata(settings: Any, name: str) -> Mapping[str, Any]:
    """The metadata of field `name` of a settings dataclass (class or instance).

    Raises:
        KeyError: `settings` has no field `name`.
    """
    for item in fields(settings):
        if item.name == name:
            return item.metadata
    raise KeyError(f"{type(settings).__name__ if not isinstance(settings, type) else settings.__name__} "
                   f"has no field {name!r}")


def field_default(settings: Any, name: str) -> Any:
    """The default of field `name`: an instance's value, or the value a class declares (its factory's).

    Raises:
        KeyError: the class has no field `name`, or declares no default for it.
    """
    if not isinstance(settings, type):
        return getattr(settings, name)
    item = next((item for item in fields(settings) if item.name == name), None)
    if item is None or (item.default is MISSING and item.default_factory is MISSING):
        raise KeyError(f"{settings.__name__} declares no default for {name!r}")
    return item.default if item.default is not MISSING else item.default_factory()


def settings_option(defaults: Any, name: str, *, flag: str | None = None, param: str | None = None,
                    **overrides: Any) -> Callable[[Callable], Callable]:
    """A click option for field `name` of the settings `defaults`.

    Args:
        defaults: a settings dataclass instance, whose value of `name` is the option's default, or
            the class, whose declared default is.
        flag: the option's name when it is not `--` + the field's name with `-` for `_`.
        param: the keyword the command receives when it is not the field's name.
        **overrides: click.option arguments the CLI says differently from the field (a type
            that parses text, a default of None that a command fills in, a metavar).
    """
    metadata = field_metadata(defaults, name)
    default = field_default(defaults, name)
    if isinstance(default, (list, tuple)):  # the items as comma-separated text
        default = ",".join(str(item) for item in default)
    flag = flag or "--" + name.replace("_", "-")
    options: dict[str, Any] = {"help": metadata["help"]}
    if isinstance(default, bool):  # a flag; one that is on by default is turned off by --no-NAME
        flag = flag if "/" in flag or not default else f"{flag}/--no-{flag.removeprefix('--')}"
        options.update(is_flag=True, default=default, show_default=default)
    else:
        options.update(default=default, show_default=default is not None)
        if metadata.get("choices") is not None:
            options["type"] = click.Choice(list(metadata["choices"]))
        elif isinstance(default, Path):
            options["type"] = click.Path(path_type=Path)
        elif default is not None:
            options["type"] = type(default)
    options.update(overrides)
    if options.get("default") is None and "none" in metadata:
        options["help"] = f"{options['help']}  [default: {metadata['none']}]"
    return click.option(flag, param or name, **options)


def apply(options: list[Callable[[Callable], Callable]], function: Callable) -> Callable:
    """Decorate `function` with `options`, the first listed first in `--help`."""
    for option in reversed(options):
        function = option(function)
    return function


def option_names(options: list[Callable[[Callable], Callable]]) -> tuple[str, ...]:
    """The keywords `options` give a command, in order."""
    return tuple(param.name for param in click.command()(apply(options, lambda **_: None)).params)
