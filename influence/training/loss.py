"""The per-example response NLL the trainer and evaluation use; it lives in `influence.loss`,
below the selectors, so that forward-only selectors (IFD) measure the same thing."""

from influence.loss import accepts_logits_to_keep, example_nll, response_logits

__all__ = ["accepts_logits_to_keep", "example_nll", "response_logits"]
