"""LoRA settings and the declared, ordered list of parameters that are differentiated.

Everything downstream (Adam moments, gradient features, manifests) refers to LoRA
parameters by name through `lora_parameters`, never by position or by substring.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from influence.errors import ConfigError
from influence.io import sha256_json


@dataclass
class LoraSettings:
    """LoRA adapter settings; defaults follow LESS (r=128, alpha=512, dropout 0.1, q/k/v/o)."""

    r: int = field(default=128, metadata={"help": "LoRA rank."})
    alpha: int = field(default=512, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA input during training."})
    target_modules: tuple[str, ...] = field(default=("q_proj", "k_proj", "v_proj", "o_proj"),
                                            metadata={"help": "Module names that get adapters."})

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        if self.r <= 0:
            raise ConfigError(f"LoRA rank must be positive, got r={self.r}")
        if self.alpha <= 0:
            raise ConfigError(f"LoRA alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("LoRA needs at least one target module, e.g. q_proj")

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    @classmethod
    def less_default(cls) -> "LoraSettings":
        return cls()

    @classmethod
    def for_tests(cls) -> "LoraSettings":
        return cls(r=4, alpha=16, dropout=0.0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data


def add_lora(model: Any, settings: LoraSettings) -> Any:
    """Wrap `model` with fresh LoRA adapters (peft); only adapter weights stay trainable."""
    # heavy: imported on use, not at start-up
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), bias="none", task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():  # peft calls a transformers method that transformers marks deprecated
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing.*")
            return get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(f"cannot add LoRA to this model: {exc}") from None


def lora_parameters(model: Any) -> list[tuple[str, Any]]:
    """The trainable LoRA parameters, (name, parameter), in the model's registration order."""
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable LoRA parameters; wrap it with add_lora first")
    return params


def lora_signature(model: Any) -> dict[str, Any]:
    """Names and shapes of the LoRA parameters, with a hash that manifests compare."""
    layout = [[name, list(p.shape)] for name, p in lora_parameters(model)]
    return {"parameters": len(layout), "numel": sum(int(_prod(s)) for _, s in layout),
            "sha256": sha256_json(layout)}


def _prod(shape: list[int]) -> int:
    out = 1
    for n in shape:
        out *= n
    return out
