"""What an evaluation is made of: held-out items (prompt, reference, how each is read) and the task holding them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from influence.errors import EvaluationError

KINDS = ("choice", "bbh", "qa", "generation", "cot")
# how a prompt reaches the model: the reference protocols of LESS's released evaluation scripts
# (raw few-shot text for MMLU and BBH, the chat turn for TyDi QA), or every prompt as a chat turn
PROTOCOLS = ("reference", "chat")


@dataclass(frozen=True)
class EvalItem:
    """One held-out question, ready for the model.

    The model reads `prompt` (as a user turn through the model's own formatting when `chat`, else
    as raw text), then `answer_prefix`, which opens the answer in both the generation and the loss
    pass; the loss pass reads `loss_prefix` too, then scores `answer_lead + reference` only.
    """

    subtask: str
    prompt: str                      # the user turn (chat) or the raw text, few-shot context included
    reference: str                   # the answer whose NLL is the target loss
    answers: tuple[str, ...] = ()    # every accepted answer (exact match, F1)
    options: tuple[str, ...] = ()    # choice tasks: the candidates scored by log-likelihood
    chat: bool = True                # the prompt is a user turn in the model's format; False: raw text
    answer_prefix: str = ""          # opens the answer (TyDi QA's "Answer:" label); read, never scored
    loss_prefix: str = ""            # read before the scored answer in the loss pass only (BBH's answer phrase)
    answer_lead: str = ""            # joined before the reference and each option when scored (" " after "Answer:")

    @property
    def scored_text(self) -> str:
        """The text whose tokens the target loss counts."""
        return self.answer_lead + self.reference


# fits the chosen items to a tokenizer and token budget (drops shots, cuts passages), as the protocol does
Fit = Callable[[list[EvalItem], Any, int], list[EvalItem]]


@dataclass
class EvalTask:
    """A target's evaluation items and how to score them."""

    name: str
    kind: str
    items: list[EvalItem]
    notes: list[str] = field(default_factory=list)
    stop: str | None = None          # where a greedy answer ends (a regular expression); None: end of sequence
    protocol: str = "chat"
    per_subtask: int | None = None   # without --limit: a seeded sample of at most this many items per subtask
    fit: Fit | None = None           # the protocol's own length handling, applied once the tokenizer is known
    answer_tokens: int | None = None  # the protocol's greedy answer budget (None: the settings decide)
    default_metrics: tuple[str, ...] | None = None  # measured when none are asked for; None: the kind's own,
    #                                                  (): the target loss alone (generation is opt-in)
    split: dict[str, Any] | None = None  # a split target's seed and part sizes

    def subset(self, limit: int | None, seed: int) -> list[EvalItem]:
        """A seeded random subset of `limit` items; without a limit, at most `per_subtask` per subtask
        (all of them when that is None); in the original order either way."""
        return [self.items[i] for i in self.subset_indices(limit, seed)]

    def subset_indices(self, limit: int | None, seed: int) -> list[int]:
        """The positions in `items` of `subset(limit, seed)`, ascending."""
        if limit is not None and limit <= 0:
            raise EvaluationError(f"--limit must be positive, got {limit}")
        rng = np.random.default_rng(seed)
        if limit is None and self.per_subtask is not None:
            groups: dict[str, list[int]] = {}
            for index, item in enumerate(self.items):
                groups.setdefault(item.subtask, []).append(index)
            return sorted(i for indices in groups.values()
                          for i in (indices if len(indices) <= self.per_subtask
                                    else rng.choice(indices, size=self.per_subtask, replace=False).tolist()))
        if limit is None or limit >= len(self.items):
            return list(range(len(self.items)))
        return sorted(rng.choice(len(self.items), size=limit, replace=False).tolist())

    def fitted(self, items: list[EvalItem], tokenizer: Any, max_length: int) -> list[EvalItem]:
        """The items as the protocol sends them to this tokenizer within `max_length` tokens."""
        return self.fit(items, tokenizer, max_length) if self.fit is not None else items
