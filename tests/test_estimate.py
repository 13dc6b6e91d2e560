"""Dry-run estimates: token counts, model sizes, the arithmetic of time, disk and memory, the device probe."""

from __future__ import annotations

import copy
import math
import os
import time

import pytest

from influence.data.example import Example
from influence.data.formatting import encode_example
from influence.errors import ConfigError
from influence.less.estimate import (CHARS_PER_TOKEN, TEMPLATE_CHARS, LessEstimate, ModelShape, TokenStats, estimate_less,
                                measure_flops, token_stats)
from influence.less.settings import LessSettings
from influence.lora import LoraSettings, add_lora, lora_signature
from influence.testing import tiny_model_and_tokenizer

SHAPE = ModelShape(params=1_000_000_000, lora_params=10_000_000, layers=24, hidden=2048, heads=16, vocab=32000)


def examples(n, prompt="Explain the tides.", response="The moon pulls the sea."):
    return [Example(f"{prompt} ({i})", "", response * (1 + i % 3)) for i in range(n)]


def stats(n, tokens_each=200, response_each=100):
    return TokenStats(examples=n, tokens=n * tokens_each, response_tokens=n * response_each,
                      squared_tokens=float(n * tokens_each ** 2), longest=tokens_each, truncated=0, method="given")


def test_token_stats_without_a_tokenizer_count_characters_over_four():
    pool = [Example("a" * 100, "", "b" * 400), Example("c" * 4000, "", "d" * 8)]
    got = token_stats(pool, max_length=512)
    first = math.ceil((100 + TEMPLATE_CHARS) / CHARS_PER_TOKEN) + 400 // CHARS_PER_TOKEN + 1
    second_full = math.ceil((4000 + TEMPLATE_CHARS) / CHARS_PER_TOKEN) + 2 + 1
    assert got.examples == 2 and got.truncated == 1 and got.longest == 512
    assert got.tokens == first + 512
    assert got.response_tokens == 101 + max(0, 3 - (second_full - 512))  # the cut takes the response first
    assert "characters / 4" in got.method


def test_token_stats_with_a_tokenizer_match_the_encoder_and_scale_a_sample():
    _, tokenizer = tiny_model_and_tokenizer()
    pool = examples(30)
    whole = token_stats(pool, tokenizer=tokenizer, max_length=40)
    encoded = [encode_example(e, tokenizer, max_length=40) for e in pool]
    assert whole.tokens == sum(len(e.input_ids) for e in encoded)
    assert whole.response_tokens == sum(e.response_tokens for e in encoded)
    assert whole.truncated == sum(e.truncated for e in encoded) > 0 and whole.method == "tokenizer"
    sampled = token_stats(pool, tokenizer=tokenizer, max_length=40, sample=10, seed=1)
    assert "10-example sample" in sampled.method and sampled.examples == 30
    assert abs(sampled.tokens - whole.tokens) <= 0.25 * whole.tokens
    assert token_stats(pool, tokenizer=tokenizer, max_length=40, sample=10, seed=1) == sampled  # seeded
    assert token_stats([]).tokens == 0


def test_model_shape_counts_what_lora_will_add():
    model, _ = tiny_model_and_tokenizer()
    lora = LoraSettings.for_tests()
    shape = ModelShape.from_model(model, lora)
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert shape.body_params == shape.params - 2 * shape.vocab * shape.hidden  # untied input and output tables
    assert (shape.layers, shape.hidden, shape.vocab) == (2, 32, model.config.vocab_size)
    wrapped = add_lora(copy.deepcopy(model), lora)
    assert shape.lora_params == lora_signature(wrapped)["numel"]
    assert ModelShape.from_model(wrapped, lora) == shape  # adapters already there are not counted as the base
    assert ModelShape.from_config(model.config, lora) == shape  # built on the meta device, no weights
    with pytest.raises(ConfigError, match="no layer of the model matches the LoRA target modules gate"):
        ModelShape.from_model(model, LoraSettings(r=4, target_modules=("gate",)))


def test_estimate_arithmetic_disk_time_and_memory():
    settings = LessSettings(dims=8192, warmup_epochs=4, warmup_fraction=0.05, scoring="faiss")
    pool, target = stats(100_000), stats(300, 400, 300)
    est = estimate_less(pool, target, settings, shape=SHAPE, flops_per_second=1e12, utilization=0.5, subtasks=3,
                        memory_budget=1 << 50)
    assert isinstance(est, LessEstimate) and est.checkpoints == 4 and est.warmup_examples == 5000
    assert est.disk_bytes["pool_features"] == 100_000 * 8192 * 2 * 4
    assert est.disk_bytes["target_features"] == 300 * 8192 * 2 * 4
    assert est.disk_bytes["total"] == sum(v for k, v in est.disk_bytes.items() if k != "total")
    for key in ("warmup", "featurize_pool", "featurize_target", "score"):
        assert est.seconds[key] == pytest.approx(est.flops[key] / 0.5e12)
    assert est.seconds["total"] == pytest.approx(sum(est.flops.values()) / 0.5e12)
    # warmup is 5% of the pool for 4 epochs; featurization is the whole pool at 4 checkpoints (and more per example)
    assert est.flops["warmup"] < 0.06 * est.flops["featurize_pool"]
    per_token = 4 * SHAPE.body_params + 6 * SHAPE.lora_params
    assert est.flops["featurize_pool"] >= 4 * per_token * pool.tokens
    assert est.peak_memory_bytes == max(est.memory_bytes.values()) > SHAPE.params * 2
    # a warmup of one step per epoch: the first checkpoint (learning rate 0) is not featurized
    short = estimate_less(stats(200), target, settings, shape=SHAPE, flops_per_second=1e12, subtasks=3,
                          memory_budget=1 << 50)
    assert (short.warmup_examples, short.warmup_epochs, short.checkpoints) == (10, 4, 3)
    assert short.disk_bytes["pool_features"] == 200 * 8192 * 2 * 3
    assert short.disk_bytes["checkpoints"] == SHAPE.lora_params * 4 * 3 * 4
    assert any("learning rate 0" in note for note in short.notes)
    assert est.warmup_epochs == 4 and not any("learning rate 0" in note for note in est.notes)
    # twice the pool: twice the featurization and the pool's disk
    double = estimate_less(stats(200_000), target, settings, shape=SHAPE, flops_per_second=1e12, subtasks=3)
    assert double.flops["featurize_pool"] == pytest.approx(2 * est.flops["featurize_pool"])
    assert double.disk_bytes["pool_features"] == 2 * est.disk_bytes["pool_features"]
    # more dims: more disk; a dense TRAK projection costs far more than the sparse one
    wide = estimate_less(pool, target, settings.with_(dims=16384), shape=SHAPE, flops_per_second=1e12, subtasks=3)
    assert wide.disk_bytes["pool_features"] == 2 * est.disk_bytes["pool_features"]
    assert wide.flops["featurize_pool"] == pytest.approx(est.flops["featurize_pool"], rel=1e-3)
    trak = estimate_less(pool, target, settings.with_(projector="trak-basic"), shape=SHAPE, flops_per_second=1e12)
    dense_minus_sparse = 4 * 100_000 * 2 * SHAPE.lora_params * (8192 - 1)  # per checkpoint and example
    assert trak.flops["featurize_pool"] - est.flops["featurize_pool"] == pytest.approx(dense_minus_sparse)
    # a compressed index needs a fraction of a flat one's memory to score
    pq = estimate_less(pool, target, settings, shape=SHAPE, flops_per_second=1e12, index_kind="ivf-pq")
    assert pq.memory_bytes["score"] < est.memory_bytes["score"] / 4


def test_a_flat_index_beyond_the_memory_budget_is_estimated_as_the_chunked_exact_fallback():
    settings, pool, target = LessSettings(scoring="faiss"), stats(100_000), stats(300)
    roomy = estimate_less(pool, target, settings, shape=SHAPE, flops_per_second=1e12, memory_budget=1 << 50)
    tight = estimate_less(pool, target, settings, shape=SHAPE, flops_per_second=1e12, memory_budget=1 << 30)
    assert (roomy.index_kind, tight.index_kind) == ("flat", "exact")
    assert roomy.memory_bytes["score"] >= 100_000 * 8192 * 4 * 4 > 1 << 30 > tight.memory_bytes["score"]
    assert "score (exact, chunked)" in " ".join(tight.lines()) and "fall back" in " ".join(tight.notes)
    assert "score (flat index)" in " ".join(roomy.lines()) and not roomy.notes


def test_the_unprojected_estimate_holds_one_query_per_subtask_and_splits_them_past_the_budget():
    settings, pool, target = LessSettings(), stats(100_000), stats(81)
    queries = 27 * SHAPE.lora_params * 4
    roomy = estimate_less(pool, target, settings, shape=SHAPE, flops_per_second=1e12, subtasks=27,
                          memory_budget=1 << 50)
    projected = estimate_less(pool, target, settings.with_(scoring="faiss"), shape=SHAPE, flops_per_second=1e12,
                              subtasks=27, memory_budget=1 << 50)
    assert (roomy.index_kind, roomy.passes, roomy.query_bytes) == ("unprojected", 1, queries)
    assert roomy.memory_bytes["featurize"] - projected.memory_bytes["featurize"] == \
        queries - SHAPE.lora_params * 12  # the queries instead of the sjlt tables
    assert roomy.disk_bytes["pool_features"] == 100_000 * 27 * 4 * 4  # float32 cosines, no features
    assert roomy.disk_bytes["target_features"] == 0
    text = " ".join(roomy.lines())
    assert "27 subtask queries x 10.0 M LoRA parameters x 4 B = 1.1 GB" in text and "1 pass of the pool" in text
    assert "features: none projected or stored" in text
    stored = estimate_less(pool, target, settings.with_(store_features=True), shape=SHAPE, flops_per_second=1e12,
                           subtasks=27, memory_budget=1 << 50)
    assert "4 checkpoints x 8,192 dims" in " ".join(stored.lines())
    assert stored.disk_bytes["pool_features"] == roomy.disk_bytes["pool_features"] + 100_000 * 8192 * 2 * 4
    tight = estimate_less(pool, target, settings, shape=SHAPE, flops_per_second=1e12, subtasks=27,
                          memory_budget=queries // 3)
    assert (tight.passes, tight.query_bytes) == (3, 9 * SHAPE.lora_params * 4)
    assert tight.flops["featurize_pool"] > 2.5 * roomy.flops["featurize_pool"]
    assert "passed 3 times" in " ".join(tight.notes)
    with pytest.raises(ConfigError, match="--scoring faiss"):
        estimate_less(pool, target, settings, shape=SHAPE, flops_per_second=1e12, subtasks=27,
                      memory_budget=SHAPE.lora_params)


def test_lines_are_one_line_each_and_say_the_estimate_is_rough():
    est = estimate_less(stats(52_002), stats(81), LessSettings(scoring="faiss"), shape=SHAPE, flops_per_second=5e13)
    lines = est.lines()
    assert all(isinstance(line, str) and "\n" not in line for line in lines)
    assert "rough" in lines[0]
    text = " ".join(lines)
    for part in ("52,002 examples", "4 checkpoints x 8,192 dims", "50.0 TFLOP/s", "disk:", "peak memory:",
                 "total time"):
        assert part in text, part
    assert est.to_dict()["peak_memory_bytes"] == est.peak_memory_bytes


def test_estimate_from_examples_probes_the_device_and_writes_nothing(tmp_path):
    model, tokenizer = tiny_model_and_tokenizer()
    settings = LessSettings.for_tests(index_root=tmp_path / "indexes")
    pool = examples(40)
    target = [Example("Q?", "", "A.", subtask=s) for s in ("x", "y", "y")]
    est = estimate_less(pool, target, settings, shape=ModelShape.from_model(model, settings.lora),
                        tokenizer=tokenizer, device="cpu")
    assert est.device == "cpu" and est.flops_per_second > 0 and est.pool.method == "tokenizer"
    assert 0 < est.seconds["total"] < math.inf and est.disk_bytes["total"] > 0
    assert not (tmp_path / "indexes").exists()


def test_the_matmul_probe_is_short_and_positive():
    import time

    started = time.perf_counter()
    rate = measure_flops("cpu", seconds=0.05)
    assert 1e6 < rate < 1e16 and time.perf_counter() - started < 5


def test_bad_estimate_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="unknown index kind 'hnsw'"):
        estimate_less(stats(10), stats(1), LessSettings(), shape=SHAPE, flops_per_second=1e12, index_kind="hnsw")
    with pytest.raises(ConfigError, match="flops_per_second must be positive"):
        estimate_less(stats(10), stats(1), LessSettings(), shape=SHAPE, flops_per_second=0.0)
    with pytest.raises(ConfigError, match="utilization must be in"):
        estimate_less(stats(10), stats(1), LessSettings(), shape=SHAPE, flops_per_second=1e12, utilization=0)


def test_the_dry_run_says_how_busy_the_machine_was_when_it_probed(monkeypatch):
    import influence.less.estimate as estimate

    settings = LessSettings()
    measured = estimate_less(stats(100), stats(1), settings, shape=SHAPE, device="cpu")
    assert measured.load is not None and "load average" in " ".join(measured.lines())
    given = estimate_less(stats(100), stats(1), settings, shape=SHAPE, device="cpu", flops_per_second=1e12)
    assert given.load is None and "(given)" in " ".join(given.lines())
    for load, busy in ((estimate.MachineLoad(cpus=2, load_average=6.0, others_busy=1.8), True),
                       (estimate.MachineLoad(cpus=2, load_average=0.1, others_busy=0.02), False)):
        monkeypatch.setattr(estimate, "calibrate", lambda device, load=load: (1e12, load))
        text = " ".join(estimate_less(stats(100), stats(1), settings, shape=SHAPE, device="cpu").lines())
        assert "other processes used 1.8 of 2 CPUs" in text if busy else "0.0 of 2 CPUs" in text
        assert ("the machine was busy while the probe ran" in text) == busy


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux /proc/stat")
def test_the_probe_counts_another_process_busy_on_the_cpus():
    import subprocess
    import sys

    from influence.less.estimate import calibrate

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        rate, load = calibrate("cpu", seconds=0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert rate > 0 and load.others_busy is not None and load.others_busy >= 0.25 and load.busy
