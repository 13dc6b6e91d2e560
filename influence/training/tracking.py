"""Experiment trackers (`report_to`): tensorboard event files or an offline wandb run, through accelerate.

Trackers are optional extras: `check_tracker` refuses one that is not installed before any
work starts. wandb runs offline unless WANDB_MODE says otherwise, so training never needs
the network; its files go under <out>/logs beside tensorboard's.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from influence.errors import ConfigError

LOGS_DIR = "logs"
PROJECT = "train"
_NEEDS = {"tensorboard": ("tensorboard", "pip install 'influence[tensorboard]'"),
          "wandb": ("wandb", "pip install wandb")}


def check_tracker(report_to: str) -> None:
    """Raise ConfigError, saying what to install, unless `report_to`'s package is importable."""
    if report_to in _NEEDS:
        module, install = _NEEDS[report_to]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"--report-to {report_to} needs the {module} package: {install}, "
                              "or pass --report-to none")


def tracker_names(report_to: str) -> list[str] | None:
    """accelerate's `log_with` for a `report_to` setting."""
    return None if report_to == "none" else [report_to]


def start_tracking(accelerator: Any, out_dir: Path, settings: dict[str, Any]) -> None:
    """Open the trackers (rank 0) with the run's settings as hyper-parameters."""
    if not accelerator.log_with:
        return
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_DIR", str(out_dir / LOGS_DIR))
    (out_dir / LOGS_DIR).mkdir(parents=True, exist_ok=True)
    # tensorboard's hparams take scalars and strings only
    flat = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in settings.items()}
    accelerator.init_trackers(PROJECT, config=flat)


def finish_tracking(accelerator: Any) -> None:
    """Flush and close the trackers; unlike `end_training`, leaves the process group to its owner."""
    for tracker in accelerator.trackers:
        tracker.finish()
