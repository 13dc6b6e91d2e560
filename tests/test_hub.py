"""A hub model is known by its commit, read from huggingface_hub's cache layout when offline,
and offline mode (HF_HUB_OFFLINE) is honoured without any network attempt."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from influence.errors import ModelError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any attempt to open a connection."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args[:1]}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch, no_network) -> Path:
    """A hub cache laid out as huggingface_hub lays it out, holding a tiny model `org/tiny` at COMMIT,
    with huggingface_hub and transformers pointed at it and offline."""
    import huggingface_hub.constants

    from influence.testing import tiny_model_and_tokenizer

    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny"
    snapshot = repo / "snapshots" / COMMIT
    model, tokenizer = tiny_model_and_tokenizer()
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_offline_follows_huggingface_hubs_setting(monkeypatch):
    import huggingface_hub.constants

    from influence.hub import offline

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "INFLUENCE_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert not offline()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert offline()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after huggingface_hub read it: still honoured
    assert offline()


def test_offline_the_commit_comes_from_the_cache_refs(offline_hub):
    from influence.hub import resolve_commit
    from influence.models import hub_commit, resolve_model

    assert resolve_commit("org/tiny") == COMMIT
    location, identity = resolve_model("org/tiny")
    assert location == "org/tiny" and identity == f"hub:org/tiny@{COMMIT}"
    assert hub_commit(identity) == COMMIT


def test_offline_an_uncached_hub_id_is_one_clear_error_without_network(offline_hub):
    from influence.models import resolve_model

    with pytest.raises(ModelError, match="offline .*not in the local cache"):
        resolve_model("org/absent")


def test_a_loaded_hub_model_and_its_manifests_carry_the_commit(offline_hub):
    from influence.models import load_model

    loaded = load_model("org/tiny", device="cpu")
    assert loaded.weights_sha256 == f"hub:org/tiny@{COMMIT}"
    assert loaded.info["weights_sha256"].endswith(COMMIT)
    assert loaded.tokenizer.chat_template  # loaded from the snapshot


def test_the_datastore_name_of_a_hub_model_changes_with_its_commit(offline_hub, pool_file):
    from influence.data.pools import load_pool
    from influence.less.pipeline import run_name
    from influence.less.settings import LessSettings

    pool = load_pool([str(pool_file)])
    settings = LessSettings.for_tests(model="org/tiny")
    before = run_name(pool, settings)
    (offline_hub / "models--org--tiny" / "refs" / "main").write_text("f" * 40)
    assert run_name(pool, settings) != before


def test_the_alpaca_pool_offline_reads_the_bundled_sample_without_network(no_network, monkeypatch, tmp_path):
    from influence.data.pools import load_pool

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    pool = load_pool(["alpaca"])
    assert len(pool) > 4000
    assert "bundled" in pool.sources[0].origin
