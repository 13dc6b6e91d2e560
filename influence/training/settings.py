"""Training settings: one dataclass, validated on construction, with named presets.

Why the defaults (`TrainSettings()`, what `influence train` uses):
- The LESS final-training recipe (Xia et al. 2024, arXiv 2402.04333, section 4 and appendix):
  LoRA r=128, alpha=512, dropout 0.1 on q/k/v/o, AdamW, learning rate 2e-5 with a linear
  schedule and 3% warmup, 4 epochs, no weight decay. Comparing selectors is the point of
  this toolkit, so training a selection the way LESS trained its selections keeps our
  numbers comparable with the paper's.
- Batch size 32 examples per optimizer step, as LIMA (arXiv 2305.11206) used for its 1,000
  examples. LESS used 128, but at LIMA scale (k of about 1,000) that leaves only 32 steps in
  4 epochs, too few for the warmup and decay to mean anything; 32 gives 125 steps.
- Micro-batches of 4 with gradient accumulation: on a CPU, bigger micro-batches mostly
  add padding and memory (benchmarks/featurize_speed.py: batching did not speed up the
  gradient on a 2-core CPU); on a GPU raise `micro_batch_size`. The loss is the mean over every
  response token of the whole optimizer step (`loss_reduction="token"`), so the update does
  not depend on the split. LESS's warmup (`less_warmup`) instead averages each example's
  mean token loss (`"example"`): what the transformers Trainer it ran with (4.36, batch 1
  per device with gradient accumulation) computes; that too is independent of the split.
- `max_length` 2048, as everywhere in the toolkit (LESS used 2048 as well); cuts are counted.
- Gradient clipping at norm 1.0, AdamW betas (0.9, 0.999) and eps 1e-8: the transformers
  Trainer defaults that LESS ran with. The warmup step of LESS reads betas and eps from each
  checkpoint rather than assuming them.
- Precision "auto": bf16 autocast when the model was loaded in bf16 (on a GPU), float32
  otherwise; either way the trained weights and AdamW's moments are float32 master copies,
  so an update of 2e-5 is not rounded away as it would be in bf16 storage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from influence.errors import ConfigError, require_positive_ints
from influence.lora import LoraSettings

METHODS = ("lora", "full")
PRECISIONS: dict[str, str] = {
    "auto": "bf16 autocast when the model was loaded in bf16 (GPU), else float32",
    "bf16": "bf16 autocast over float32 master weights",
    "fp32": "float32 throughout",
}
REPORT_TO: dict[str, str] = {
    "none": "no tracker",
    "tensorboard": "event files under <out>/logs (needs the tensorboard extra)",
    "wandb": "a wandb run, offline unless WANDB_MODE says otherwise (needs wandb)",
}
LOSS_REDUCTIONS: dict[str, str] = {
    "token": "mean NLL over every response token of the optimizer step (long responses weigh more)",
    "example": "mean over the step's examples of each example's mean response-token NLL (LESS's warmup)",
}

# Settings that change where or how loudly a run goes, not what it computes; two runs that
# differ only in these may resume one another.
RUNTIME_FIELDS = ("progress", "keep_checkpoints", "save_steps", "gradient_checkpointing", "report_to")


@dataclass
class TrainSettings:
    """Supervised fine-tuning settings; see the module docstring for why the defaults."""

    model: str | None = field(default=None, metadata={
        "help": "Model id, local directory or .gguf file.", "none": "the bundled SmolLM2-135M-Instruct"})
    method: str = field(default="lora", metadata={
        "help": "lora: train adapters only (default); full: train every weight.", "choices": METHODS})
    lora: LoraSettings = field(default_factory=LoraSettings.less_default, metadata={
        "help": "Adapter settings when method is lora (LESS: r=128, alpha=512, dropout 0.1, q/k/v/o)."})
    epochs: int = field(default=4, metadata={"help": "Passes over the data."})
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate of the linear schedule."})
    batch_size: int = field(default=32, metadata={"help": "Examples per optimizer step."})
    micro_batch_size: int = field(default=4, metadata={
        "help": "Examples per forward/backward pass (gradient accumulation makes up the rest); batch_size must "
                "be a multiple of it."})
    warmup_ratio: float = field(default=0.03, metadata={
        "help": "Fraction of all steps spent warming the learning rate up from 0."})
    loss_reduction: str = field(default="token", metadata={
        "help": "How a step's loss averages token losses: " + "; ".join(f"{k}: {v}" for k, v in
                                                                         LOSS_REDUCTIONS.items()) + ".",
        "choices": LOSS_REDUCTIONS})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay."})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "AdamW betas."})
    eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the gradient norm to this; 0 disables."})
    max_length: int = field(default=2048, metadata={"help": "Tokens per example; longer ones are cut and counted."})
    seed: int = field(default=0, metadata={"help": "Seeds the adapter init, the data order and dropout."})
    precision: str = field(default="auto", metadata={
        "help": "Arithmetic: " + "; ".join(f"{k}: {v}" for k, v in PRECISIONS.items()) + ".", "choices": PRECISIONS})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute activations in the backward pass: less memory, about a third more time, same losses."})
    save_steps: int = field(default=0, metadata={
        "help": "Also checkpoint every N optimizer steps, so a killed run resumes mid-epoch (0: at epoch ends only)."})
    report_to: str = field(default="none", metadata={
        "help": "Log losses and learning rates to: " + "; ".join(f"{k}: {v}" for k, v in REPORT_TO.items()) + ".",
        "choices": REPORT_TO})
    keep_checkpoints: bool = field(default=True, metadata={
        "help": "Keep the per-epoch checkpoints (adapter, Adam moments, state) after a successful run."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar with an ETA on stderr."})

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        require_positive_ints(self, "epochs", "batch_size", "micro_batch_size", "max_length")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate} (LESS uses 2e-5)")
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                              f"({self.micro_batch_size}); e.g. set micro_batch_size to a divisor of it")
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ConfigError(f"loss_reduction must be one of {', '.join(LOSS_REDUCTIONS)}, "
                              f"got {self.loss_reduction!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ConfigError(f"eps must be positive, got {self.eps}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.report_to not in REPORT_TO:
            raise ConfigError(f"report_to must be one of {', '.join(REPORT_TO)}, got {self.report_to!r}")
        if self.save_steps < 0:
            raise ConfigError(f"save_steps must be >= 0 (0 checkpoints at epoch ends only), got {self.save_steps}")
        if self.max_grad_norm < 0:
            raise ConfigError(f"max_grad_norm must be >= 0 (0 disables clipping), got {self.max_grad_norm}")

    @property
    def accumulation_steps(self) -> int:
        return self.batch_size // self.micro_batch_size

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lora"] = self.lora.to_dict()
        data["betas"] = list(self.betas)
        return data

    def identity(self) -> dict[str, Any]:
        """The settings that decide the trained weights (what a resumed run must match)."""
        data = self.to_dict()
        for name in RUNTIME_FIELDS:
            data.pop(name)
        if self.method == "full":
            data.pop("lora")
        if self.precision == "auto":  # follows the loaded model's dtype (fp32 on a CPU), as every run before the
            data.pop("precision")     # setting existed trained: such runs keep their identity; bf16/fp32 given count
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**data)

    def with_(self, **changes: Any) -> "TrainSettings":
        """A copy with some settings changed (validated again)."""
        return replace(self, **changes)

    @classmethod
    def less_warmup(cls, **changes: Any) -> "TrainSettings":
        """LESS's warmup run: 4 epochs, lr 2e-5, linear, 3% warmup, LoRA r=128/alpha=512/dropout 0.1,
        the loss averaged per example as LESS's Trainer did.

        The paper's effective batch was 128 (4 GPUs x 32 accumulation steps); on the 5% warmup
        slice of a LIMA-scale or bundled pool that leaves a handful of steps per epoch, so this
        keeps the default 32. Pass batch_size=128 for the paper's exact setting.
        """
        return cls(**{"epochs": 4, "learning_rate": 2e-5, "warmup_ratio": 0.03, "loss_reduction": "example",
                      "lora": LoraSettings.less_default(), **changes})

    @classmethod
    def small_k(cls, **changes: Any) -> "TrainSettings":
        """Verification at small k (tens to hundreds of examples): batch 8, lr 2e-4, 4 epochs, LESS's LoRA.

        LESS's recipe (batch 32, lr 2e-5) makes 8 steps at k=60, whose summed learning rate is
        about 8e-5: the adapter barely leaves its initialisation and every selection looks
        alike. Batch 8 makes 32 steps at k=60 and lr 2e-4 sums to about 3.2e-3, close to the
        4.2e-3 of LESS's own training (about 420 steps of batch 128 at 2e-5 on 5% of its pool).
        Settings chosen by that arithmetic, not by any held-out score.
        """
        return cls(**{"epochs": 4, "learning_rate": 2e-4, "batch_size": 8, "micro_batch_size": 4, **changes})

    @classmethod
    def small_k_validated(cls, **changes: Any) -> "TrainSettings":
        """small_k for 2 epochs at lr 1e-4: the learning rate picked on `user_oriented`'s validation items.

        Two learning rates were tried on one random 100-example Alpaca selection (training seed 0) and
        scored by the answer-only loss on the 36 validation items, never on held-out ones: 1e-4 gave
        2.454, 2e-4 gave 2.483, the untrained model 2.501 (examples/results/lima/recipe.md).
        """
        return cls.small_k(**{"epochs": 2, "learning_rate": 1e-4, **changes})

    @classmethod
    def for_tests(cls, **changes: Any) -> "TrainSettings":
        """Seconds on a tiny model: small LoRA, a high learning rate, no progress bar."""
        return cls(**{"lora": LoraSettings.for_tests(), "epochs": 2, "learning_rate": 1e-2, "batch_size": 2,
                      "micro_batch_size": 1, "warmup_ratio": 0.0, "max_length": 256, "progress": False,
                      **changes})
