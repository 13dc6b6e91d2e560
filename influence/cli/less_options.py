"""Click options shared by the LESS commands (select, warmup, featurize, score), read into LessSettings.

Each option is made from a LessSettings field (the warmup LoRA's rank and alpha from its
LoraSettings), so its default, choices and help are the dataclass's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from influence.cli.settings_options import apply, field_metadata, option_names, settings_option
from influence.less.settings import LessSettings
from influence.lora import LoraSettings
from influence.models import check_device

DEFAULTS = LessSettings()

_OPTIONS = [
    settings_option(DEFAULTS, "model", metavar="M"),
    settings_option(DEFAULTS, "projector"),
    # text, so that several dimensions can be given at once
    settings_option(DEFAULTS, "dims", type=str, metavar="D[,D...]"),
    settings_option(DEFAULTS.lora, "r", flag="--lora-r", param="lora_r",
                    help=f"Warmup adapter: {field_metadata(LoraSettings, 'r')['help']}"),
    settings_option(DEFAULTS.lora, "alpha", flag="--lora-alpha", param="lora_alpha",
                    help=f"Warmup adapter: {field_metadata(LoraSettings, 'alpha')['help']}"),
    settings_option(DEFAULTS, "warmup_fraction"),
    settings_option(DEFAULTS, "warmup_epochs"),
    settings_option(DEFAULTS, "warmup_lr"),
    settings_option(DEFAULTS, "warmup_loss_reduction"),
    settings_option(DEFAULTS, "adam_form"),
    settings_option(DEFAULTS, "batch_size"),
    settings_option(DEFAULTS, "max_length"),
    settings_option(DEFAULTS, "shard_rows"),
    # no default here: each command passes its own to pop_settings
    settings_option(DEFAULTS, "scoring", default=None, show_default=False,
                    help=field_metadata(LessSettings, "scoring")["help"]
                    + f"  [default: {DEFAULTS.scoring}; faiss for `score`, which reads stored features]"),
    settings_option(DEFAULTS, "store_features"),
    settings_option(DEFAULTS, "index"),
    settings_option(DEFAULTS, "name"),
    settings_option(DEFAULTS, "index_root", type=click.Path(file_okay=False, path_type=Path)),
    settings_option(DEFAULTS, "device"),
]
NAMES = option_names(_OPTIONS)


def less_options(function: Callable) -> Callable:
    return apply(_OPTIONS, function)


def pop_settings(kwargs: dict[str, Any], *, seed: int = 0, scoring: str = DEFAULTS.scoring) -> LessSettings:
    """Remove the LESS options from a command's kwargs and build LessSettings from them
    (`scoring` is the command's default when --scoring is not given)."""
    values = {name: kwargs.pop(name) for name in NAMES}
    check_device(values["device"])  # before any pool is read
    try:
        values["dims"] = tuple(int(d) for d in str(values["dims"]).split(",") if d.strip())
    except ValueError:
        raise click.BadParameter(f"expected integers separated by commas, got {values['dims']!r}",
                                 param_hint="--dims") from None
    values["scoring"] = values["scoring"] or scoring
    lora = LoraSettings(r=values.pop("lora_r"), alpha=values.pop("lora_alpha"))
    return LessSettings(lora=lora, seed=seed, **values)
