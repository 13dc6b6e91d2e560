"""The SFT trainer on a tiny random Llama: settings, batching, checkpoints, resume, reproducibility."""

from __future__ import annotations

import json

import pytest
import torch

from influence.data import Example
from influence.errors import ConfigError, ManifestMismatchError, TrainingError
from influence.lora import LoraSettings, lora_parameters
from influence.models import LoadedModel
from influence.testing import tiny_model_and_tokenizer
from influence.training import TrainSettings as TrainConfig, list_checkpoints, load_checkpoint, load_trained, train
from influence.training import checkpoint as checkpoint_module
from influence.training.batching import plan_epoch
from influence.training.loss import example_nll

EXAMPLES = [
    Example("Name a colour.", "", "Blue."),
    Example("Add the numbers.", "2 and 3", "five"),
    Example("Say hello.", "", "hello there"),
    Example("Count to three.", "", "one two three"),
    Example("Opposite of up?", "", "down"),
]


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    model, tokenizer = tiny_model_and_tokenizer()
    return LoadedModel(model=model, tokenizer=tokenizer, spec="tiny-llama", weights_sha256="tiny-llama-seed0")


def adapter_tensors(out_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out_dir / "adapter" / "adapter_model.safetensors"))


def training_loss(loaded: LoadedModel, examples) -> float:
    from influence.data.formatting import collate, encode_example

    batch = collate([encode_example(e, loaded.tokenizer, 256) for e in examples], loaded.tokenizer.pad_token_id)
    with torch.no_grad():
        nll, tokens = example_nll(loaded.model.eval(), batch)
    return float(nll.sum() / tokens.sum())


# ------------------------------------------------------------------ settings
def test_config_defaults_follow_less_and_validate():
    config = TrainConfig()
    assert (config.epochs, config.learning_rate, config.warmup_ratio) == (4, 2e-5, 0.03)
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (128, 512, 0.1)
    warmup = TrainConfig.less_warmup()
    assert warmup.lora.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert json.loads(json.dumps(config.to_dict()))["lora"]["r"] == 128
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="multiple of micro_batch_size"):
        TrainConfig(batch_size=6, micro_batch_size=4)
    with pytest.raises(ConfigError, match="learning_rate must be positive"):
        TrainConfig(learning_rate=0)
    with pytest.raises(ConfigError, match="method must be one of"):
        TrainConfig(method="qlora")
    with pytest.raises(ConfigError, match="epochs must be a positive integer"):
        TrainConfig(epochs=0)


def test_epoch_plan_is_a_seeded_length_grouped_shuffle():
    lengths = [5, 50, 7, 30, 12, 8, 41, 3, 9]
    plan = plan_epoch(lengths, batch_size=4, micro_batch_size=2, seed=1, epoch=1)
    flat = [i for step in plan for micro in step for i in micro]
    assert sorted(flat) == list(range(len(lengths)))
    assert [len(step) for step in plan] == [2, 2, 1]
    for step in plan:
        within = [lengths[i] for micro in step for i in micro]
        assert within == sorted(within, reverse=True)
    assert plan == plan_epoch(lengths, 4, 2, seed=1, epoch=1)
    assert plan != plan_epoch(lengths, 4, 2, seed=1, epoch=2)


# ------------------------------------------------------------------ training
def test_training_lowers_the_training_loss_and_writes_a_manifest(tiny, tmp_path):
    before = training_loss(tiny, EXAMPLES)
    result = train(EXAMPLES, TrainConfig.for_tests(epochs=3), tmp_path / "run", loaded=tiny)
    after = training_loss(load_trained(result.out_dir, base=tiny), EXAMPLES)
    assert after < before - 0.1, (before, after)
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["data"]["examples"] == len(EXAMPLES)
    assert manifest["model"]["weights_sha256"] == "tiny-llama-seed0"
    assert manifest["config"]["learning_rate"] == 1e-2
    assert manifest["lora"]["signature"]["parameters"] == 16
    assert manifest["steps"] == 9 and len(manifest["epochs"]) == 3
    assert "torch" in manifest["versions"]
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    # a finished run is returned as it is, without training again
    again = train(EXAMPLES, TrainConfig.for_tests(epochs=3), tmp_path / "run", loaded=tiny)
    assert again.reused and again.manifest == result.manifest


def test_checkpoints_keep_moments_by_parameter_name_and_the_epoch_lr(tiny, tmp_path):
    config = TrainConfig.for_tests(epochs=2, warmup_ratio=0.0)
    result = train(EXAMPLES, config, tmp_path / "run", loaded=tiny)
    paths = list_checkpoints(result.out_dir)
    assert [p.name for p in paths] == ["epoch-1", "epoch-2"]
    first, second = (load_checkpoint(p) for p in paths)
    # 3 steps per epoch, linear decay from 1e-2 to 0 over 6 steps, no warmup
    assert first.avg_lr == pytest.approx(1e-2 * (6 + 5 + 4) / 6 / 3)
    assert second.avg_lr == pytest.approx(1e-2 * (3 + 2 + 1) / 6 / 3)
    assert (second.epoch, second.step, second.betas, second.eps) == (2, 6, (0.9, 0.999), 1e-8)
    # what LESS does: load the epoch's adapter into the base model and match moments by name
    from peft import PeftModel

    model = PeftModel.from_pretrained(tiny_model_and_tokenizer()[0], str(second.adapter_dir), is_trainable=True)
    params = dict(lora_parameters(model))
    assert set(params) == set(second.exp_avg) == set(second.exp_avg_sq)
    for name, param in params.items():
        assert second.exp_avg[name].shape == param.shape
        assert torch.all(second.exp_avg_sq[name] >= 0)
    assert any(second.exp_avg[n].abs().sum() > 0 for n in params)


def test_same_seed_same_weights_other_seed_other_weights(tiny, tmp_path):
    config = TrainConfig.for_tests(lora=LoraSettings(r=4, alpha=16, dropout=0.1))
    a = adapter_tensors(train(EXAMPLES, config, tmp_path / "a", loaded=tiny).out_dir)
    b = adapter_tensors(train(EXAMPLES, config, tmp_path / "b", loaded=tiny).out_dir)
    c = adapter_tensors(train(EXAMPLES, config.with_(seed=1), tmp_path / "c", loaded=tiny).out_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tiny, tmp_path, monkeypatch):
    config = TrainConfig.for_tests(epochs=3, lora=LoraSettings(r=4, alpha=16, dropout=0.1), warmup_ratio=0.2)
    whole = train(EXAMPLES, config, tmp_path / "whole", loaded=tiny)

    real_save = checkpoint_module.save_checkpoint

    def save_then_die(directory, **kwargs):
        real_save(directory, **kwargs)
        if directory.name == "epoch-1":
            raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr("influence.training.trainer.save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(EXAMPLES, config, tmp_path / "resumed", loaded=tiny)
    monkeypatch.undo()
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == ["epoch-1"]

    resumed = train(EXAMPLES, config, tmp_path / "resumed", loaded=tiny)
    assert resumed.resumed_from_epoch == 1
    a, b = adapter_tensors(whole.out_dir), adapter_tensors(resumed.out_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = load_checkpoint(whole.checkpoints[-1]), load_checkpoint(resumed.checkpoints[-1])
    assert all(torch.equal(ma.exp_avg_sq[k], mb.exp_avg_sq[k]) for k in ma.exp_avg_sq)
    assert [e["mean_loss"] for e in whole.manifest["epochs"]] == [e["mean_loss"] for e in resumed.manifest["epochs"]]


def test_a_run_stopped_mid_epoch_resumes_at_that_step_and_equals_an_uninterrupted_run(tiny, tmp_path, monkeypatch):
    # 3 steps an epoch; every 2 steps a checkpoint: step-2 (epoch 1), epoch-1 (step 3), step-4 (epoch 2)
    config = TrainConfig.for_tests(epochs=2, lora=LoraSettings(r=4, alpha=16, dropout=0.1), warmup_ratio=0.2,
                                   save_steps=2)
    whole = train(EXAMPLES, config, tmp_path / "whole", loaded=tiny)
    assert [p.name for p in whole.checkpoints] == ["epoch-1", "epoch-2"]
    assert not list((tmp_path / "whole" / "checkpoints").glob("step-*"))  # only for resuming: gone when done

    real_save = checkpoint_module.save_checkpoint

    def save_then_die(directory, **kwargs):
        real_save(directory, **kwargs)
        if directory.name == "step-4":
            raise KeyboardInterrupt("killed at step 4, one step into epoch 2")

    monkeypatch.setattr("influence.training.trainer.save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(EXAMPLES, config, tmp_path / "resumed", loaded=tiny)
    monkeypatch.undo()
    left = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert left == ["epoch-1", "step-4"]  # an older mid-epoch checkpoint is dropped once a newer one exists

    resumed = train(EXAMPLES, config, tmp_path / "resumed", loaded=tiny)
    assert (resumed.resumed_from_step, resumed.resumed_from_epoch) == (4, 1)
    a, b = adapter_tensors(whole.out_dir), adapter_tensors(resumed.out_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = load_checkpoint(whole.checkpoints[-1]), load_checkpoint(resumed.checkpoints[-1])
    assert all(torch.equal(ma.exp_avg[k], mb.exp_avg[k]) and torch.equal(ma.exp_avg_sq[k], mb.exp_avg_sq[k])
               for k in ma.exp_avg)
    assert ma.losses == mb.losses and ma.avg_lr == mb.avg_lr
    drop_time = [{k: v for k, v in e.items() if k != "seconds"} for e in whole.manifest["epochs"]]
    assert drop_time == [{k: v for k, v in e.items() if k != "seconds"} for e in resumed.manifest["epochs"]]


def test_the_update_does_not_depend_on_the_micro_batch_split(tiny, tmp_path):
    config = TrainConfig.for_tests(batch_size=4, micro_batch_size=1)
    a = adapter_tensors(train(EXAMPLES, config, tmp_path / "a", loaded=tiny).out_dir)
    b = adapter_tensors(train(EXAMPLES, config.with_(micro_batch_size=4), tmp_path / "b", loaded=tiny).out_dir)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reduction", ["token", "example"])
def test_each_loss_reduction_takes_the_step_its_plain_loss_gives(reduction):
    import torch.nn.functional as F

    from accelerate import Accelerator

    from influence.data.formatting import IGNORE_INDEX, encode_example
    from influence.lora import add_lora
    from influence.training.trainer import _optimizer_step, _release

    base, tokenizer = tiny_model_and_tokenizer()
    model = add_lora(base, LoraSettings.for_tests())
    params = lora_parameters(model)
    with torch.no_grad():
        for _, param in params:
            param.normal_(std=0.1)
    encoded = [encode_example(e, tokenizer, 256) for e in EXAMPLES]
    assert len({e.response_tokens for e in encoded}) > 2  # responses of different lengths

    # the plain loss: each example alone, its token losses written out
    per_example = []
    for item in encoded:
        ids, labels = torch.tensor([item.input_ids]), torch.tensor(item.labels[1:])
        logits = model(input_ids=ids).logits[0, :-1]
        keep = labels != IGNORE_INDEX
        per_example.append(F.cross_entropy(logits[keep], labels[keep], reduction="none"))
    by_token = torch.cat(per_example).sum() / sum(len(t) for t in per_example)
    by_example = torch.stack([t.mean() for t in per_example]).mean()
    assert abs(float(by_token.detach()) - float(by_example.detach())) > 1e-3  # the test tells the two apart
    plain = by_token if reduction == "token" else by_example
    want = torch.autograd.grad(plain, [p for _, p in params])

    before = [p.detach().clone() for _, p in params]
    optimizer = torch.optim.SGD([p for _, p in params], lr=1.0)  # the step is minus the gradient
    accelerator = Accelerator(cpu=True)
    try:
        _, tokens, step_loss = _optimizer_step(model, optimizer, [[0, 1], [2], [3, 4]], [0, 1, 2], encoded,
                                               tokenizer.pad_token_id, accelerator, 0.0, reduction)
    finally:
        _release(accelerator)
    assert tokens == sum(len(t) for t in per_example)
    assert step_loss == pytest.approx(float(plain.detach()), rel=1e-5)
    for (name, param), old, grad in zip(params, before, want):
        torch.testing.assert_close(old - param.detach(), grad, rtol=1e-4, atol=1e-6, msg=name)


def test_less_warmup_averages_per_example_and_plain_training_per_token():
    assert TrainConfig().loss_reduction == "token"
    assert TrainConfig.less_warmup().loss_reduction == "example"
    assert TrainConfig.less_warmup().identity()["loss_reduction"] == "example"
    with pytest.raises(ConfigError, match="loss_reduction"):
        TrainConfig(loss_reduction="sequence")


def test_full_fine_tuning_saves_a_loadable_model(tiny, tmp_path):
    result = train(EXAMPLES[:2], TrainConfig.for_tests(method="full", epochs=1, learning_rate=1e-3),
                   tmp_path / "full", loaded=tiny)
    assert result.weights_dir.name == "model"
    loaded = load_trained(result.out_dir)
    assert training_loss(loaded, EXAMPLES[:2]) < training_loss(tiny, EXAMPLES[:2])
    assert load_checkpoint(result.checkpoints[0]).weights_file.exists()


# ------------------------------------------------------------------ bad input
def test_bad_input_gets_a_clear_error(tiny, tmp_path):
    with pytest.raises(TrainingError, match="no training examples"):
        train([], TrainConfig.for_tests(), tmp_path / "empty", loaded=tiny)
    with pytest.raises(TrainingError, match="raise max_length"):
        train(EXAMPLES, TrainConfig.for_tests(max_length=8), tmp_path / "short", loaded=tiny)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match="not a training run"):
        train(EXAMPLES, TrainConfig.for_tests(), tmp_path / "busy", loaded=tiny)
    train(EXAMPLES[:2], TrainConfig.for_tests(epochs=1), tmp_path / "done", loaded=tiny)
    with pytest.raises(ManifestMismatchError, match="settings.learning_rate"):
        train(EXAMPLES[:2], TrainConfig.for_tests(epochs=1, learning_rate=0.5), tmp_path / "done", loaded=tiny)
    with pytest.raises(TrainingError, match="no finished training run"):
        load_trained(tmp_path / "busy", base=tiny)
    with pytest.raises(ManifestMismatchError, match="pass the matching base model"):
        other = LoadedModel(tiny.model, tiny.tokenizer, "other", "other-weights")
        load_trained(tmp_path / "done", base=other)


def test_training_reads_a_selection_file(tiny, tmp_path):
    path = tmp_path / "selection.jsonl"
    path.write_text("".join(json.dumps(e.to_record("alpaca")) + "\n" for e in EXAMPLES[:3]))
    result = train(path, TrainConfig.for_tests(epochs=1), tmp_path / "run", loaded=tiny)
    assert result.manifest["data"]["source"] == str(path)
    assert len(result.manifest["data"]["file_sha256"]) == 64


KILLED_RUN = """
import sys, time
from influence.data import Example
from influence.lora import LoraSettings
from influence.models import LoadedModel
from influence.testing import tiny_model_and_tokenizer
from influence.training import TrainSettings as TrainConfig, train
from influence.training import checkpoint as checkpoint_module
import influence.training.trainer as trainer

real_save = checkpoint_module.save_checkpoint
def save_then_stall(directory, **kwargs):
    real_save(directory, **kwargs)
    if directory.name == "epoch-1":
        time.sleep(120)          # the parent kills us here, with SIGKILL
trainer.save_checkpoint = save_then_stall
model, tokenizer = tiny_model_and_tokenizer()
examples = [Example(*map(str, row)) for row in {rows!r}]
config = TrainConfig.for_tests(epochs=3, lora=LoraSettings(r=4, alpha=16, dropout=0.1))
train(examples, config, sys.argv[1], loaded=LoadedModel(model, tokenizer, "tiny-llama", "tiny-llama-seed0"))
"""


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: 10-20 s
def test_kill_9_during_training_then_rerun_equals_an_uninterrupted_run(tiny, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    rows = [(e.instruction, e.input, e.output) for e in EXAMPLES]
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN.format(rows=rows), str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoints" / "epoch-1" / "state.json").exists():
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the training subprocess never finished epoch 1"
            time.sleep(0.1)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert not (out / "manifest.json").exists() and (out / ".lock").exists()   # a dead run's lock record

    config = TrainConfig.for_tests(epochs=3, lora=LoraSettings(r=4, alpha=16, dropout=0.1))
    resumed = train(EXAMPLES, config, out, loaded=tiny)
    whole = train(EXAMPLES, config, tmp_path / "whole", loaded=tiny)
    assert resumed.resumed_from_epoch == 1
    a, b = adapter_tensors(whole.out_dir), adapter_tensors(resumed.out_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ one run per directory
HOLD_LOCK = """
import sys, time
from influence.training.run_dir import out_dir_lock
from pathlib import Path
with out_dir_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_directory_locked_by_a_live_run_is_refused(tmp_path, tiny):
    import subprocess
    import sys

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TrainingError, match=f"another training run \\(pid {holder.pid}\\)"):
            train(EXAMPLES, TrainConfig.for_tests(epochs=1), out, loaded=tiny)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert not (out / "manifest.json").exists()
    # the killed holder's lock went with it; its record is left, and overwritten by the next run
    assert json.loads((out / ".lock").read_text())["pid"] == holder.pid
    result = train(EXAMPLES[:2], TrainConfig.for_tests(epochs=1), out, loaded=tiny)
    assert result.manifest_path.exists() and not (out / ".lock").exists()


def test_an_adapter_that_does_not_fit_the_model_exactly_is_refused(tmp_path):
    from influence.lora import add_lora
    from influence.training import load_adapter_weights
    from influence.training.checkpoint import save_adapter

    def lora_model(**changes):
        model, _ = tiny_model_and_tokenizer()
        return add_lora(model, LoraSettings(**{**LoraSettings.for_tests().to_dict(), **changes}))

    saved = lora_model()
    with torch.no_grad():
        for _, param in lora_parameters(saved):
            param.normal_()
    save_adapter(saved, tmp_path / "adapter")
    same = lora_model()
    load_adapter_weights(same, tmp_path / "adapter")
    for (name, want), (_, got) in zip(lora_parameters(saved), lora_parameters(same)):
        assert torch.equal(want, got), name
    with pytest.raises(ManifestMismatchError, match="shape|size"):
        load_adapter_weights(lora_model(r=8), tmp_path / "adapter")
    with pytest.raises(ManifestMismatchError, match="missing .*gate_proj"):
        load_adapter_weights(lora_model(target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj")),
                             tmp_path / "adapter")
    with pytest.raises(ManifestMismatchError, match="unexpected .*v_proj"):
        load_adapter_weights(lora_model(target_modules=("q_proj", "k_proj")), tmp_path / "adapter")


# ------------------------------------------------------------------ golden values
def test_two_steps_from_a_fixed_seed_give_the_stored_losses(tiny, tmp_path):
    """Any change to the recipe (data order, dropout seeds, loss, schedule, AdamW) moves these numbers.

    The values are those of CPU float32 (torch 2.13); the second step's loss
    already reflects the first step's update.
    """
    result = train(EXAMPLES[:4], TrainConfig.for_tests(epochs=1, seed=7), tmp_path / "golden", loaded=tiny)
    state = checkpoint_module.read_state(list_checkpoints(result.out_dir)[0])
    assert state["step"] == 2 and state["learning_rates"] == pytest.approx([1e-2, 5e-3])
    assert state["losses"] == pytest.approx([4.751456627478967, 4.674846475774592], rel=1e-5)
