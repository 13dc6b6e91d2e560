"""Click options shared by the LESS commands (select, warmup, featurize, score), read into LessSettings."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from influence.constants import DEFAULT_INDEX_ROOT
from influence.lora import LoraSettings
from influence.models import check_device

_OPTIONS = [
    click.option("--model", default=None, metavar="M",
                 help="Model id, local directory or .gguf file [default: bundled SmolLM2-135M-Instruct]."),
    click.option("--projector", type=click.Choice(["sjlt", "trak-basic", "trak-cuda"]), default=None,
                 help="Random projection [default: the fastest available, sjlt]."),
    click.option("--dims", default="8192", show_default=True, metavar="D[,D...]",
                 help="Projected feature dimension(s), made in one pass; the first is scored."),
    click.option("--lora-r", type=int, default=128, show_default=True, help="Warmup LoRA rank."),
    click.option("--lora-alpha", type=int, default=512, show_default=True, help="Warmup LoRA alpha."),
    click.option("--warmup-fraction", type=float, default=0.05, show_default=True,
                 help="Fraction of the pool the warmup trains on."),
    click.option("--warmup-epochs", type=int, default=4, show_default=True, help="Warmup epochs (= checkpoints)."),
    click.option("--warmup-lr", type=float, default=2e-5, show_default=True, help="Warmup learning rate."),
    click.option("--warmup-loss-reduction", type=click.Choice(["example", "token"]), default="example",
                 show_default=True, help="Warmup loss: example = mean of each example's mean token loss (LESS); "
                                         "token = every response token of a step weighs the same."),
    click.option("--adam-form", type=click.Choice(["less", "paper"]), default="less", show_default=True,
                 help="Adam update of pool features: less = LESS's released code (m'/sqrt(v'+eps), no bias "
                      "correction; produced its published results), paper = the paper's bias-corrected formula."),
    click.option("--batch-size", type=int, default=4, show_default=True,
                 help="Examples per featurization forward/backward."),
    click.option("--max-length", type=int, default=2048, show_default=True, help="Tokens per example."),
    click.option("--shard-rows", type=int, default=256, show_default=True,
                 help="Examples per datastore shard: the unit of resume and of work split across ranks."),
    click.option("--scoring", type=click.Choice(["unprojected", "faiss", "exact"]), default=None,
                 help="unprojected: the exact LESS score from full-dimension gradients, taken during the pool's "
                      "pass (no projection noise; needs the target then); faiss: top-k of the projected features "
                      "by one FAISS search per subtask; exact: every example from the projected features "
                      "[default: unprojected; faiss for `score`, which reads stored features]."),
    click.option("--store-features", is_flag=True,
                 help="With --scoring unprojected, also write the projected feature datastores in the same "
                      "pass (for FAISS scoring or later targets)."),
    click.option("--index", type=click.Choice(["flat", "ivf-flat", "ivf-pq"]), default="flat", show_default=True,
                 help="FAISS index for --scoring faiss: flat is exact (chunked exact scoring when it would not "
                      "fit in memory); ivf-pq is compressed and approximate, its hits rescored exactly."),
    click.option("--name", default=None, help="Datastore name under --index-root [default: from pool + settings]."),
    click.option("--index-root", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_INDEX_ROOT,
                 show_default=True, help="Where datastores live."),
    click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
                 help="Device [default: cuda when present]."),
]
NAMES = ("model", "projector", "dims", "lora_r", "lora_alpha", "warmup_fraction", "warmup_epochs", "warmup_lr",
         "warmup_loss_reduction", "adam_form", "batch_size", "max_length", "shard_rows", "scoring", "store_features",
         "index", "name", "index_root", "device")


def less_options(function: Callable) -> Callable:
    for option in reversed(_OPTIONS):
        function = option(function)
    return function


def pop_settings(kwargs: dict[str, Any], *, seed: int = 0, scoring: str = "unprojected") -> Any:
    """Remove the LESS options from a command's kwargs and build LessSettings from them
    (`scoring` is the command's default when --scoring is not given)."""
    # loads torch: imported on use, not at start-up
    from influence.less import LessSettings

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
