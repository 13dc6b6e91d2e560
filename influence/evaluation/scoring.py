"""What the model does with evaluation items: reference NLL, option log-likelihoods, greedy answers.

Batched and length-sorted. Prompts longer than the model's budget lose their oldest tokens
(the start of the few-shot context), never the question or the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from influence.data.example import Example
from influence.data.formatting import IGNORE_INDEX, Encoded, collate, encode_example, encode_prompt
from influence.evaluation.tasks import EvalItem


@dataclass
class ReferenceScores:
    """Per item: summed NLL of the reference response and its token count; option log-likelihoods."""

    nll: list[float]
    tokens: list[int]
    option_loglik: list[list[float]] | None
    truncated: int


def _as_example(item: EvalItem, response: str = "") -> Example:
    return Example(instruction=item.prompt, input="", output=response, subtask=item.subtask)


def _keep_last(encoded: Encoded, max_length: int) -> tuple[Encoded, bool]:
    if len(encoded.input_ids) <= max_length:
        return encoded, False
    return Encoded(encoded.input_ids[-max_length:], encoded.labels[-max_length:], True), True


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i: i + size] for i in range(0, len(order), size)]


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def reference_scores(model: Any, tokenizer: Any, items: Sequence[EvalItem], *, max_length: int, batch_size: int,
                     progress: bool = False) -> ReferenceScores:
    """NLL of each item's reference answer (as a response, end-of-turn marker included) given its prompt.

    For items with options (MMLU letters) the same pass also gives each option's
    log-likelihood as the first response token, when every option is one token; otherwise
    each option is scored as its own continuation of the prompt.
    """
    import torch

    encoded, truncated = [], 0
    for item in items:
        row, cut = _keep_last(encode_example(_as_example(item, item.reference), tokenizer, max_length=1 << 30),
                              max_length)
        encoded.append(row)
        truncated += cut
    option_ids = _single_token_options(tokenizer, items, encoded)
    nll, tokens = [0.0] * len(items), [0] * len(items)
    loglik: list[list[float]] | None = [[] for _ in items] if any(item.options for item in items) else None
    order = sorted(range(len(items)), key=lambda i: -len(encoded[i].input_ids))
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch_indices in _progress(_batches(order, batch_size), progress, "target loss"):
            batch = {k: v.to(device) for k, v in collate([encoded[i] for i in batch_indices],
                                                          _pad_id(tokenizer)).items()}
            logits, targets = _response_logits(model, batch)
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            mask = targets != IGNORE_INDEX
            picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            row_nll = -(picked * mask).sum(dim=1)
            first = mask.float().argmax(dim=1)
            for row, index in enumerate(batch_indices):
                nll[index] = float(row_nll[row])
                tokens[index] = int(mask[row].sum())
                if loglik is not None and option_ids is not None and items[index].options:
                    loglik[index] = logprobs[row, first[row], option_ids[index]].tolist()
    if loglik is not None and option_ids is None:
        loglik = option_logliks(model, tokenizer, items, max_length=max_length, batch_size=batch_size,
                                progress=progress)
    return ReferenceScores(nll=nll, tokens=tokens, option_loglik=loglik, truncated=truncated)


def _response_logits(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    from influence.training.loss import response_logits

    return response_logits(model, batch)


def _single_token_options(tokenizer: Any, items: Sequence[EvalItem], encoded: list[Encoded]) -> list[list[int]] | None:
    """Per item, each option's single token id, if every option is one token and the reference starts the response."""
    ids: list[list[int]] = []
    for item, row in zip(items, encoded):
        if not item.options:
            ids.append([])
            continue
        tokens = [tokenizer(option, add_special_tokens=False)["input_ids"] for option in item.options]
        if any(len(t) != 1 for t in tokens) or item.reference not in item.options:
            return None
        response = [label for label in row.labels if label != IGNORE_INDEX]
        if not response or response[0] != tokens[item.options.index(item.reference)][0]:
            return None
        ids.append([t[0] for t in tokens])
    return ids


def option_logliks(model: Any, tokenizer: Any, items: Sequence[EvalItem], *, max_length: int, batch_size: int,
                   progress: bool = False) -> list[list[float]]:
    """Each option's summed log-probability as a continuation of the prompt (the general, slower path)."""
    import torch

    from influence.training.loss import example_nll

    rows, owners = [], []
    for index, item in enumerate(items):
        prompt_ids = encode_prompt(_as_example(item), tokenizer)
        for option in item.options:
            option_ids = tokenizer(option, add_special_tokens=False)["input_ids"]
            row = Encoded(prompt_ids + option_ids, [IGNORE_INDEX] * len(prompt_ids) + option_ids, False)
            rows.append(_keep_last(row, max_length)[0])
            owners.append(index)
    out: list[list[float]] = [[] for _ in items]
    scores = [0.0] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].input_ids))
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch_indices in _progress(_batches(order, batch_size), progress, "options"):
            batch = {k: v.to(device) for k, v in collate([rows[i] for i in batch_indices], _pad_id(tokenizer)).items()}
            nll, _ = example_nll(model, batch)
            for row, index in enumerate(batch_indices):
                scores[index] = -float(nll[row])
    for index, owner in enumerate(owners):
        out[owner].append(scores[index])
    return out


def generate_answers(model: Any, tokenizer: Any, items: Sequence[EvalItem], *, max_new_tokens: int | Sequence[int],
                     max_length: int, batch_size: int, progress: bool = False) -> list[str]:
    """Greedy answers, batched with left padding; special tokens dropped from the text.

    `max_new_tokens` may be one number or one per item (a batch uses its largest).
    """
    import torch

    budgets = [max_new_tokens] * len(items) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    prompts = []
    for item, budget in zip(items, budgets):
        ids = encode_prompt(_as_example(item), tokenizer)
        prompts.append(ids[-max(1, max_length - budget):])
    order = sorted(range(len(items)), key=lambda i: -len(prompts[i]))
    answers = [""] * len(items)
    pad = _pad_id(tokenizer)
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch_indices in _progress(_batches(order, batch_size), progress, "generate"):
            width = max(len(prompts[i]) for i in batch_indices)
            input_ids = torch.full((len(batch_indices), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch_indices), width), dtype=torch.long)
            for row, index in enumerate(batch_indices):
                ids = prompts[index]
                input_ids[row, width - len(ids):] = torch.tensor(ids)
                attention[row, width - len(ids):] = 1
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                    max_new_tokens=max(budgets[i] for i in batch_indices), do_sample=False,
                                    pad_token_id=pad, num_beams=1)
            eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
            stop = {t for t in [tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])]
                    if isinstance(t, int)}
            for row, index in enumerate(batch_indices):
                new = output[row, width:].tolist()
                end = next((i for i, t in enumerate(new) if t in stop), len(new))
                answers[index] = tokenizer.decode(new[:end], skip_special_tokens=True)
    return answers


def _progress(batches: list[Any], enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(batches, desc=desc, unit="batch", disable=not enabled, leave=False)
