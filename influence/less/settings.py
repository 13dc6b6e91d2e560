"""Settings of a LESS selection run, defaults as in the LESS paper (arXiv 2402.04333)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from influence.constants import ADAM_FORMS, DEFAULT_ADAM_FORM, DEFAULT_INDEX_ROOT, GRAD_TYPES, PROJECTOR_KINDS
from influence.errors import ConfigError, require_positive_ints
from influence.index import INDEX_KINDS
from influence.lora import LoraSettings
from influence.models import DEVICES
from influence.training.settings import LOSS_REDUCTIONS

SCORING_METHODS = ("unprojected", "faiss", "exact")


def _kinds(registry: dict[str, str]) -> str:
    return "; ".join(f"{name}: {meaning}" for name, meaning in registry.items())


@dataclass
class LessSettings:
    """Everything that decides LESS scores; stored in manifests and hashed into the run name."""

    model: str | None = field(default=None, metadata={
        "help": "Model id, local directory or .gguf file.", "none": "the bundled SmolLM2-135M-Instruct"})
    lora: LoraSettings = field(default_factory=LoraSettings.less_default, metadata={
        "help": "Warmup adapter: LESS uses r=128, alpha=512, dropout 0.1 on q/k/v/o."})
    warmup_fraction: float = field(default=0.05, metadata={
        "help": "Seeded random fraction of the pool the warmup trains on (LESS: 5%)."})
    warmup_epochs: int = field(default=4, metadata={"help": "Warmup epochs; one checkpoint each (LESS: 4)."})
    warmup_lr: float = field(default=2e-5, metadata={"help": "Warmup peak learning rate (LESS: 2e-5)."})
    warmup_batch_size: int = field(default=32, metadata={"help": "Examples per warmup optimizer step."})
    warmup_micro_batch_size: int = field(default=4, metadata={"help": "Examples per warmup forward pass."})
    warmup_loss_reduction: str = field(default="example", metadata={
        "help": "Warmup loss: example (LESS: the mean of each example's mean token loss, as its Trainer "
                "computed with batch 1 per device and gradient accumulation) or token (every response "
                "token of a step weighs the same).", "choices": LOSS_REDUCTIONS})
    projector: str | None = field(default=None, metadata={
        "help": f"Random projection: {_kinds(PROJECTOR_KINDS)}.", "choices": PROJECTOR_KINDS,
        "none": "the fastest available"})
    dims: int | tuple[int, ...] = field(default=8192, metadata={
        "help": "Projected feature dimension(s), all made in one pass; the first is scored (LESS: 8192)."})
    batch_size: int = field(default=4, metadata={"help": "Examples per featurization forward/backward."})
    max_length: int = field(default=2048, metadata={"help": "Tokens per example; longer ones are cut and counted."})
    shard_rows: int = field(default=256, metadata={
        "help": "Examples per datastore shard: the unit of resume and of work split across ranks."})
    pool_grad: str = field(default="adam", metadata={
        "help": "Pool gradient type (LESS: adam): " + _kinds(GRAD_TYPES), "choices": GRAD_TYPES})
    target_grad: str = field(default="sgd", metadata={
        "help": "Target gradient type (LESS: sgd): " + _kinds(GRAD_TYPES), "choices": GRAD_TYPES})
    adam_form: str = field(default=DEFAULT_ADAM_FORM, metadata={
        "help": "The Adam update of adam features: less (LESS's released code, m'/sqrt(v'+eps), no bias "
                "correction: what produced its published results) or paper (the paper's bias-corrected "
                "m_hat/(sqrt(v_hat)+eps)).", "choices": ADAM_FORMS})
    scoring: str = field(default="unprojected", metadata={
        "help": "unprojected: the exact LESS score from full-dimension gradients, taken during the pool's "
                "backward (needs the target then; no projection noise, no feature datastore); faiss: top-k of "
                "the projected features by one FAISS search per subtask; exact: every pool example scored from "
                "the projected features.", "choices": SCORING_METHODS})
    store_features: bool = field(default=False, metadata={
        "help": "With scoring=unprojected, also write the projected feature datastores (pool and target) in "
                "the same pass, for FAISS scoring or later targets. The other scorings always write them."})
    index: str = field(default="flat", metadata={
        "help": "FAISS index for scoring=faiss: flat (exact; falls back to chunked exact scoring when its "
                "float32 copy would not fit in memory), ivf-flat or ivf-pq (compressed, approximate; "
                "its hits are rescored exactly).", "choices": INDEX_KINDS})
    seed: int = field(default=0, metadata={"help": "Seeds the warmup sample, adapter init and projection."})
    index_root: Path = field(default=DEFAULT_INDEX_ROOT, metadata={"help": "Where datastores live."})
    name: str | None = field(default=None, metadata={
        "help": "Datastore name under index_root.", "none": "from the pool and a hash of the settings"})
    device: str | None = field(default=None, metadata={
        "help": "Device to compute on.", "choices": DEVICES, "none": "cuda when present"})
    progress: bool = field(default=True, metadata={"help": "Progress bars with an ETA on stderr."})

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        self.index_root = Path(self.index_root)
        dims = (self.dims,) if isinstance(self.dims, int) else tuple(self.dims)
        if not dims or any(not isinstance(d, int) or isinstance(d, bool) or d <= 0 for d in dims) \
                or len(set(dims)) != len(dims):
            raise ConfigError(f"dims must be distinct positive integers, got {self.dims!r}")
        self.dims = dims[0] if len(dims) == 1 else dims
        if not 0.0 < self.warmup_fraction <= 1.0:
            raise ConfigError(f"warmup_fraction must be in (0, 1], got {self.warmup_fraction} (LESS uses 0.05)")
        require_positive_ints(self, "warmup_epochs", "warmup_batch_size", "warmup_micro_batch_size", "batch_size",
                              "max_length", "shard_rows")
        if not self.warmup_lr > 0:
            raise ConfigError(f"warmup_lr must be positive, got {self.warmup_lr}")
        for name in ("pool_grad", "target_grad"):
            if getattr(self, name) not in GRAD_TYPES:
                raise ConfigError(f"{name} must be one of {', '.join(GRAD_TYPES)}, got {getattr(self, name)!r}")
        if self.warmup_loss_reduction not in LOSS_REDUCTIONS:
            raise ConfigError(f"warmup_loss_reduction must be one of {', '.join(LOSS_REDUCTIONS)}, got "
                              f"{self.warmup_loss_reduction!r} (LESS: example)")
        if self.adam_form not in ADAM_FORMS:
            raise ConfigError(f"adam_form must be one of {', '.join(ADAM_FORMS)}, got {self.adam_form!r} "
                              "(LESS's code: less)")
        if self.scoring not in SCORING_METHODS:
            raise ConfigError(f"scoring must be one of {', '.join(SCORING_METHODS)}, got {self.scoring!r}")
        if self.index not in INDEX_KINDS:
            raise ConfigError(f"index must be one of {', '.join(INDEX_KINDS)}, got {self.index!r}")

    @classmethod
    def less_default(cls, **changes: Any) -> "LessSettings":
        return cls(**changes)

    @classmethod
    def for_tests(cls, **changes: Any) -> "LessSettings":
        """Seconds on a tiny model: small LoRA and projection, 2 short warmup epochs."""
        return cls(**{"lora": LoraSettings.for_tests(), "warmup_fraction": 0.5, "warmup_epochs": 2,
                      "warmup_lr": 1e-2, "warmup_batch_size": 2, "warmup_micro_batch_size": 1, "dims": 64,
                      "batch_size": 4, "max_length": 256, "progress": False, **changes})

    @property
    def all_dims(self) -> tuple[int, ...]:
        return (self.dims,) if isinstance(self.dims, int) else tuple(self.dims)

    @property
    def score_dim(self) -> int:
        """The dimension whose features are scored: the first one given."""
        return self.all_dims[0]

    def grad_label(self, grad: str) -> str:
        """A gradient type as datastores are named: adam features carry their form (`adam-less`)."""
        return f"{grad}-{self.adam_form}" if grad == "adam" else grad

    def with_(self, **changes: Any) -> "LessSettings":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lora"] = self.lora.to_dict()
        data["index_root"] = str(self.index_root)
        return data

    def warmup_identity(self) -> dict[str, Any]:
        """The settings that decide the warmup checkpoints."""
        return {"model": self.model, "lora": self.lora.to_dict(), "fraction": self.warmup_fraction,
                "epochs": self.warmup_epochs, "lr": self.warmup_lr, "batch_size": self.warmup_batch_size,
                "micro_batch_size": self.warmup_micro_batch_size, "loss_reduction": self.warmup_loss_reduction,
                "max_length": self.max_length, "seed": self.seed}
