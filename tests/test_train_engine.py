"""The trainer's engine on a tiny random Llama: float32 master weights under bf16 autocast, gradient
checkpointing that leaves the loss curve as it was, and tracker event files."""

from __future__ import annotations

import copy

import pytest
import torch

from influence.errors import ConfigError
from influence.lora import LoraSettings
from influence.models import LoadedModel
from influence.testing import tiny_model_and_tokenizer
from influence.training import TrainSettings, list_checkpoints, train
from influence.training.checkpoint import read_state
from tests.test_training import EXAMPLES


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    model, tokenizer = tiny_model_and_tokenizer()
    return LoadedModel(model=model, tokenizer=tokenizer, spec="tiny-llama", weights_sha256="tiny-llama-seed0")


def test_a_bf16_full_run_at_lr_2e_5_keeps_updates_that_bf16_storage_would_round_away(tiny, tmp_path):
    from safetensors.torch import load_file

    bf16 = LoadedModel(copy.deepcopy(tiny.model).to(torch.bfloat16), tiny.tokenizer, "tiny-llama-bf16", "bf16")
    before = {name: p.detach().float().clone() for name, p in bf16.model.named_parameters()}
    config = TrainSettings.for_tests(method="full", epochs=1, learning_rate=2e-5, batch_size=2, micro_batch_size=2)
    result = train(EXAMPLES[:2], config, tmp_path / "bf16", loaded=bf16)  # one AdamW step
    assert result.manifest["engine"]["autocast"] == "bf16"  # "auto" follows the bf16 the model was loaded in
    after = load_file(str(list_checkpoints(result.out_dir)[0] / "weights.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert after[name].dtype == torch.float32
    delta = after[name] - before[name]
    assert (delta != 0).float().mean() > 0.9          # the step moved nearly every weight...
    assert delta.abs().max() < 5e-5                   # ...by about the learning rate (Adam's first step)
    # ...and in bf16 storage most of those moves would have been rounded back to the old weight
    stored = before[name].to(torch.bfloat16)
    rounded_away = ((stored.float() + delta).to(torch.bfloat16) == stored) & (delta != 0)
    assert rounded_away.float().mean() > 0.5


def test_gradient_checkpointing_gives_the_same_loss_curve(tiny, tmp_path, monkeypatch):
    import torch.utils.checkpoint

    calls = []
    real = torch.utils.checkpoint._checkpoint_without_reentrant_generator  # what a non-reentrant checkpoint runs

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    config = TrainSettings.for_tests(epochs=2, lora=LoraSettings(r=4, alpha=16, dropout=0.1))
    plain = train(EXAMPLES, config, tmp_path / "plain", loaded=tiny)
    assert not calls
    monkeypatch.setattr(torch.utils.checkpoint, "_checkpoint_without_reentrant_generator", counted)
    recomputed = train(EXAMPLES, config.with_(gradient_checkpointing=True), tmp_path / "checkpointed", loaded=tiny)
    assert calls, "no layer was checkpointed"
    assert recomputed.manifest["engine"]["gradient_checkpointing"] is True

    def losses(result):
        return [loss for path in list_checkpoints(result.out_dir) for loss in read_state(path)["losses"]]

    assert len(losses(plain)) == 6
    assert losses(recomputed) == pytest.approx(losses(plain), rel=1e-6)  # dropout replays in the recomputation


def test_tensorboard_writes_event_files_with_each_steps_loss(tiny, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(EXAMPLES, TrainSettings.for_tests(epochs=1, report_to="tensorboard"), tmp_path / "run",
                   loaded=tiny)
    events = list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
    assert events
    scalars = EventAccumulator(str(events[0].parent)).Reload()
    logged = [event.value for event in scalars.Scalars("train/loss")]
    assert logged == pytest.approx(read_state(result.checkpoints[0])["losses"], rel=1e-6)
    assert [event.step for event in scalars.Scalars("train/loss")] == [1, 2, 3]


def test_a_tracker_that_is_not_installed_is_refused_before_any_work(tiny, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="--report-to wandb needs the wandb package"):
        train(EXAMPLES, TrainSettings.for_tests(report_to="wandb"), tmp_path / "run", loaded=tiny)
    assert not (tmp_path / "run").exists()


def test_engine_settings_validate():
    with pytest.raises(ConfigError, match="precision must be one of"):
        TrainSettings(precision="fp16")
    with pytest.raises(ConfigError, match="report_to must be one of"):
        TrainSettings(report_to="mlflow")
    with pytest.raises(ConfigError, match="save_steps must be >= 0"):
        TrainSettings(save_steps=-1)
    # where and how a run is logged, checkpointed or recomputed does not change what it computes
    plain = TrainSettings()
    runtime = plain.with_(save_steps=5, report_to="tensorboard", gradient_checkpointing=True)
    assert runtime.identity() == plain.identity()
    assert plain.with_(precision="bf16").identity() != plain.identity()


@pytest.mark.cuda
def test_on_a_gpu_a_bf16_loaded_model_trains_under_autocast_with_float32_masters(tmp_path):
    from safetensors.torch import load_file

    model, tokenizer = tiny_model_and_tokenizer()
    loaded = LoadedModel(model.to("cuda", torch.bfloat16), tokenizer, "tiny-llama-bf16", "bf16-cuda")
    before = {name: p.detach().float().cpu() for name, p in loaded.model.named_parameters()}
    config = TrainSettings.for_tests(method="full", epochs=2, learning_rate=2e-5, batch_size=2, micro_batch_size=1)
    result = train(EXAMPLES, config, tmp_path / "gpu", loaded=loaded)
    assert result.manifest["engine"]["autocast"] == "bf16"
    after = load_file(str(result.checkpoints[-1] / "weights.safetensors"))
    assert all(tensor.dtype == torch.float32 for tensor in after.values())
    moved = [(after[name] != before[name]).float().mean() for name in after]
    assert min(moved) > 0.5  # six steps of about 2e-5 each: nearly every weight moved
