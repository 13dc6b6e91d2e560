"""A LESS selection through the CLI on a tiny model: the manifest records what really happened
(featurized tokens and timings summed over checkpoints, the resolved model and projector), a
target that overlaps the pool is warned about with its count, and a warning is given once."""

from __future__ import annotations

import json
import logging

from influence.constants import manifest_path
from influence.features import FeaturizeStats
from tests.conftest import write_jsonl
from tests.test_safe_outputs import RECORDS, cli


def test_featurize_stats_add_every_field():
    total = FeaturizeStats(examples=2, done=2, truncated=1, empty=0, tokens=10, gradient_seconds=0.5,
                           projection_seconds=0.25)
    total.add(FeaturizeStats(examples=3, done=1, truncated=0, empty=1, tokens=7, gradient_seconds=1.0,
                             projection_seconds=0.5))
    assert total == FeaturizeStats(examples=5, done=3, truncated=1, empty=1, tokens=17, gradient_seconds=1.5,
                                   projection_seconds=0.75)


def test_less_selection_manifest_is_honest_and_overlap_is_warned(tmp_path, tiny_model_dir, caplog):
    pool = write_jsonl(tmp_path / "pool.jsonl", RECORDS)
    target = write_jsonl(tmp_path / "target.jsonl", [RECORDS[2], {"instruction": "Why?", "output": "Because."}])
    out = tmp_path / "sel.jsonl"
    with caplog.at_level(logging.WARNING):
        result = cli("select", "--pool", str(pool), "--target", str(target), "--k", "2", "--out", str(out),
                     "--model", str(tiny_model_dir), "--lora-r", "4", "--lora-alpha", "16", "--dims", "64",
                     "--warmup-fraction", "0.5", "--warmup-epochs", "1", "--max-length", "64",
                     "--index-root", str(tmp_path / "indexes"))
    assert result.returncode == 0, result.stderr
    assert "warning: 1 example of the target (2) is also in the pool" in result.stderr
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["target"]["also_in_pool"] == 1
    params, datastore = manifest["selector"]["params"], manifest["datastore"]
    assert params["model"] == str(tiny_model_dir) and params["projector"] == "sjlt"
    assert datastore["model"]["location"] == str(tiny_model_dir) and len(datastore["model"]["weights_sha256"]) == 64
    assert datastore["projector"]["type"] == "sjlt" and datastore["projector"]["backend"] == "torch"
    for role, examples in (("pool", 6), ("target", 2)):
        featurized = datastore["featurized"][role]
        assert featurized["done"] == examples and featurized["tokens"] > examples
        assert featurized["gradient_seconds"] > 0
    assert datastore["featurized"]["pool"]["projection_seconds"] > 0
    # a one-epoch warmup of one step records learning rate 0: said once, not once per use
    zero_lr = [r for r in caplog.records if "learning rate 0" in r.getMessage()]
    assert len(zero_lr) == 1
