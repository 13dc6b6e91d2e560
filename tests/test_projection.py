"""Projectors are deterministic, seed-dependent, batch-independent and roughly preserve inner products."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from influence.errors import ConfigError, UnknownNameError
from influence.features.projection import (PROJECTORS, Projector, SJLTProjector, StreamingProjector,
                                           TrakBasicProjector, default_projector_name, dim_slices, make_projector)


def random_rows(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def test_registry_and_default():
    assert set(PROJECTORS) == {"sjlt", "trak-basic", "trak-cuda"}
    assert default_projector_name("cpu") == "sjlt"
    projector = make_projector(None, 100, 16, device="cpu")
    assert isinstance(projector, SJLTProjector) and isinstance(projector, StreamingProjector)
    assert isinstance(projector, Projector)
    with pytest.raises(UnknownNameError, match="sjlt"):
        make_projector("gaussian", 100, 16)


def test_sjlt_is_deterministic_across_instances_and_runs():
    x = random_rows(3, 5000)
    first = SJLTProjector(5000, 256, seed=3).project(x)
    assert torch.equal(first, SJLTProjector(5000, 256, seed=3).project(x))
    code = ("import torch; from influence.features.projection import SJLTProjector; "
            "x = torch.randn(3, 5000, generator=torch.Generator().manual_seed(0)); "
            "print(SJLTProjector(5000, 256, seed=3).project(x).double().sum(dim=1).tolist())")
    other_run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert eval(other_run.stdout) == first.double().sum(dim=1).tolist()


def test_different_seeds_differ():
    x = random_rows(2, 5000)
    a = SJLTProjector(5000, 256, seed=0).project(x)
    b = SJLTProjector(5000, 256, seed=1).project(x)
    assert not torch.allclose(a, b)
    assert SJLTProjector(10, 8, seed=0).describe() != SJLTProjector(10, 8, seed=1).describe()


@pytest.mark.parametrize("sparsity", [1, 4])
def test_sjlt_preserves_inner_products_within_the_jl_bound(sparsity):
    # Pairs of unit vectors with known inner products; for a JL map the error of <Px, Py>
    # has standard deviation about sqrt((1 + <x, y>^2) / d) = 0.03 at d = 2048.
    dim, d, pairs = 20_000, 2048, 40
    x = torch.nn.functional.normalize(random_rows(pairs, dim, seed=1), dim=1)
    noise = torch.nn.functional.normalize(random_rows(pairs, dim, seed=2), dim=1)
    mix = torch.linspace(0.0, 1.0, pairs)[:, None]
    y = torch.nn.functional.normalize(mix * x + (1 - mix) * noise, dim=1)
    projector = SJLTProjector(dim, d, seed=0, sparsity=sparsity)
    px, py = projector.project(x), projector.project(y)
    errors = (px * py).sum(dim=1) - (x * y).sum(dim=1)
    norm_errors = px.norm(dim=1) ** 2 - 1.0
    bound = 6 * (2.0 / d) ** 0.5  # six standard deviations at worst (<x, y> = 1)
    assert errors.abs().max() < bound
    assert norm_errors.abs().max() < bound
    assert errors.abs().mean() < 2 * (2.0 / d) ** 0.5  # and typical errors are of the expected size


def test_sjlt_handles_a_vector_with_one_heavy_coordinate():
    # One bucket per block per coordinate: a spike keeps its norm exactly, whatever the sparsity.
    x = torch.zeros(1, 1000)
    x[0, 17] = 3.0
    for sparsity in (1, 2, 4):
        assert SJLTProjector(1000, 64, sparsity=sparsity).project(x).norm().item() == pytest.approx(3.0)


def test_batch_equals_rows_one_by_one_and_blocks():
    x = random_rows(5, 3000)
    projector = SJLTProjector(3000, (64, 128), seed=5, sparsity=2)
    batch = projector.project(x)
    rows = torch.cat([projector.project(x[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(batch, rows, rtol=1e-6, atol=1e-6)
    streamed = projector.zeros(5)
    for start in range(0, 3000, 700):
        projector.accumulate(streamed, x[:, start:start + 700], start)
    torch.testing.assert_close(streamed, batch, rtol=1e-5, atol=1e-5)


def test_several_dims_in_one_pass_match_single_dim_projectors():
    x = random_rows(4, 2000)
    both = SJLTProjector(2000, (32, 96), seed=2).project(x)
    assert both.shape == (4, 128)
    slices = dim_slices((32, 96))
    torch.testing.assert_close(both[:, slices[32]], SJLTProjector(2000, 32, seed=2).project(x))
    torch.testing.assert_close(both[:, slices[96]], SJLTProjector(2000, 96, seed=2).project(x))


def test_bad_inputs_raise_config_errors():
    projector = SJLTProjector(100, 16)
    with pytest.raises(ConfigError, match="length 100"):
        projector.project(torch.zeros(2, 99))
    with pytest.raises(ConfigError, match="positive"):
        SJLTProjector(100, 0)
    with pytest.raises(ConfigError, match="sparsity"):
        SJLTProjector(100, 16, sparsity=0)


def test_trak_basic_is_deterministic_and_batch_independent():
    x = random_rows(3, 500)
    a = TrakBasicProjector(500, 64, seed=0)
    got = a.project(x)
    assert got.shape == (3, 64)
    torch.testing.assert_close(got, TrakBasicProjector(500, 64, seed=0).project(x))
    torch.testing.assert_close(got[1:2], a.project(x[1:2]))
    assert a.describe()["backend"] == "trak-basic-cpu"


def test_trak_cuda_without_cuda_falls_back_loudly(caplog, monkeypatch):
    monkeypatch.setattr("influence.features.projection._cuda_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="influence.features.projection"):
        projector = make_projector("trak-cuda", 200, 32, device="cpu")
    assert isinstance(projector, TrakBasicProjector)
    assert "falling back to trak-basic" in caplog.text
    assert projector.describe()["fallback"]["requested"] == "trak-cuda"
