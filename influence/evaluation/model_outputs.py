"""What the model does with evaluation items: reference NLL, option log-likelihoods, greedy answers.

Batched and length-sorted: a subtask whose items share a prompt prefix (the few-shot context)
runs it once and batches its items together; every other item is batched by length with the
rest, whatever its subtask. Prompts longer than the model's budget lose their oldest tokens
(the start of the few-shot context), never the question or the answer.
"""

from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator, Sequence

from influence.data.formatting import IGNORE_INDEX, Encoded, collate
from influence.evaluation.encoding import continuation_ids, encode_item, item_prompt_ids
from influence.evaluation.items import EvalItem
from influence.training.loss import accepts_logits_to_keep, response_logits

_log = logging.getLogger(__name__)


@dataclass
class ReferenceScores:
    """Per item: summed NLL of the reference response and its token count; option log-likelihoods."""

    nll: list[float]
    tokens: list[int]
    option_loglik: list[list[float]] | None
    truncated: int


def _keep_last(encoded: Encoded, max_length: int) -> tuple[Encoded, bool]:
    if len(encoded.input_ids) <= max_length:
        return encoded, False
    return Encoded(encoded.input_ids[-max_length:], encoded.labels[-max_length:], True), True


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i: i + size] for i in range(0, len(order), size)]


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def reference_scores(model: Any, tokenizer: Any, items: Sequence[EvalItem], *, max_length: int, batch_size: int,
                     progress: bool = False, reuse_prefix: bool = True) -> ReferenceScores:
    """NLL of each item's scored answer given its prompt: the answer's tokens only, no end-of-turn marker
    (see `influence.evaluation.encoding`).

    For items with options (MMLU letters) the same pass also gives each option's
    log-likelihood as the first answer token, when every option is one token; otherwise
    each option is scored as its own continuation of the prompt. With `reuse_prefix`, the
    tokens a subtask's items share (the few-shot context) run once per subtask.
    """
    # heavy: imported on use, not at start-up
    import torch

    encoded, truncated = [], 0
    for item in items:
        row, cut = _keep_last(encode_item(item, tokenizer), max_length)
        encoded.append(row)
        truncated += cut
    option_ids = _single_token_options(tokenizer, items, encoded)
    nll, tokens = [0.0] * len(items), [0] * len(items)
    loglik: list[list[float]] | None = [[] for _ in items] if any(item.options for item in items) else None
    groups = _subtask_groups(items)
    with torch.no_grad():
        for batch_indices, logits, targets in _response_batches(model, encoded, groups, batch_size=batch_size,
                                                                pad_id=_pad_id(tokenizer), reuse_prefix=reuse_prefix,
                                                                progress=progress, desc="target loss"):
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
                                progress=progress, reuse_prefix=reuse_prefix)
    return ReferenceScores(nll=nll, tokens=tokens, option_loglik=loglik, truncated=truncated)


# ------------------------------------------------------------------ shared prefixes
MIN_SHARED_PREFIX = 16  # tokens; a shorter common prefix is recomputed with each item


@dataclass
class SharedPrefix:
    """The first `length` tokens common to a group of sequences, run once: their keys and values per layer."""

    length: int
    states: list[tuple[Any, Any]]   # per layer: keys and values [1, heads, length, head_dim]
    config: Any
    model_type: type                # the model's forward takes the cache by a version-dependent name

    def cache(self, batch: int) -> Any:
        """A cache holding the prefix for `batch` rows: broadcast views of the one copy, no copy per row."""
        # heavy: imported on use, not at start-up
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=self.states, config=self.config)
        for layer in cache.layers:
            layer.keys = layer.keys.expand(batch, -1, -1, -1)
            layer.values = layer.values.expand(batch, -1, -1, -1)
        return cache

    def forward_kwargs(self, attention_mask: Any) -> dict[str, Any]:
        """What a forward over a batch continuing the prefix needs: the cache, the mask over both, positions."""
        # heavy: imported on use, not at start-up
        import torch

        rows = attention_mask.shape[0]
        ones = torch.ones((rows, self.length), dtype=attention_mask.dtype, device=attention_mask.device)
        return {cache_argument(self.model_type): self.cache(rows), "use_cache": True,
                "attention_mask": torch.cat([ones, attention_mask], dim=1),
                "position_ids": self.length + (attention_mask.cumsum(dim=1) - 1).clamp(min=0)}


def shared_prefix_length(sequences: Sequence[Sequence[int]], limit: int) -> int:
    """Length of the longest token prefix common to every sequence, at most `limit`.

    Comparing the finished token ids (not a separately tokenised prefix text) makes the shared
    tokens exactly those each full sequence starts with, whatever the tokenizer does at the
    boundary between the few-shot context and the item.
    """
    first = sequences[0]
    length = min([limit, *(len(s) for s in sequences)])
    for other in sequences[1:]:
        length = next((i for i in range(length) if other[i] != first[i]), length)
    return max(length, 0)


def encode_prefix(model: Any, ids: Sequence[int]) -> SharedPrefix | None:
    """Run `ids` once and keep its keys and values; None where the model's cache is not a plain one.

    Sliding-window layers drop old keys, so a prefix cannot be shared there: the caller then
    runs every item in full (the exact path).
    """
    # heavy: imported on use, not at start-up
    import torch

    config = model.config
    cache = new_cache(config)
    layers = getattr(cache, "layers", None)
    if layers is None or any(getattr(layer, "is_sliding", False) for layer in layers):
        _log.info("prefix reuse is off for %s (sliding-window layers, or a transformers without cache layers): "
                  "every item runs in full", type(model).__name__)
        return None
    device = next(model.parameters()).device
    base = _base_type(model)
    model(input_ids=torch.tensor([list(ids)], device=device), use_cache=True, **{cache_argument(base): cache},
          **_last_logit_only(model))
    states = [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in cache.layers]
    if not states or any(k is None or k.shape[-2] != len(ids) for k, _ in states):
        return None
    return SharedPrefix(length=len(ids), states=states, config=config, model_type=base)


def new_cache(config: Any) -> Any:
    """An empty key/value cache laid out for `config` (older transformers take no config)."""
    # heavy: imported on use, not at start-up
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:
        return DynamicCache()


@lru_cache(maxsize=32)
def cache_argument(model_type: type) -> str:
    """The name under which the model's forward takes its key/value cache ("cache" from transformers 5.x)."""
    try:
        return "cache" if "cache" in inspect.signature(model_type.forward).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"


def _base_type(model: Any) -> type:
    return type(model.get_base_model() if hasattr(model, "get_base_model") else model)


def _last_logit_only(model: Any) -> dict[str, Any]:
    return {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}


def _subtask_groups(items: Sequence[EvalItem], owners: Sequence[int] | None = None) -> list[list[int]]:
    """Row indices grouped by their item's subtask (rows are items, or belong to items[owners[row]])."""
    owners = list(range(len(items))) if owners is None else owners
    groups: dict[str, list[int]] = {}
    for row, owner in enumerate(owners):
        groups.setdefault(items[owner].subtask, []).append(row)
    return list(groups.values())


def plan_groups(sequences: Sequence[Sequence[int]], groups: list[list[int]], limits: Sequence[int],
                reuse_prefix: bool) -> tuple[list[tuple[list[int], int]], list[int]]:
    """Split rows into groups worth running after their shared prefix, and the rest.

    A group runs apart only when its rows share at least MIN_SHARED_PREFIX tokens beyond what
    every row shares (a chat template's system prompt is shared by all items, and is no reason
    to keep a subtask's few items in small batches of their own). All other rows are pooled and
    batched by length across groups, after the prefix they all share when that is long enough.

    Returns (each group to run after a shared prefix, with that length, at most the group's limit),
    and the rows that run in full.
    """
    if not reuse_prefix:
        return [], [row for group in groups for row in group]
    every = [row for group in groups for row in group]
    common = shared_prefix_length([sequences[r] for r in every], min(limits)) if len(every) > 1 else 0
    shared, loose, loose_limit = [], [], None
    for group, limit in zip(groups, limits):
        length = shared_prefix_length([sequences[r] for r in group], limit) if len(group) > 1 else 0
        if length >= MIN_SHARED_PREFIX and length - common >= MIN_SHARED_PREFIX:
            shared.append((group, length))
        else:
            loose.extend(group)
            loose_limit = limit if loose_limit is None else min(loose_limit, limit)
    if len(loose) > 1:
        length = shared_prefix_length([sequences[r] for r in loose], loose_limit)
        if length >= MIN_SHARED_PREFIX:
            return [*shared, (loose, length)], []
    return shared, loose


def _planned_batches(model: Any, sequences: Sequence[Sequence[int]], groups: list[list[int]], limits: Sequence[int],
                     *, batch_size: int, reuse_prefix: bool, progress: bool,
                     desc: str) -> Iterator[tuple[list[int], SharedPrefix | None]]:
    """(rows, the prefix they continue or None), every row once: a shared prefix's group in batches of its own,
    all other rows batched by length, longest first."""
    shared, loose = plan_groups(sequences, groups, limits, reuse_prefix)
    count = sum(-(-len(g) // batch_size) for g, _ in shared) + -(-len(loose) // batch_size)
    by_length = lambda r: -len(sequences[r])  # noqa: E731
    with _progress_bar(count, progress, desc) as bar:
        for group, length in shared:
            prefix = encode_prefix(model, sequences[group[0]][:length])
            if prefix is None:   # the model cannot share a cache: these rows run in full with the rest
                loose.extend(group)
                continue
            for batch in _batches(sorted(group, key=by_length), batch_size):
                yield batch, prefix
                bar.update()
        for batch in _batches(sorted(loose, key=by_length), batch_size):
            yield batch, None
            bar.update()


def _response_batches(model: Any, rows: list[Encoded], groups: list[list[int]], *, batch_size: int, pad_id: int,
                      reuse_prefix: bool, progress: bool, desc: str) -> Iterator[tuple[list[int], Any, Any]]:
    """(row indices, logits, targets) as `response_logits` gives them, for every row, batched as planned.

    A group's shared prefix stops before the position that predicts its first labelled token,
    so every needed logit comes from a row's own tokens.
    """
    device = next(model.parameters()).device
    limits = [min(next((i for i, label in enumerate(rows[r].labels) if label != IGNORE_INDEX),
                       len(rows[r].labels)) for r in group) - 1 for group in groups]
    for batch, prefix in _planned_batches(model, [row.input_ids for row in rows], groups, limits,
                                          batch_size=batch_size, reuse_prefix=reuse_prefix, progress=progress,
                                          desc=desc):
        yield batch, *_batch_logits(model, rows, batch, prefix, pad_id, device)


def _batch_logits(model: Any, rows: list[Encoded], batch: list[int], prefix: SharedPrefix | None, pad_id: int,
                  device: Any) -> tuple[Any, Any]:
    start = prefix.length if prefix is not None else 0
    tensors = collate([Encoded(rows[r].input_ids[start:], rows[r].labels[start:], False) for r in batch], pad_id)
    tensors = {k: v.to(device) for k, v in tensors.items()}
    extra = prefix.forward_kwargs(tensors["attention_mask"]) if prefix is not None else {}
    return response_logits(model, tensors, **extra)


def _single_token_options(tokenizer: Any, items: Sequence[EvalItem], encoded: list[Encoded]) -> list[list[int]] | None:
    """Per item, each option's single token id, if every option is one token and the reference starts the response."""
    ids: list[list[int]] = []
    for item, row in zip(items, encoded):
        if not item.options:
            ids.append([])
            continue
        tokens = [continuation_ids(item, tokenizer, option) for option in item.options]
        if any(len(t) != 1 for t in tokens) or item.reference not in item.options:
            return None
        response = [label for label in row.labels if label != IGNORE_INDEX]
        if not response or response[0] != tokens[item.options.index(item.reference)][0]:
            return None
        ids.append([t[0] for t in tokens])
    return ids


def option_logliks(model: Any, tokenizer: Any, items: Sequence[EvalItem], *, max_length: int, batch_size: int,
                   progress: bool = False, reuse_prefix: bool = True) -> list[list[float]]:
    """Each option's summed log-probability as a continuation of the prompt (the general, slower path)."""
    # heavy: imported on use, not at start-up
    import torch

    rows, owners = [], []
    for index, item in enumerate(items):
        prompt_ids = item_prompt_ids(item, tokenizer, loss=True)
        for option in item.options:
            option_ids = continuation_ids(item, tokenizer, option)
            row = Encoded(prompt_ids + option_ids, [IGNORE_INDEX] * len(prompt_ids) + option_ids, False)
            rows.append(_keep_last(row, max_length)[0])
            owners.append(index)
    out: list[list[float]] = [[] for _ in items]
    scores = [0.0] * len(rows)
    groups = _subtask_groups(items, owners)
    with torch.no_grad():
        for batch_indices, logits, targets in _response_batches(model, rows, groups, batch_size=batch_size,
                                                                pad_id=_pad_id(tokenizer), reuse_prefix=reuse_prefix,
                                                                progress=progress, desc="options"):
            nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), targets,
                                                    ignore_index=IGNORE_INDEX, reduction="none").sum(dim=1)
            for row, index in enumerate(batch_indices):
                scores[index] = -float(nll[row])
    for index, owner in enumerate(owners):
        out[owner].append(scores[index])
    return out


def generate_answers(model: Any, tokenizer: Any, items: Sequence[EvalItem], *, max_new_tokens: int | Sequence[int],
                     max_length: int, batch_size: int, progress: bool = False, stop: str | None = None,
                     reuse_prefix: bool = True) -> list[str]:
    """Greedy answers, batched, with a key/value cache; special tokens dropped from the text.

    Args:
        max_new_tokens: one budget, or one per item.
        stop: a regular expression (case-insensitive) that ends an answer: a row stops at the first
            new token after which its text matches, and keeps the text up to the match's end. Rows
            also stop at an end-of-sequence token or at their budget; finished rows leave the batch.
        reuse_prefix: run the prompt tokens a subtask's items share once per subtask.
    """
    # heavy: imported on use, not at start-up
    import torch

    budgets = [max_new_tokens] * len(items) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    prompts = [item_prompt_ids(item, tokenizer)[-max(1, max_length - budget):]
               for item, budget in zip(items, budgets)]
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ends = {t for t in [tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])] if isinstance(t, int)}
    decoder = _Decoder(tokenizer, re.compile(stop, re.IGNORECASE) if stop else None)
    groups = _subtask_groups(items)
    limits = [min(len(prompts[i]) for i in group) - 1 for group in groups]
    answers = [""] * len(items)
    device = next(model.parameters()).device
    with torch.no_grad():
        for batch, prefix in _planned_batches(model, prompts, groups, limits, batch_size=batch_size,
                                              reuse_prefix=reuse_prefix, progress=progress, desc="generate"):
            start = prefix.length if prefix is not None else 0
            texts = _greedy(model, [prompts[i][start:] for i in batch], [budgets[i] for i in batch], prefix,
                            pad_id=_pad_id(tokenizer), ends=ends, decoder=decoder, device=device)
            for index, text in zip(batch, texts):
                answers[index] = text
    return answers


@dataclass
class _Decoder:
    """Token ids to answer text, cut at the stop pattern's first match."""

    tokenizer: Any
    stop: Any   # a compiled pattern or None

    def text(self, ids: list[int]) -> tuple[str, bool]:
        """(the text, whether the stop pattern ended it)."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        found = self.stop.search(text) if self.stop is not None else None
        return (text[:found.end()], True) if found else (text, False)


def _greedy(model: Any, prompts: list[list[int]], budgets: list[int], prefix: SharedPrefix | None, *, pad_id: int,
            ends: set[int], decoder: _Decoder, device: Any) -> list[str]:
    """Greedy continuations of left-padded prompts (after `prefix` when given), one token per step for every row."""
    # heavy: imported on use, not at start-up
    import torch

    rows, width = len(prompts), max(len(p) for p in prompts)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        mask[row, width - len(ids):] = 1
    mask = mask.to(device)
    name = cache_argument(_base_type(model))
    if prefix is not None:
        kwargs = prefix.forward_kwargs(mask)
    else:
        kwargs = {name: new_cache(model.config), "use_cache": True, "attention_mask": mask,
                  "position_ids": (mask.cumsum(dim=1) - 1).clamp(min=0)}
    cache, attention, positions = kwargs[name], kwargs["attention_mask"], kwargs["position_ids"][:, -1:]
    extra = _last_logit_only(model)
    logits = model(input_ids=input_ids.to(device), **kwargs, **extra).logits[:, -1]
    generated: list[list[int]] = [[] for _ in range(rows)]
    texts = [""] * rows
    active = list(range(rows))   # the rows still generating, in the cache's batch order
    for _ in range(max(budgets)):
        chosen = logits.float().argmax(dim=-1).tolist()
        keep = []
        for slot, row in enumerate(active):
            if chosen[slot] in ends:
                continue
            generated[row].append(chosen[slot])
            stopped = False
            if decoder.stop is not None:
                texts[row], stopped = decoder.text(generated[row])
            if not stopped and len(generated[row]) < budgets[row]:
                keep.append(slot)
        if not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            attention, positions = attention[index], positions[index]
            active = [active[slot] for slot in keep]
        attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
        positions = positions + 1
        step = torch.tensor([[chosen[slot]] for slot in keep], device=device)
        logits = model(input_ids=step, attention_mask=attention, position_ids=positions, use_cache=True,
                       **{name: cache}, **extra).logits[:, -1]
    if decoder.stop is None:
        texts = [decoder.text(ids)[0] for ids in generated]
    return texts


def _progress_bar(total: int, enabled: bool, desc: str) -> Any:
    # heavy: imported on use, not at start-up
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=not enabled, leave=False)
