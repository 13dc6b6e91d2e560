"""Batched per-example LoRA gradients equal the batch-size-1 autograd loop; adam/sign transforms."""

from __future__ import annotations

import pytest
import torch

from influence.data.example import Example
from influence.data.formatting import collate, encode_example
from influence.errors import ConfigError, ManifestMismatchError
from influence.features.grads import AdamMoments, LoraGradients, adam_update, per_example_gradients
from influence.lora import LoraSettings, add_lora, lora_parameters
from influence.testing import tiny_model_and_tokenizer

EXAMPLES = [
    Example("Name a colour.", "", "Blue."),
    Example("Add the numbers.", "2 and 3", "2 + 3 = 5, so the sum is five."),
    Example("Write a haiku about rain.", "", "Soft rain on the roof\nthe garden drinks it slowly"),
    Example("Say yes.", "", "Yes"),
    Example("Describe the sea in a long sentence.", "", "The sea is wide, grey and restless today " * 2),
]


@pytest.fixture(scope="module")
def lora_model():
    model, tokenizer = tiny_model_and_tokenizer()
    # Dropout > 0 checks that gradients are taken with dropout off, as the reference below is.
    model = add_lora(model, LoraSettings(r=4, alpha=16, dropout=0.1))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # lora_B starts at zero, which would make every lora_A gradient zero
        for _, param in lora_parameters(model):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model, tokenizer


def encode(examples, tokenizer, max_length=512):
    return [encode_example(e, tokenizer, max_length) for e in examples]


def reference_gradients(model, encoded) -> torch.Tensor:
    """What LESS does: one forward/backward per example, autograd's gradients flattened in order."""
    model.eval()
    params = [p for _, p in lora_parameters(model)]
    rows = []
    for item in encoded:
        ids = torch.tensor([item.input_ids])
        labels = torch.tensor([item.labels])
        if (labels[:, 1:] == -100).all():
            rows.append(torch.zeros(sum(p.numel() for p in params)))
            continue
        loss = model(input_ids=ids, labels=labels).loss
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def relative_errors(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    return (got - want).norm(dim=1) / want.norm(dim=1).clamp(min=1e-30)


@pytest.mark.parametrize("batch_size", [1, 3, 5])
def test_batched_gradients_equal_batch_size_one_loop(lora_model, batch_size):
    model, tokenizer = lora_model
    encoded = encode(EXAMPLES, tokenizer)
    assert len({len(e.input_ids) for e in encoded}) > 1  # different lengths, so batches are padded
    want = reference_gradients(model, encoded)
    compute = LoraGradients(model, "sgd")
    got = torch.cat([compute(**collate(encoded[i:i + batch_size], tokenizer.pad_token_id))
                     for i in range(0, len(encoded), batch_size)])
    assert got.shape == (len(EXAMPLES), compute.dim) and got.dtype == torch.float32
    assert compute.dim == sum(p.numel() for _, p in lora_parameters(model))
    assert want.norm(dim=1).min() > 0
    assert relative_errors(got, want).max() < 1e-4


def test_gradients_do_not_touch_param_grads_or_mode(lora_model):
    model, tokenizer = lora_model
    model.train()
    per_example_gradients(model, collate(encode(EXAMPLES[:2], tokenizer), tokenizer.pad_token_id))
    assert model.training
    assert all(p.grad is None for _, p in lora_parameters(model))
    model.eval()


def test_example_without_response_tokens_gets_zero_vector(lora_model):
    model, tokenizer = lora_model
    long_prompt = Example("x" * 80, "", "the answer")
    encoded = [encode_example(long_prompt, tokenizer, 40)] + encode(EXAMPLES[:2], tokenizer)
    assert encoded[0].response_tokens == 0
    batch = collate(encoded, tokenizer.pad_token_id)
    want = reference_gradients(model, encoded)
    for grad_type, moments in (("sgd", None), ("adam", fake_moments(model))):
        got = LoraGradients(model, grad_type, moments)(**batch)
        assert torch.count_nonzero(got[0]) == 0
        assert torch.count_nonzero(got[1:]) > 0
    assert relative_errors(LoraGradients(model)(**batch)[1:], want[1:]).max() < 1e-4
    alone = LoraGradients(model)(**collate(encoded[:1], tokenizer.pad_token_id))
    assert torch.count_nonzero(alone) == 0


def fake_moments(model, *, step=3, reverse=False, form="less") -> AdamMoments:
    generator = torch.Generator().manual_seed(7)
    named = lora_parameters(model)
    if reverse:  # a different key order must not matter: moments are matched by name
        named = named[::-1]
    m = {name: torch.randn(p.shape, generator=generator) * 1e-3 for name, p in named}
    v = {name: torch.rand(p.shape, generator=generator) * 1e-6 for name, p in named}
    return AdamMoments(m, v, step=step, betas=(0.9, 0.999), eps=1e-8, form=form)


def written_out_adam(g, m, v, *, form, step=3, b1=0.9, b2=0.999, eps=1e-8):
    """Both Adam forms, spelled out: LESS's released code and the LESS paper."""
    m_new = b1 * m + (1 - b1) * g
    v_new = b2 * v + (1 - b2) * g * g
    if form == "less":  # no bias correction, eps under the square root
        return m_new / torch.sqrt(v_new + eps)
    return (m_new / (1 - b1 ** step)) / (torch.sqrt(v_new / (1 - b2 ** step)) + eps)


def test_adam_update_paper_form_on_known_numbers():
    # m' = .5*1 + .5*2 = 1.5, m_hat = 1.5/(1-.5) = 3; v' = .75*4 + .25*4 = 4, v_hat = 4/(1-.75) = 16
    got = adam_update(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([4.0]), step=1, betas=(0.5, 0.75),
                      eps=1.0, form="paper")
    assert got.item() == pytest.approx(3.0 / (4.0 + 1.0))
    # step 2: m_hat = 1.5/(1-.25) = 2, v_hat = 4/(1-.5625) = 9.142857
    got = adam_update(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([4.0]), step=2, betas=(0.5, 0.75),
                      eps=0.0, form="paper")
    assert got.item() == pytest.approx(2.0 / (4.0 / 0.4375) ** 0.5)


def test_adam_update_less_form_on_known_numbers_is_the_default():
    # m' = 1.5, v' = 4: LESS's code returns m' / sqrt(v' + eps), whatever the step
    for step in (1, 5):
        got = adam_update(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([4.0]), step=step,
                          betas=(0.5, 0.75), eps=5.0)
        assert got.item() == pytest.approx(1.5 / 3.0)
    # eps inside the root floors the denominator at sqrt(eps): a zero second moment gives m' / 1e-4
    got = adam_update(torch.tensor([0.0]), torch.tensor([1e-6]), torch.tensor([0.0]), step=3, betas=(0.9, 0.999),
                      eps=1e-8)
    assert got.item() == pytest.approx(0.9e-6 / 1e-4)
    with pytest.raises(ConfigError, match="unknown Adam form"):
        adam_update(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([4.0]), step=1, betas=(0.5, 0.75),
                    eps=1.0, form="adamw")


@pytest.mark.parametrize("form", ["less", "paper"])
def test_adam_update_equals_the_written_out_formula(form):
    generator = torch.Generator().manual_seed(3)
    g, m = torch.randn(2, 50, generator=generator) * 1e-3
    v = torch.rand(50, generator=generator) * 1e-7  # many below eps, where the forms part ways most
    got = adam_update(g, m, v, step=3, betas=(0.9, 0.999), eps=1e-8, form=form)
    torch.testing.assert_close(got, written_out_adam(g, m, v, form=form), rtol=1e-6, atol=0)


def test_adam_and_sign_transform_the_sgd_gradients(lora_model):
    model, tokenizer = lora_model
    batch = collate(encode(EXAMPLES, tokenizer), tokenizer.pad_token_id)
    sgd = LoraGradients(model, "sgd")(**batch)
    sign = LoraGradients(model, "sign")(**batch)
    assert torch.equal(sign, torch.sign(sgd))

    by_form = {}
    for form in ("less", "paper"):
        moments = fake_moments(model, form=form)
        adam = LoraGradients(model, "adam", moments)(**batch)
        offset, expected = 0, []
        for name, param in lora_parameters(model):
            g = sgd[:, offset:offset + param.numel()].reshape(len(EXAMPLES), *param.shape)
            expected.append(written_out_adam(g, moments.exp_avg[name], moments.exp_avg_sq[name],
                                             form=form).reshape(len(EXAMPLES), -1))
            offset += param.numel()
        torch.testing.assert_close(adam, torch.cat(expected, dim=1), rtol=1e-5, atol=1e-5)
        by_form[form] = adam
    assert not torch.allclose(by_form["less"], by_form["paper"], rtol=1e-2)
    assert LoraGradients(model, "adam", fake_moments(model)).describe()["adam"]["form"] == "less"
    moments, adam = fake_moments(model), by_form["less"]
    reordered = LoraGradients(model, "adam", fake_moments(model, reverse=True))(**batch)
    assert not torch.allclose(reordered, adam)  # different random moments per name, drawn in another order
    same_keys_other_order = AdamMoments(dict(reversed(list(moments.exp_avg.items()))),
                                        dict(reversed(list(moments.exp_avg_sq.items()))), step=3)
    torch.testing.assert_close(LoraGradients(model, "adam", same_keys_other_order)(**batch), adam)


def test_moments_are_matched_by_name_with_a_shape_check(lora_model):
    model, _ = lora_model
    moments = fake_moments(model)
    first = next(iter(moments.exp_avg))
    missing = AdamMoments({k: v for k, v in moments.exp_avg.items() if k != first},
                          {k: v for k, v in moments.exp_avg_sq.items() if k != first}, step=1)
    with pytest.raises(ManifestMismatchError, match="without moments"):
        LoraGradients(model, "adam", missing)
    renamed = AdamMoments({k.replace("default", "other"): v for k, v in moments.exp_avg.items()},
                          {k.replace("default", "other"): v for k, v in moments.exp_avg_sq.items()}, step=1)
    with pytest.raises(ManifestMismatchError, match="for no parameter"):
        LoraGradients(model, "adam", renamed)
    reshaped = AdamMoments({k: v.t() for k, v in moments.exp_avg.items()},
                           {k: v.t() for k, v in moments.exp_avg_sq.items()}, step=1)
    with pytest.raises(ManifestMismatchError, match="shape"):
        LoraGradients(model, "adam", reshaped)


def test_bad_settings_raise_config_errors(lora_model):
    model, _ = lora_model
    with pytest.raises(ConfigError, match="unknown gradient type"):
        LoraGradients(model, "newton")
    with pytest.raises(ConfigError, match="needs the checkpoint's Adam moments"):
        LoraGradients(model, "adam")
    with pytest.raises(ConfigError, match="step"):
        AdamMoments({}, {}, step=0)
    plain, _ = tiny_model_and_tokenizer()
    with pytest.raises(ConfigError, match="not a LoRA"):
        LoraGradients(plain)


# featurize: the whole path (gradients, projection, normalisation) over a list of examples

from influence.features.compute import FeaturizeStats, featurize  # noqa: E402
from influence.features.projection import SJLTProjector  # noqa: E402


class MaterializingProjector:
    """The sjlt projector without its streaming methods: featurize takes the [B, P] path."""

    def __init__(self, inner):
        self.inner, self.in_dim, self.dims = inner, inner.in_dim, inner.dims

    def project(self, grads):
        return self.inner.project(grads)

    def describe(self):
        return self.inner.describe()


def collect(batches) -> dict[int, torch.Tensor]:
    out = {}
    for batch in batches:
        assert batch.features.dtype == torch.float32 and batch.features.shape[0] == len(batch.indices)
        out.update(zip(batch.indices, batch.features))
    return out


def test_featurize_matches_the_reference_and_ignores_batch_size_and_order(lora_model):
    model, tokenizer = lora_model
    examples = EXAMPLES + [Example("x" * 80, "", "cut away")]
    projector = SJLTProjector(LoraGradients(model).dim, (64, 32), seed=0)
    stats = FeaturizeStats()
    one = collect(featurize(model, tokenizer, examples, projector, batch_size=1, max_length=60, stats=stats))
    assert sorted(one) == list(range(len(examples)))
    assert stats.examples == stats.done == len(examples) and stats.truncated >= 1 and stats.empty == 1
    assert torch.count_nonzero(one[len(examples) - 1]) == 0

    encoded = encode(examples[:-1], tokenizer, 60)
    reference = projector.project(reference_gradients(model, encoded))
    for i in range(len(examples) - 1):
        for block in (slice(0, 64), slice(64, 96)):
            want = reference[i, block] / reference[i, block].norm()
            torch.testing.assert_close(one[i][block], want, rtol=1e-4, atol=1e-5)
            assert one[i][block].norm().item() == pytest.approx(1.0, abs=1e-5)

    many = collect(featurize(model, tokenizer, examples, MaterializingProjector(projector), batch_size=4,
                             max_length=60))
    reversed_examples = examples[::-1]
    shuffled = collect(featurize(model, tokenizer, reversed_examples, projector, batch_size=3, max_length=60))
    for i in range(len(examples)):
        torch.testing.assert_close(many[i], one[i], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(shuffled[len(examples) - 1 - i], one[i], rtol=1e-4, atol=1e-5)


def test_featurize_computes_only_the_asked_indices(lora_model):
    model, tokenizer = lora_model
    projector = SJLTProjector(LoraGradients(model).dim, 16)
    got = collect(featurize(model, tokenizer, EXAMPLES, projector, batch_size=2, indices=[4, 1]))
    assert sorted(got) == [1, 4]
    with pytest.raises(ConfigError, match="indices"):
        list(featurize(model, tokenizer, EXAMPLES, projector, indices=[len(EXAMPLES)]))


def test_featurize_refuses_a_projector_of_another_dimension(lora_model):
    model, tokenizer = lora_model
    with pytest.raises(ConfigError, match="in_dim="):
        next(featurize(model, tokenizer, EXAMPLES, SJLTProjector(10, 16)))


def test_full_forward_path_gives_the_same_gradients(lora_model):
    # Models that post-process logits (soft-capping, scaling) go through model(...).logits instead
    # of backbone + LM head at the loss positions; both must give the reference gradients.
    model, tokenizer = lora_model
    encoded = encode(EXAMPLES[:3], tokenizer)
    compute = LoraGradients(model)
    compute._backbone, compute._direct = model, False
    got = compute(**collate(encoded, tokenizer.pad_token_id))
    assert relative_errors(got, reference_gradients(model, encoded)).max() < 1e-4


def test_moments_from_a_checkpoint(lora_model):
    from types import SimpleNamespace

    model, _ = lora_model
    moments = fake_moments(model)
    checkpoint = SimpleNamespace(path="epoch-1", exp_avg=dict(moments.exp_avg), exp_avg_sq=dict(moments.exp_avg_sq),
                                 step=3, betas=[0.9, 0.999], eps=1e-8)
    loaded = AdamMoments.from_checkpoint(checkpoint)
    assert loaded.step == 3 and loaded.betas == (0.9, 0.999) and set(loaded.exp_avg) == set(moments.exp_avg)
    assert loaded.form == "less" and AdamMoments.from_checkpoint(checkpoint, form="paper").form == "paper"
    with pytest.raises(ConfigError, match="unknown Adam form"):
        AdamMoments.from_checkpoint(checkpoint, form="bias-corrected")
    with pytest.raises(ConfigError, match="moments=True"):
        AdamMoments.from_checkpoint(SimpleNamespace(path="epoch-1", exp_avg={}, exp_avg_sq={}, step=3,
                                                    betas=[0.9, 0.999], eps=1e-8))


def test_length_batches_sort_and_respect_both_caps():
    from influence.features.compute import length_batches

    lengths = {0: 50, 1: 10, 2: 30, 3: 10, 4: 200, 5: 30}
    assert length_batches(lengths, 2) == [[1, 3], [2, 5], [0, 4]]
    assert length_batches(lengths, 8, max_tokens=60) == [[1, 3], [2, 5], [0], [4]]
    batches = length_batches({i: 7 + i % 5 for i in range(40)}, 6, max_tokens=40)
    assert sorted(i for b in batches for i in b) == list(range(40))
    assert all(len(b) <= 6 and len(b) * max(7 + i % 5 for i in b) <= 40 for b in batches)


def test_featurize_stats_add_every_count_and_timing():
    a = FeaturizeStats(examples=3, done=2, truncated=1, empty=0, tokens=40, gradient_seconds=1.5,
                       projection_seconds=0.25)
    b = FeaturizeStats(examples=5, done=5, truncated=0, empty=1, tokens=60, gradient_seconds=0.5,
                       projection_seconds=0.75)
    assert (a + b).to_dict() == {"examples": 8, "done": 7, "truncated": 1, "empty": 1, "tokens": 100,
                                 "gradient_seconds": 2.0, "projection_seconds": 1.0}
