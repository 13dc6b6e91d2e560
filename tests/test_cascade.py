"""The cascade (`--prefilter SELECTOR:N`): a cheap selector's shortlist decides what the costly selector
may pick; the manifest records it; its datastores are the shortlist's own; bad prefilters are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from influence.cascade import Prefilter, shortlist
from influence.cli import main
from influence.constants import manifest_path
from influence.errors import SelectionError, UnknownNameError
from influence.features.datastore import FeatureStore
from influence.io import sha256_json
from influence.less import LessSettings
from influence.less.estimate import token_stats
from influence.selection import select
from influence.selectors import SELECTORS, Scores, Selector
from influence.selectors.less import LessSelector
from tests.conftest import write_jsonl
from tests.test_less import TARGET, _loaded, _pool
from tests.test_safe_outputs import cli, one_error_line


class ById(Selector):
    """Scores an example by the position of its id in `order` (first best); others -inf."""

    name = "by-id"
    requires_target = True

    def __init__(self, order: list[str]):
        self.order = order

    def score(self, pool, context):
        rank = {key: len(self.order) - i for i, key in enumerate(self.order)}
        return Scores(np.array([rank.get(key, -np.inf) for key in pool.ids]))

    def params(self):
        return {"order": self.order}


@pytest.fixture
def settings(tmp_path) -> LessSettings:
    return LessSettings.for_tests(index_root=tmp_path / "indexes", dims=512)


def _register(monkeypatch, order: list[str]) -> None:
    monkeypatch.setitem(SELECTORS, ById.name, lambda: ById(order))


def test_the_prefilters_ranking_decides_the_shortlist(monkeypatch):
    pool = _pool()
    _register(monkeypatch, pool.ids[::-1][:7])  # the last seven, last first
    short = shortlist(pool, Prefilter(ById.name, 5), target=TARGET)
    assert short.indices.tolist() == list(range(len(pool) - 5, len(pool)))
    assert short.indices.tolist() == sorted(short.indices.tolist())  # the shortlist keeps pool order
    assert [e.id for e in short.pool.examples] == [pool.ids[i] for i in short.indices]


def test_less_picks_only_from_the_shortlist_and_the_manifest_records_it(monkeypatch, settings):
    pool, loaded = _pool(), _loaded()
    sums = [e.id for e in pool.examples if "plus" in e.instruction]
    others = [e.id for e in pool.examples if "plus" not in e.instruction]
    # two of the four planted sums make the shortlist, beside eight unrelated texts
    ranked = sums[:2] + others[:8]
    _register(monkeypatch, ranked)
    cascade = select(pool, 2, LessSelector(settings, loaded=loaded), target=TARGET,
                     prefilter=Prefilter(ById.name, 10))
    listed = set(ranked)
    assert {pool.ids[i] for i in cascade.indices} <= listed
    assert sorted(e.id for e in cascade.examples) == sorted(sums[:2])  # LESS still finds the sums
    assert np.isnan(cascade.scores[[i for i, e in enumerate(pool.examples) if e.id not in listed]]).all()

    manifest = cascade.manifest("alpaca")
    record = manifest["prefilter"]
    assert (record["selector"], record["n"], record["pool_size"]) == (ById.name, 10, len(pool))
    kept = [i for i, e in enumerate(pool.examples) if e.id in listed]
    assert record["fingerprint"] == sha256_json([pool.ids[i] for i in kept])
    assert record["ranked_ids_sha256"] == sha256_json(ranked)
    assert manifest["pool"]["fingerprint"] == pool.fingerprint and manifest["pool"]["size"] == len(pool)
    assert manifest["selected_ids_sha256"] == sha256_json([pool.ids[i] for i in cascade.indices])


def test_a_shortlists_datastore_is_never_the_whole_pools(monkeypatch, settings):
    pool, loaded = _pool(), _loaded()
    _register(monkeypatch, pool.ids[:10])
    full = select(pool, 2, LessSelector(settings, loaded=loaded), target=TARGET)
    cascade = select(pool, 2, LessSelector(settings, loaded=loaded), target=TARGET,
                     prefilter=Prefilter(ById.name, 10))
    full_store, short_store = (s.manifest("alpaca")["datastore"] for s in (full, cascade))
    assert full_store["workdir"] != short_store["workdir"]
    cosines = FeatureStore.open(short_store["cosine_stores"][0][0])
    assert cosines.identity["examples"] == cascade.manifest("alpaca")["prefilter"]["fingerprint"]
    assert cosines.identity["examples"] != pool.fingerprint and cosines.rows().shape[0] == 10
    assert FeatureStore.open(full_store["cosine_stores"][0][0]).identity["examples"] == pool.fingerprint


def test_a_bm25_prefilter_through_the_cli_writes_a_subset_of_its_shortlist(tmp_path):
    records = [{"instruction": f"What is {a} plus {a + 3}?", "output": f"{2 * a + 3}."} for a in range(4)] + \
              [{"instruction": f"Describe the colour number {i}.", "output": "A colour " * (i + 1)}
               for i in range(8)]
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    target = write_jsonl(tmp_path / "target.jsonl", [{"instruction": "What is 2 plus 9?", "output": "11."}])
    out = tmp_path / "sel.jsonl"
    result = CliRunner().invoke(main, ["select", "--pool", str(pool), "--target", str(target), "--selector",
                                       "longest", "--prefilter", "bm25:4", "--k", "2", "--out", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "prefilter: bm25 shortlisted 4 of 12" in result.output
    chosen = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(chosen) == 2 and all("plus" in r["instruction"] for r in chosen)  # the longest of the sums
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["prefilter"]["selector"] == "bm25" and manifest["prefilter"]["n"] == 4


@pytest.mark.parametrize("prefilter,fragments", [
    ("bm25:1", ["fewer than k=2", "N >= 2"]),
    ("bm25:99", ["pool has 6", "N <= 6"]),
    ("nosuch:4", ["unknown prefilter selector 'nosuch'"]),
    ("bm25", ["expected SELECTOR:N"]),
    ("bm25:0", ["positive integer"]),
])
def test_a_bad_prefilter_is_one_line_before_any_work(tmp_path, prefilter, fragments):
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"instruction": f"Q {i}?", "output": "a " * (i + 1)}
                                                 for i in range(6)])
    target = write_jsonl(tmp_path / "target.jsonl", [{"instruction": "Q 1?", "output": "a"}])
    out = tmp_path / "sel.jsonl"
    result = cli("select", "--pool", str(pool), "--target", str(target), "--selector", "longest", "--prefilter",
                 prefilter, "--k", "2", "--out", str(out))
    one_error_line(result, *fragments)
    assert not out.exists() and not manifest_path(out).exists()


def test_a_targeted_prefilter_without_a_target_is_one_line(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"instruction": f"Q {i}?", "output": "a"} for i in range(6)])
    result = cli("select", "--pool", str(pool), "--prefilter", "bm25:4", "--k", "2", "--out",
                 str(tmp_path / "sel.jsonl"))
    one_error_line(result, "prefilter 'bm25' ranks against a target", "--target")


def test_prefilter_values_are_checked_where_they_are_made():
    with pytest.raises(UnknownNameError):
        Prefilter("nosuch", 3)
    with pytest.raises(SelectionError, match="positive integer"):
        Prefilter("bm25", -1)
    with pytest.raises(SelectionError, match="fewer than k=5"):
        Prefilter.parse("embed:4").check(5, "bbh")
    assert Prefilter.parse(" embed:1000 ").label == "embed:1000"


def test_the_dry_run_prices_only_the_shortlist(tmp_path, tiny_model_dir):
    from influence.data.pools import load_pool
    from influence.less.pipeline import dry_run

    pool = load_pool([str(write_jsonl(tmp_path / "pool.jsonl", [
        {"instruction": f"Say {i}.", "output": f"{i}!" * i} for i in range(1, 41)]))])
    settings = LessSettings.for_tests(model=str(tiny_model_dir), index_root=tmp_path / "indexes")
    whole = dry_run(pool, TARGET, settings)
    short = dry_run(pool, TARGET, settings, shortlist=10)
    assert (whole.pool.examples, short.pool.examples) == (40, 10)
    assert short.pool.tokens == pytest.approx(whole.pool.tokens / 4, abs=1)
    assert short.target == whole.target  # the target pass is the same either way
    assert short.flops["featurize_pool"] == pytest.approx(whole.flops["featurize_pool"] / 4, rel=0.01)


def test_scaled_token_stats_keep_the_mean_length():
    from influence.data import Example

    stats = token_stats([Example(f"Q{i}", "", "word " * i) for i in range(1, 21)])
    half = stats.scaled(10)
    assert half.examples == 10 and half.mean == pytest.approx(stats.mean, rel=0.01)
    assert half.longest == stats.longest


def test_a_compare_row_takes_a_prefilter_for_its_selector():
    from influence.compare.row_selector import make_row_selector, row_prefilter
    from influence.compare.settings import CompareSettings, SelectorRow, parse_rows

    config = CompareSettings(pools=["alpaca"], targets=["bbh"], k=100)
    assert parse_rows("random,less:prefilter=embed:1000,scoring=exact") == [
        "random", "less:prefilter=embed:1000,scoring=exact"]
    row = SelectorRow.parse("less:prefilter=embed:1000,scoring=exact")
    prefilter = row_prefilter(row, config)
    assert prefilter.label == "embed:1000" and prefilter.options == {"settings": config.less}
    made = make_row_selector(row, config)  # the prefilter is the cascade's, not an option of the selector
    assert made.name == "less" and made.settings.scoring == "exact"
    assert row_prefilter(SelectorRow.parse("less"), config) is None
    with pytest.raises(SelectionError, match="fewer than k=100"):
        row_prefilter(SelectorRow.parse("less:prefilter=bm25:50"), config)
    with pytest.raises(UnknownNameError):
        row_prefilter(SelectorRow.parse("less:prefilter=nosuch:500"), config)
