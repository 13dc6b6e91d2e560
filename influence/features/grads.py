"""Exact per-example gradients of the LoRA parameters, B examples per forward and backward.

For a LoRA layer ``y = W x + s * B A x`` the gradient of a loss with respect to ``A`` and
``B`` is a sum over token positions of outer products. Hooks capture, per layer, the input
``x`` of ``lora_A``, its output ``h = A x`` and the gradient ``dy`` at the output of
``lora_B`` (``s`` is already inside it); then, per example ``i``::

    grad_B_i = sum_t dy_t h_t^T            grad_A_i = sum_t (B^T dy_t) x_t^T

The backward is asked only for the ``dy`` tensors (``torch.autograd.grad``), so no
batch-summed parameter gradient is ever formed. The loss is the sum over examples of each
example's own mean NLL over its response tokens, so every example's gradient is exactly
what a batch-size-1 forward/backward of that example alone gives. LM-head logits are
computed only at the positions the loss uses.

Vectors are float32, concatenated in ``lora_parameters(model)`` order, each parameter
flattened row-major. Gradient types: ``sgd`` (raw), ``adam`` (the update AdamW would take
from a checkpoint's moments, as LESS uses), ``sign``. The Adam update has two forms
(`ADAM_FORMS`): LESS's released code and the LESS paper's formula.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F

from influence.constants import ADAM_FORMS, DEFAULT_ADAM_FORM, GRAD_TYPES
from influence.data.formatting import IGNORE_INDEX
from influence.errors import ConfigError, ManifestMismatchError
from influence.lora import lora_parameters


@dataclass(frozen=True)
class AdamMoments:
    """A checkpoint's AdamW state, keyed by LoRA parameter name (as `lora_parameters` names them),
    and the form of the update made from it (`ADAM_FORMS`).

    `step` is the optimizer's step count in the checkpoint; the paper form's bias correction
    uses it: ``m_hat = m' / (1 - b1**step)``, ``v_hat = v' / (1 - b2**step)``.
    """

    exp_avg: Mapping[str, torch.Tensor] = field(metadata={"help": "First moments m, by parameter name."})
    exp_avg_sq: Mapping[str, torch.Tensor] = field(metadata={"help": "Second moments v, by parameter name."})
    step: int = field(default=1, metadata={"help": "Optimizer step count of the checkpoint (>= 1)."})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "AdamW (beta1, beta2)."})
    eps: float = field(default=1e-8, metadata={
        "help": "AdamW epsilon: added to v' under the square root (less form) or to sqrt(v_hat) (paper form)."})
    form: str = field(default=DEFAULT_ADAM_FORM, metadata={
        "help": "Which Adam update: " + "; ".join(f"{k}: {v}" for k, v in ADAM_FORMS.items())})

    def __post_init__(self) -> None:
        if self.form not in ADAM_FORMS:
            raise ConfigError(f"unknown Adam form {self.form!r}; choose one of: {', '.join(ADAM_FORMS)}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"Adam betas must be two numbers in [0, 1), got {self.betas}")
        if int(self.step) < 1:
            raise ConfigError(f"Adam step must be >= 1 (the checkpoint's optimizer step count), got {self.step}")
        if not self.eps > 0:
            raise ConfigError(f"Adam eps must be positive, got {self.eps}")
        if set(self.exp_avg) != set(self.exp_avg_sq):
            raise ManifestMismatchError("the checkpoint's first and second Adam moments name different parameters; "
                                        "the optimizer state is corrupt: re-run warmup for this checkpoint")

    def describe(self) -> dict[str, Any]:
        return {"step": int(self.step), "betas": list(self.betas), "eps": self.eps, "form": self.form}

    @classmethod
    def from_checkpoint(cls, checkpoint: Any, form: str = DEFAULT_ADAM_FORM) -> "AdamMoments":
        """From a warmup checkpoint loaded with its moments (`influence.training.load_checkpoint`)."""
        if not checkpoint.exp_avg:
            raise ConfigError(f"checkpoint {getattr(checkpoint, 'path', '')} was loaded without its Adam moments; "
                              "load it with moments=True")
        return cls(checkpoint.exp_avg, checkpoint.exp_avg_sq, step=checkpoint.step, betas=tuple(checkpoint.betas),
                   eps=checkpoint.eps, form=form)


def adam_update(grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, *, step: int,
                betas: tuple[float, float], eps: float, form: str = DEFAULT_ADAM_FORM) -> torch.Tensor:
    """The Adam update direction for `grad` from moments (broadcast over leading batch dims).

    ``m' = b1 m + (1-b1) g``, ``v' = b2 v + (1-b2) g^2``; form ``less`` returns
    ``m' / sqrt(v' + eps)``, form ``paper`` bias-corrects with `step` and returns
    ``m_hat / (sqrt(v_hat) + eps)``. With eps = 1e-8 the less form floors the denominator
    at 1e-4, so coordinates with a tiny second moment weigh far less than in the paper form.
    """
    if form not in ADAM_FORMS:
        raise ConfigError(f"unknown Adam form {form!r}; choose one of: {', '.join(ADAM_FORMS)}")
    b1, b2 = betas
    m = exp_avg * b1 + grad * (1.0 - b1)
    v = exp_avg_sq * b2 + grad.square() * (1.0 - b2)
    if form == "less":
        return m / (v + eps).sqrt()
    m_hat = m / (1.0 - b1 ** step)
    v_hat = v / (1.0 - b2 ** step)
    return m_hat / (v_hat.sqrt() + eps)


@dataclass(frozen=True)
class ParameterSlot:
    """Where one LoRA parameter sits in the flat gradient vector."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class _LoraLayer:
    """One adapter of one peft LoRA Linear layer: its A and B modules and their slots."""

    lora_A: torch.nn.Linear
    lora_B: torch.nn.Linear
    slot_A: ParameterSlot
    slot_B: ParameterSlot
    captures: list[tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=list)  # per call: (x, h)
    received: int = 0                       # output gradients seen in this backward
    grad_A: torch.Tensor | None = None      # per-example sums over calls, [B, r, in]
    grad_B: torch.Tensor | None = None      # [B, out, r]
    finished: bool = False

    def reset(self) -> None:
        self.captures, self.received, self.grad_A, self.grad_B, self.finished = [], 0, None, None, False


def _resolve_layers(model: Any) -> tuple[list[ParameterSlot], list[_LoraLayer]]:
    """Map every trainable parameter to a (lora_A | lora_B) module of a supported LoRA layer, by name."""
    try:
        # heavy: imported on use, not at start-up
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError as exc:  # peft is a declared dependency; say so if it is broken
        raise ConfigError(f"peft is needed for LoRA gradients: {exc}") from None

    slots: list[ParameterSlot] = []
    offset = 0
    for name, param in lora_parameters(model):
        slots.append(ParameterSlot(name, tuple(param.shape), offset))
        offset += param.numel()

    modules = dict(model.named_modules())
    pairs: dict[tuple[str, str], dict[str, ParameterSlot]] = {}
    for slot in slots:
        parts = slot.name.split(".")
        if len(parts) < 4 or parts[-1] != "weight" or parts[-3] not in ("lora_A", "lora_B"):
            raise ConfigError(f"trainable parameter {slot.name!r} is not a LoRA A/B weight; per-example gradients "
                              "support LoRA adapters only (no modules_to_save, biases or other trainable weights)")
        layer_name, kind, adapter = ".".join(parts[:-3]), parts[-3], parts[-2]
        layer = modules.get(layer_name)
        if not isinstance(layer, LoraLinear):
            raise ConfigError(f"{layer_name!r} is a {type(layer).__name__}, not a peft LoRA Linear layer; "
                              "target Linear modules only (e.g. q_proj, k_proj, v_proj, o_proj)")
        if adapter in getattr(layer, "lora_variant", {}) or getattr(layer, "use_dora", {}).get(adapter, False):
            raise ConfigError(f"{layer_name!r} uses a LoRA variant (DoRA, ...); only plain LoRA is supported")
        pairs.setdefault((layer_name, adapter), {})[kind] = slot

    layers = []
    for (layer_name, adapter), found in pairs.items():
        if set(found) != {"lora_A", "lora_B"}:
            raise ConfigError(f"{layer_name!r} adapter {adapter!r}: lora_A and lora_B must both be trainable")
        layer = modules[layer_name]
        layers.append(_LoraLayer(layer.lora_A[adapter], layer.lora_B[adapter], found["lora_A"], found["lora_B"]))
    return slots, layers


def match_moments(slots: list[ParameterSlot], moments: AdamMoments,
                  device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Pair each LoRA parameter with its (m, v) by name, checking shapes.

    Raises:
        ManifestMismatchError: a parameter has no moment, a moment has no parameter, or shapes differ.
    """
    wanted = [s.name for s in slots]
    missing = [n for n in wanted if n not in moments.exp_avg]
    extra = sorted(set(moments.exp_avg) - set(wanted))
    if missing or extra:
        detail = []
        if missing:
            detail.append(f"{len(missing)} parameter(s) without moments, e.g. {missing[0]!r}")
        if extra:
            detail.append(f"{len(extra)} moment(s) for no parameter, e.g. {extra[0]!r}")
        raise ManifestMismatchError("the checkpoint's Adam moments do not match this model's LoRA parameters ("
                                    + "; ".join(detail) + "); featurize with the model and LoRA settings the "
                                    "checkpoint was trained with")
    out = {}
    for slot in slots:
        m, v = moments.exp_avg[slot.name], moments.exp_avg_sq[slot.name]
        for label, t in (("exp_avg", m), ("exp_avg_sq", v)):
            if tuple(t.shape) != slot.shape:
                raise ManifestMismatchError(f"Adam {label} for {slot.name!r} has shape {tuple(t.shape)}, the parameter "
                                            f"has {slot.shape}; the checkpoint was trained with other LoRA settings "
                                            "(rank or target modules): use those")
        out[slot.name] = (m.detach().to(device=device, dtype=torch.float32),
                          v.detach().to(device=device, dtype=torch.float32))
    return out


def _split_model(model: Any) -> tuple[Any, Any, bool]:
    """(backbone returning hidden states, LM head, whether head(hidden) equals the model's logits)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, getattr(base, "base_model_prefix", ""), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    config = getattr(base, "config", None)
    # Architectures that post-process logits (soft-capping, scaling) take the full forward.
    plain_head = not (getattr(config, "final_logit_softcapping", None) or
                      getattr(config, "logit_scale", None) not in (None, 1.0) or
                      getattr(config, "logits_scaling", None) not in (None, 1.0))
    direct = backbone is not None and head is not None and plain_head and backbone is not base
    return (backbone if direct else model), head, direct


class LoraGradients:
    """Computes per-example LoRA gradient vectors for batches of one model.

    Build once per (model, grad type, moments); call with collated batches. Each layer's
    per-example gradients are formed inside the backward pass, as soon as the gradient at
    its lora_B output is known, then handed on and freed; the only autograd input is the
    input embedding, so no parameter gradient is accumulated and `.grad` stays untouched.
    """

    def __init__(self, model: Any, grad_type: str = "sgd", moments: AdamMoments | None = None):
        if grad_type not in GRAD_TYPES:
            raise ConfigError(f"unknown gradient type {grad_type!r}; choose one of: {', '.join(GRAD_TYPES)}")
        if grad_type == "adam" and moments is None:
            raise ConfigError("gradient type 'adam' needs the checkpoint's Adam moments; pass moments or use 'sgd'")
        if grad_type != "adam" and moments is not None:
            raise ConfigError(f"Adam moments were given but gradient type is {grad_type!r}; use 'adam' or drop them")
        self.model = model
        self.grad_type = grad_type
        self.slots, self._layers = _resolve_layers(model)
        self.dim = sum(s.numel for s in self.slots)
        self.device = lora_parameters(model)[0][1].device
        self._adam = moments
        self._scaled_moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if moments is not None:
            b1, b2 = moments.betas
            # b1 m and b2 v once, so each batch's update is two fused adds and a division.
            self._scaled_moments = {name: (m * b1, v * b2)
                                    for name, (m, v) in match_moments(self.slots, moments, self.device).items()}
        self._backbone, self._head, self._direct = _split_model(model)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._embeddings = base.get_input_embeddings()
        if self._embeddings is None:
            raise ConfigError("the model exposes no input embeddings (get_input_embeddings); unsupported model")
        self._sink: Callable[[torch.Tensor, int], None] | None = None
        self._keep: torch.Tensor | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"grad_type": self.grad_type, "dim": self.dim}
        if self._adam is not None:
            out["adam"] = self._adam.describe()
        return out

    @contextlib.contextmanager
    def _hooks(self) -> Iterator[None]:
        handles = []
        for layer in self._layers:
            layer.reset()

            def on_A(module: Any, args: tuple, output: torch.Tensor, layer: _LoraLayer = layer) -> None:
                layer.captures.append((args[0].detach(), output.detach()))

            def on_B(module: Any, args: tuple, output: torch.Tensor, layer: _LoraLayer = layer) -> None:
                if not layer.captures or not output.requires_grad:
                    raise ConfigError("a LoRA layer's lora_B ran without its lora_A or without autograd; "
                                      "unsupported LoRA layer")
                call = len(layer.captures) - 1
                output.register_hook(lambda dy, layer=layer, call=call: self._on_output_grad(layer, call, dy))

            handles.append(layer.lora_A.register_forward_hook(on_A))
            handles.append(layer.lora_B.register_forward_hook(on_B))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            for layer in self._layers:
                layer.reset()

    def _on_output_grad(self, layer: _LoraLayer, call: int, dy: torch.Tensor) -> None:
        """Backward hook at a lora_B output: add this call's per-example gradients to the layer's."""
        with torch.no_grad():
            x, h = layer.captures[call]
            layer.captures[call] = None
            batch = self._keep.shape[0]
            x, h, dy = (t.float().reshape(batch, -1, t.shape[-1]) for t in (x, h, dy))
            g_B = torch.bmm(dy.transpose(1, 2), h)                                   # [B, out, r]
            g_A = torch.bmm((dy @ layer.lora_B.weight.float()).transpose(1, 2), x)  # [B, r, in]
            layer.grad_A = g_A if layer.grad_A is None else layer.grad_A + g_A
            layer.grad_B = g_B if layer.grad_B is None else layer.grad_B + g_B
            layer.received += 1
            if layer.received == len(layer.captures):
                self._finish(layer)

    def _finish(self, layer: _LoraLayer) -> None:
        """Transform the layer's gradients (sgd/adam/sign) and hand both blocks to the sink."""
        batch = self._keep.shape[0]
        for slot, grad in ((layer.slot_A, layer.grad_A), (layer.slot_B, layer.grad_B)):
            if grad is None:  # the layer did not reach the loss: zero gradient
                grad = torch.zeros((batch, *slot.shape), device=self._keep.device)
            block = self._transform(slot, grad).reshape(batch, -1)
            if not bool(self._keep.all()):
                block = block * self._keep[:, None]
            self._sink(block, slot.offset)
        layer.grad_A = layer.grad_B = None
        layer.finished = True

    def _loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
              embeds: torch.Tensor) -> torch.Tensor:
        """Sum over examples of each example's mean NLL over its response tokens."""
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        counts = mask.sum(dim=1)
        if self._direct:
            hidden = self._backbone(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)[0]
            logits = self._head(hidden[:, :-1][mask])
        else:
            logits = self._backbone(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).logits
            logits = logits[:, :-1][mask]
        nll = F.cross_entropy(logits.float(), targets[mask], reduction="none")
        rows = mask.nonzero()[:, 0]
        weights = 1.0 / counts.clamp(min=1).to(nll.dtype)
        return (nll * weights[rows]).sum()

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, *,
                 sink: Callable[[torch.Tensor, int], None] | None = None) -> torch.Tensor | None:
        """Per-example gradient vectors [B, dim] float32 of a right-padded batch (see `collate`).

        Examples with no response token get a zero vector (for every gradient type). With
        `sink`, nothing is returned: each parameter's block [B, numel] is handed to
        ``sink(block, offset)`` as soon as it is computed (in no fixed order), so no
        [B, dim] buffer is formed.
        """
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        labels = labels.to(self.device)
        batch = input_ids.shape[0]
        out = None
        if sink is None:
            out = torch.zeros(batch, self.dim, dtype=torch.float32, device=self.device)

            def sink(block: torch.Tensor, offset: int) -> None:
                out[:, offset:offset + block.shape[1]] = block

        self._keep = (labels[:, 1:] != IGNORE_INDEX).any(dim=1)  # no response token: no gradient
        self._sink = sink
        was_training = self.model.training
        self.model.eval()  # dropout off: the gradient of the model as it is
        try:
            if not bool(self._keep.any()):
                for slot in self.slots:
                    sink(torch.zeros(batch, slot.numel, device=self.device), slot.offset)
                return out
            with self._hooks():
                with torch.enable_grad():
                    embeds = self._embeddings(input_ids).detach().requires_grad_(True)
                    loss = self._loss(input_ids, attention_mask, labels, embeds)
                    torch.autograd.grad(loss, [embeds])
                with torch.no_grad():
                    for layer in self._layers:
                        if not layer.finished:
                            self._finish(layer)
        finally:
            self._sink = self._keep = None
            self.model.train(was_training)
        return out

    def _transform(self, slot: ParameterSlot, grad: torch.Tensor) -> torch.Tensor:
        if self.grad_type == "sgd":
            return grad
        if self.grad_type == "sign":
            return torch.sign(grad)
        # adam_update's formula, fused in place: m' = b1 m + (1-b1) g, v' = b2 v + (1-b2) g^2.
        b1, b2 = self._adam.betas
        b1_m, b2_v = self._scaled_moments[slot.name]
        v = torch.addcmul(b2_v, grad, grad, value=1.0 - b2)
        m = grad.mul_(1.0 - b1).add_(b1_m)
        if self._adam.form == "less":
            return m.div_(v.add_(self._adam.eps).sqrt_())
        step = int(self._adam.step)
        v.div_(1.0 - b2 ** step).sqrt_().add_(self._adam.eps)
        return m.div_(1.0 - b1 ** step).div_(v)


def per_example_gradients(model: Any, batch: Mapping[str, torch.Tensor], grad_type: str = "sgd",
                          moments: AdamMoments | None = None) -> torch.Tensor:
    """Per-example LoRA gradient vectors [B, P] float32 for one collated batch.

    Args:
        model: a peft LoRA-wrapped causal LM.
        batch: `collate` output: input_ids, attention_mask, labels (-100 outside the response).
        grad_type: "sgd", "adam" or "sign".
        moments: the checkpoint's AdamW moments, required for "adam".
    Raises:
        ConfigError: unsupported adapters or settings. ManifestMismatchError: moments do not fit the model.
    """
    return LoraGradients(model, grad_type, moments)(batch["input_ids"], batch["attention_mask"], batch["labels"])
