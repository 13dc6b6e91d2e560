"""`influence publish`: a selection becomes a dataset folder that `datasets` loads as the records
alone, with a card whose metadata carries the sources' licences and whose body says how the
selection was made; bad input is refused in one line before anything is written."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from influence.cli import main
from tests.conftest import write_jsonl

LONG = "A very long answer. " * 200  # the longest response of the mixed pool: picked first by longest


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A `longest` selection of 5 from Alpaca's bundled sample plus a user file, guarded against bbh."""
    folder = tmp_path_factory.mktemp("made")
    records = [{"instruction": "Name a colour.", "input": "", "output": "Blue."},
               {"instruction": "Explain at length.", "input": "", "output": LONG}]
    mine = write_jsonl(folder / "mine.jsonl", records)
    out = folder / "sel.jsonl"
    result = run("select", "--pool", "alpaca", "--pool", str(mine), "--k", "5", "--selector", "longest",
                 "--target", "bbh", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def selection(tmp_path, made):
    """This test's own copy of the selection and its manifest."""
    from influence.constants import manifest_path

    out = tmp_path / made.name
    out.write_bytes(made.read_bytes())
    manifest_path(out).write_bytes(manifest_path(made).read_bytes())
    return out


def test_the_published_folder_loads_as_the_records_only(tmp_path, selection):
    from datasets import load_dataset

    folder = tmp_path / "published"
    result = run("publish", str(selection), "--repo", "someone/picked", "--local-dir", str(folder))
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == \
        ["README.md", "data/train.jsonl", "manifest.json"]
    dataset = load_dataset(str(folder))
    assert list(dataset) == ["train"]
    written = [json.loads(line) for line in selection.read_text().splitlines()]
    assert dataset["train"]["id"] == [r["id"] for r in written]
    assert {"instruction", "input", "output", "rank", "score", "selector", "source"} <= set(dataset["train"].features)
    assert "artifact" not in dataset["train"].features  # the manifest is not read as data
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["published"]["records"] == 5 and manifest["selector"]["name"] == "longest"


def test_the_card_carries_the_licences_the_examples_inherit_and_how_they_were_chosen(tmp_path, selection):
    from huggingface_hub import DatasetCard

    folder = tmp_path / "published"
    assert run("publish", str(selection), "--repo", "someone/picked", "--local-dir", str(folder)).exit_code == 0
    card = DatasetCard.load(folder / "README.md")
    assert card.data.license == ["cc-by-nc-4.0", "unknown"]  # Alpaca's, and the user file's (no --license)
    assert card.data.task_categories == ["text-generation"]
    assert card.data.size_categories == ["n<1K"]
    assert card.data.configs == [{"config_name": "default", "data_files": [{"split": "train",
                                                                          "path": "data/train.jsonl"}]}]
    for fact in ("selector: `longest`", "- k: 5", "- seed: 0", "target: `bbh`", "contamination guard:",
                 "held-out items of `bbh`", "| `mine.jsonl` | unknown |", "| `alpaca` | cc-by-nc-4.0 |",
                 "non-commercial"):
        assert fact in card.text, fact

    again = run("publish", str(selection), "--repo", "someone/picked", "--local-dir", str(folder), "--overwrite",
                "--license", "mit")
    assert again.exit_code == 0, again.output
    assert DatasetCard.load(folder / "README.md").data.license == ["cc-by-nc-4.0", "mit"]


def test_registered_pools_bring_their_licences_and_files_take_the_given_one():
    from influence.publish import licenses_by_source

    records = [{"source": "alpaca"}, {"source": "flan_cot/gsm8k"}, {"source": "flan_cot/aqua"}, {"source": "x.jsonl"}]
    assert licenses_by_source(records, None) == {"alpaca": ("cc-by-nc-4.0", 1), "flan_cot/aqua": ("apache-2.0", 1),
                                                 "flan_cot/gsm8k": ("apache-2.0", 1), "x.jsonl": ("unknown", 1)}
    assert licenses_by_source(records, "cc-by-4.0")["x.jsonl"] == ("cc-by-4.0", 1)


def test_publish_can_lay_the_records_out_as_prompt_completion(tmp_path, selection):
    from datasets import load_dataset

    folder = tmp_path / "pc"
    result = run("publish", str(selection), "--repo", "someone/picked", "--local-dir", str(folder),
                 "--format", "prompt-completion")
    assert result.exit_code == 0, result.output
    row = load_dataset(str(folder))["train"][0]
    assert row["prompt"] == [{"role": "user", "content": "Explain at length."}]
    assert row["completion"] == [{"role": "assistant", "content": LONG}]
    assert row["rank"] == 1


def assert_refused(result, words: str) -> None:
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.output


def test_a_selection_without_its_manifest_is_refused_before_anything_is_written(tmp_path, selection):
    bare = tmp_path / "bare.jsonl"
    bare.write_bytes(selection.read_bytes())
    folder = tmp_path / "out"
    assert_refused(run("publish", str(bare), "--repo", "a/b", "--local-dir", str(folder)), "no manifest beside it")
    assert not folder.exists()


def test_a_non_empty_local_dir_is_kept_without_overwrite(tmp_path, selection):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    assert_refused(run("publish", str(selection), "--repo", "a/b", "--local-dir", str(folder)),
                   "exists and is not empty; pass --overwrite")
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]


def test_pushing_offline_is_one_line_error(selection, monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_refused(run("publish", str(selection), "--repo", "a/b"), "offline (HF_HUB_OFFLINE)")


def test_a_malformed_repo_or_an_edited_selection_is_refused(tmp_path, selection):
    assert_refused(run("publish", str(selection), "--repo", "no-org", "--local-dir", str(tmp_path / "o")),
                   "--repo must be ORG/NAME")
    selection.write_text(selection.read_text().replace("Explain at length.", "Explain briefly."))
    assert_refused(run("publish", str(selection), "--repo", "a/b", "--local-dir", str(tmp_path / "o")),
                   "was changed after `influence select` wrote it")
