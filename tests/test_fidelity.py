"""LESS fidelity: the batched engine against an independent batch-size-1 computation written out here.

The reference below shares no gradient, Adam or scoring code with `influence.features`: it
loads each warmup checkpoint with peft's own `PeftModel.from_pretrained`, reads the Adam
moments straight from the checkpoint's safetensors, takes one `loss.backward()` per example,
applies LESS's released Adam transform m' / sqrt(v' + eps) (no bias correction), normalises,
averages each subtask's target gradients and takes the LR-weighted sum and the max over
subtasks. Its target examples are two BBH tasks worded here from LESS's own three-shot file
as LESS's `get_bbh_dataset` words them (task prompt, the other two exemplars in full, the
question; "A:" opens the answer, which alone is scored), inside the model's chat template.
Our unprojected score must equal it to float32 precision; our projected features must be its
gradients pushed through our projector, and our projected scores must lie within the
Johnson-Lindenstrauss error of the projection.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from influence.data import Example
from influence.data.formatting import encode_example
from influence.data.pools import Pool, PoolSource
from influence.data.targets import Target, load_target
from influence.data.vendored import bundle
from influence.features.datastore import FeatureStore
from influence.less import LessSettings, less_run
from influence.models import LoadedModel
from influence.scoring import less_scores
from influence.testing import tiny_model_and_tokenizer

DIMS = 2048


def _pool() -> Pool:
    examples = [Example(f"What is {a} plus {b}?", "", f"{a} plus {b} is {a + b}.") for a, b in [(3, 4), (12, 30)]]
    examples += [Example(f"Name a word that rhymes with {w}.", "", f"{w.capitalize()} rhymes with {r}.")
                 for w, r in [("cat", "hat"), ("stone", "bone"), ("light", "night")]]
    examples += [Example("Write about the sea.", "", "The sea is wide and grey, and it never sleeps."),
                 Example("Count to five.", "", "One, two, three, four, five."),
                 Example("Spell 'river' backwards.", "", "r-e-v-i-r"),
                 Example("Give a colour.", "", "Green, like leaves in spring."),
                 Example("Translate 'cat' into French.", "", "Chat.")]
    return Pool(examples=examples, sources=[PoolSource("toy", "test", len(examples), 0, len(examples))])


BBH_TASKS = ("sports_understanding", "date_understanding")  # the two shortest prompts: seconds on the tiny model
MAX_LENGTH = 2048


def _bbh_target() -> Target:
    """The toolkit's bbh target, cut to BBH_TASKS."""
    target = load_target("bbh")
    return Target("bbh", [e for e in target.examples if e.subtask in BBH_TASKS])


def _less_bbh_texts(tokenizer) -> dict[str, list[tuple[str, str]]]:
    """Per task, (prompt, scored completion) as LESS's get_bbh_dataset builds them from its three-shot
    file, its tulu "<|user|>...<|assistant|>" wrapping replaced by this tokenizer's chat template."""
    raw = json.loads(bundle("bbh")["targets/bbh/less/bbh-three-shot.json"])
    out = {}
    for task in BBH_TASKS:
        blocks = raw[task].split("\n\n")
        task_prompt, shots = "\n\n".join(blocks[:-3]), blocks[-3:]
        texts = []
        for i, shot in enumerate(shots):
            icl = "".join(other + "\n\n" for j, other in enumerate(shots) if j != i)
            question, answer = shot.split("\nA:")
            query = task_prompt.strip() + "\n\n" + icl + question
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": query}], tokenize=False,
                                                   add_generation_prompt=True) + "A:"
            texts.append((prompt, answer))  # LESS scores the answer alone: no end of turn, no EOS
        out[task] = texts
    return out


def _tokens(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """Token ids and labels: -100 on the prompt, the completion scored."""
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    tail = tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert len(head) + len(tail) <= MAX_LENGTH
    return head + tail, [-100] * len(head) + tail


def _reference_gradients(model, encoded):
    """One forward/backward per example through peft's model: [N, P] float64 raw gradients."""
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    rows = []
    for ids, labels in encoded:
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        loss.backward()
        rows.append(torch.cat([p.grad.reshape(-1) for _, p in params]).double())
    return [name for name, _ in params], torch.stack(rows)


def _reference(workdir: Path, base_model, tokenizer, pool: Pool):
    """The LESS score, computed plainly: (scores [N], per checkpoint the Adam pool gradients [N, P])."""
    from peft import PeftModel
    from safetensors.torch import load_file

    checkpoints = sorted((workdir / "warmup" / "checkpoints").glob("epoch-*"), key=lambda p: int(p.name[6:]))
    assert checkpoints
    states = [json.loads((c / "state.json").read_text()) for c in checkpoints]
    lrs = np.array([s["avg_lr"] for s in states])
    weights = lrs / lrs.sum()
    pool_tokens = []
    for example in pool.examples:  # the pool's wording is not in question: the toolkit's encoding
        encoded = encode_example(example, tokenizer, MAX_LENGTH)
        pool_tokens.append((encoded.input_ids, encoded.labels))
    target_tokens, subtasks = [], {}
    for task, texts in _less_bbh_texts(tokenizer).items():
        for prompt, completion in texts:
            subtasks.setdefault(task, []).append(len(target_tokens))
            target_tokens.append(_tokens(tokenizer, prompt, completion))
    total, pool_updates = 0.0, []
    for checkpoint, state, weight in zip(checkpoints, states, weights):
        model = PeftModel.from_pretrained(copy.deepcopy(base_model), str(checkpoint / "adapter"),
                                          is_trainable=True).eval()
        names, pool_grads = _reference_gradients(model, pool_tokens)
        _, target_grads = _reference_gradients(model, target_tokens)
        m_file, v_file = load_file(str(checkpoint / "exp_avg.safetensors")), load_file(
            str(checkpoint / "exp_avg_sq.safetensors"))
        m = torch.cat([m_file[n].reshape(-1) for n in names]).double()
        v = torch.cat([v_file[n].reshape(-1) for n in names]).double()
        (b1, b2), eps = state["betas"], state["eps"]
        # LESS's collect_grad_reps: m' and v' from the moments and the gradient, m' / sqrt(v' + eps).
        m_new = b1 * m + (1 - b1) * pool_grads
        v_new = b2 * v + (1 - b2) * pool_grads ** 2
        updates = m_new / torch.sqrt(v_new + eps)
        pool_updates.append(updates)
        pool_unit = updates / updates.norm(dim=1, keepdim=True)
        target_unit = target_grads / target_grads.norm(dim=1, keepdim=True)
        cosines = pool_unit @ target_unit.T                                   # [N, M]
        per_subtask = torch.stack([cosines[:, rows].mean(dim=1) for rows in subtasks.values()], dim=1)
        total = total + weight * per_subtask
    return total.max(dim=1).values.numpy(), pool_updates


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One unprojected LESS run that also writes the projected datastores, and the plain reference."""
    model, tokenizer = tiny_model_and_tokenizer(seed=3)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, spec="tiny", weights_sha256="tiny-3")
    settings = LessSettings.for_tests(index_root=tmp_path_factory.mktemp("fidelity") / "indexes", dims=DIMS,
                                      scoring="unprojected", store_features=True, projector="sjlt",
                                      max_length=MAX_LENGTH)
    assert settings.adam_form == "less" and LessSettings().adam_form == "less"  # the default, as LESS's code
    pool, target = _pool(), _bbh_target()
    ours = less_run(pool, target, settings, loaded=loaded)
    reference, updates = _reference(ours.workdir, model, tokenizer, pool)
    return settings, pool, target, ours, reference, updates


def test_the_unprojected_score_equals_a_plain_batch_size_one_computation(run):
    _, _, _, ours, reference, _ = run
    assert ours.stats["scoring"]["method"] == "unprojected"
    assert np.ptp(reference) > 0.05  # the examples differ: a bug that scrambled rows would show
    np.testing.assert_allclose(ours.scores, reference, rtol=1e-5, atol=1e-6)


def test_projected_features_are_the_plain_adam_gradients_through_the_projector(run):
    from influence.features import make_projector

    settings, _, _, ours, _, updates = run
    assert len(ours.pool_stores) == len(updates) == settings.warmup_epochs
    for store_path, update in zip(ours.pool_stores, updates):
        store = FeatureStore.open(store_path)
        projector = make_projector(settings.projector, update.shape[1], settings.all_dims, settings.seed)
        expected = torch.nn.functional.normalize(projector.project(update.float()).float(), dim=1).numpy()
        stored = store.features().astype(np.float32)
        cosine = (stored * expected).sum(axis=1) / np.linalg.norm(stored, axis=1)
        assert cosine.min() > 0.9999  # float16 storage is the only difference


def test_projected_scores_lie_within_the_projection_error_of_the_exact_ones(run):
    _, _, target, ours, reference, _ = run
    pool_rows = [FeatureStore.open(p).features() for p in ours.pool_stores]
    target_rows = [FeatureStore.open(p).features() for p in ours.target_stores]
    projected = less_scores(pool_rows, target_rows, [c["avg_lr"] for c in ours.checkpoints], target.subtasks())
    # A projected cosine errs by about sqrt(2 / d) (one standard deviation); allow six of them.
    bound = 6 * np.sqrt(2.0 / DIMS)
    assert np.abs(projected - reference).max() < bound
    assert np.abs(projected - reference).max() > 1e-5  # projected, not secretly exact
