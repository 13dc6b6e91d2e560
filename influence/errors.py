"""Typed errors. Each message says what went wrong and how to fix it, in one line.

The CLI prints `error: <message>` for any `InfluenceError` and exits with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any


class InfluenceError(Exception):
    """Base class for every error a user can cause and fix."""


class DataError(InfluenceError):
    """A pool, target or file could not be read or has the wrong shape."""


class UnknownNameError(InfluenceError):
    """A pool, target, selector or projector name is not registered."""

    def __init__(self, kind: str, name: str, known: list[str]):
        super().__init__(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(known))}")


class SelectionError(InfluenceError):
    """A selection cannot be made as asked (bad k, empty pool, ...)."""


class OutputExistsError(InfluenceError):
    """An output file exists and overwriting was not asked for."""


class OutputError(InfluenceError):
    """An output cannot be written where asked (a directory, a device, no permission)."""


class ManifestMismatchError(InfluenceError):
    """Artifacts made under different settings would be mixed."""


class PublishError(InfluenceError):
    """A selection cannot be pushed to the hub (offline, not logged in, no access)."""


class ModelError(InfluenceError):
    """A model or tokenizer could not be loaded."""


class ConfigError(InfluenceError, ValueError):
    """A setting is out of range; raised from the settings dataclasses' validation."""


class DatastoreError(InfluenceError):
    """A feature datastore is missing, locked, corrupt or incomplete."""


class TrainingError(InfluenceError):
    """Training cannot start or resume as asked."""


class EvaluationError(InfluenceError):
    """An evaluation cannot run as asked."""


def require_positive_ints(settings: Any, *names: str) -> None:
    """The check settings dataclasses share: each named field is an int (not a bool) above zero.

    Raises:
        ConfigError: naming the first field that is not.
    """
    for name in names:
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
