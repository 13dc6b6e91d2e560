"""Outputs are checked before any work, replaced only as a whole, and written with the user's umask.

Every case runs the `influence` command and checks the exit status, the one `error:` line and
the files on disk before and after. Cases about permissions run it in a subprocess as an
unprivileged user (`nobody`, through setpriv) when the tests run as root, since root may write
anywhere; the others use click's runner in this process, which is the same command.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from dataclasses import dataclass
from typing import Iterator

import pytest
from click.testing import CliRunner

from influence.cli import main
from influence.constants import manifest_path
from tests.conftest import write_jsonl

RECORDS = [{"instruction": f"Question {i}?", "output": "an answer " * (i + 1)} for i in range(6)]


def influence(*args: str, cwd: Path | None = None, as_user: bool = False,
              timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python -m influence.cli ARGS`; `as_user`: without root's power to write anywhere."""
    command = [sys.executable, "-m", "influence.cli", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parents[1]),
                                                                  os.environ.get("PYTHONPATH", "")) if p),
           "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"}
    if as_user and os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        env["HOME"] = tempfile.gettempdir()
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str) -> Outcome:
    """The same command through click's runner, in this process."""
    result = CliRunner().invoke(main, list(args), prog_name="influence", catch_exceptions=False)
    return Outcome(result.exit_code, result.stdout, result.stderr)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


def one_error_line(result: subprocess.CompletedProcess | Outcome, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def listing(directory: Path) -> dict[str, str]:
    """Every file under `directory` with its content (or its kind), to compare before and after."""
    out = {}
    for path in sorted(directory.rglob("*")):
        out[str(path.relative_to(directory))] = path.read_text() if path.is_file() else "<dir>"
    return out


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every user may enter (pytest's own is root's alone), with a pool file in it."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot act as an unprivileged user")
    base = Path(tempfile.mkdtemp(prefix="influence-test-"))
    os.chmod(base, 0o777)
    write_jsonl(base / "pool.jsonl", RECORDS)
    os.chmod(base / "pool.jsonl", 0o644)
    yield base
    for path in base.rglob("*"):
        if path.is_dir():
            os.chmod(path, 0o755)
    shutil.rmtree(base)


def _read_only_dir(path: Path) -> Path:
    path.mkdir()
    os.chmod(path, 0o555)
    return path


# ------------------------------------------------------------------ checked before any work
def test_select_into_an_unwritable_directory_fails_before_reading_the_pool(shared):
    locked = _read_only_dir(shared / "locked")
    # the pool does not exist: were the output checked after reading it, the error would name the pool
    result = influence("select", "--pool", str(shared / "absent.jsonl"), "--k", "2",
                       "--out", str(locked / "sel.jsonl"), as_user=True)
    one_error_line(result, f"cannot write in {locked}", "permission denied")
    assert list(locked.iterdir()) == []


def test_an_out_inside_a_directory_the_user_cannot_enter_is_one_line(shared):
    closed = shared / "closed"
    closed.mkdir(mode=0o700)
    result = influence("select", "--pool", str(shared / "absent.jsonl"), "--k", "2",
                       "--out", str(closed / "sub" / "sel.jsonl"), as_user=True)
    one_error_line(result, f"cannot write {closed / 'sub' / 'sel.jsonl'}", "cannot be entered")
    assert list(closed.iterdir()) == []


def test_default_selections_dir_in_an_unwritable_working_directory_fails_first(shared):
    locked = _read_only_dir(shared / "cwd")
    result = influence("select", "--pool", str(shared / "absent.jsonl"), "--k", "2", cwd=locked, as_user=True)
    one_error_line(result, f"cannot create directories in {locked}")
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("command", ["score", "train", "evaluate", "compare"])
def test_score_train_evaluate_and_compare_check_their_output_first(shared, command):
    locked = _read_only_dir(shared / "locked")
    missing_model = str(shared / "no-such-model")  # were the output checked later, the model would fail first
    args, message = {
        "score": (["--pool", str(shared / "absent.jsonl"), "--target", "bbh", "--k", "2",
                   "--out", str(locked / "s.jsonl")], f"cannot write in {locked}"),
        "train": (["--data", str(shared / "pool.jsonl"), "--model", missing_model, "--out", str(locked / "run")],
                  f"cannot create directories in {locked}"),
        "evaluate": (["--target", "tydiqa", "--model", missing_model, "--out", str(locked / "e.json")],
                     f"cannot write in {locked}"),
        "compare": (["--pool", str(shared / "absent.jsonl"), "--target", "mmlu", "--k", "2",
                     "--out", str(locked / "cmp")], f"cannot create directories in {locked}"),
    }[command]
    one_error_line(influence(command, *args, as_user=True), message)
    assert list(locked.iterdir()) == []


def test_non_regular_outputs_are_refused_and_left_alone(tmp_path, pool_file):
    for args, message in [
        (["select", "--pool", str(pool_file), "--k", "1", "--out", "/dev/full", "--overwrite"], "not a regular file"),
        (["evaluate", "--target", "tydiqa", "--model", str(tmp_path / "nope"), "--out", "/dev/full"],
         "not a regular file"),
        (["compare", "--pool", str(pool_file), "--target", "mmlu", "--k", "1", "--out", str(pool_file)],
         "is a file"),
        (["train", "--data", str(pool_file), "--out", str(pool_file)], "is a file"),
    ]:
        one_error_line(cli(*args), message)
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert pool_file.read_text().count("\n") == 4


def test_stdout_as_out_is_refused(tmp_path, pool_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("select", "--pool", str(pool_file), "--k", "1", "--out", "-")
    one_error_line(result, "--out - is not supported")
    assert not (tmp_path / "-").exists()


def test_selecting_into_a_directory_is_a_one_line_error(tmp_path, pool_file):
    one_error_line(cli("select", "--pool", str(pool_file), "--k", "1", "--out", str(tmp_path)),
                   "is a directory")


# ------------------------------------------------------------------ --overwrite replaces a unit
def test_overwrite_refuses_a_manifest_path_that_is_a_directory_and_keeps_the_old_selection(tmp_path, pool_file):
    out = tmp_path / "o.jsonl"
    out.write_text("old\n")
    manifest_path(out).mkdir()
    before = listing(tmp_path)
    result = cli("select", "--pool", str(pool_file), "--k", "2", "--out", str(out), "--overwrite")
    one_error_line(result, f"{manifest_path(out)} is a directory")
    assert listing(tmp_path) == before


def test_overwrite_replaces_both_files_or_neither(tmp_path, pool_file, monkeypatch):
    """A rename that fails half-way puts the old pair back (library level: failure injected)."""
    from influence import io, load_pool, make_selector, select, write_selection

    out = tmp_path / "o.jsonl"
    first = select(load_pool(str(pool_file)), 2, make_selector("longest"))
    write_selection(first, out)
    before = listing(tmp_path)
    calls = []
    real_replace = os.replace

    def second_rename_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", second_rename_fails)
    second = select(load_pool(str(pool_file)), 3, make_selector("random"))
    with pytest.raises(OSError):
        write_selection(second, out, overwrite=True)
    monkeypatch.undo()
    assert listing(tmp_path) == before  # both old files back, no temporaries left


def test_train_overwrite_never_deletes_a_directory_that_is_not_a_training_run(tmp_path, pool_file):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work\n")
    before = listing(precious)
    result = cli("train", "--data", str(pool_file), "--out", str(precious), "--overwrite",
                 "--model", str(tmp_path / "no-such-model"))
    one_error_line(result, "is not a training run", "thesis.tex")
    assert listing(precious) == before


# ------------------------------------------------------------------ modes
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_get_the_mode_a_plain_open_would_give(tmp_path, pool_file, mask, mode):
    out = tmp_path / "new" / "sel.jsonl"
    with umask(mask):
        result = cli("select", "--pool", str(pool_file), "--k", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    for path in (out, manifest_path(out)):
        assert stat.S_IMODE(path.stat().st_mode) == mode
    assert stat.S_IMODE(out.parent.stat().st_mode) == 0o777 & ~mask


def test_a_replaced_file_keeps_its_own_mode(tmp_path, pool_file):
    out = tmp_path / "sel.jsonl"
    out.write_text("old\n")
    os.chmod(out, 0o604)
    result = cli("select", "--pool", str(pool_file), "--k", "2", "--out", str(out), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o604 and len(out.read_text().splitlines()) == 2


# ------------------------------------------------------------------ the Hugging Face stack
def test_a_directory_of_selections_loads_in_datasets_as_records_only(tmp_path, pool_file):
    import datasets

    folder = tmp_path / "selections"
    for selector, k in (("longest", "2"), ("random", "3")):
        result = cli("select", "--pool", str(pool_file), "--k", k, "--selector", selector,
                     "--out", str(folder / f"{selector}.jsonl"))
        assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == [".longest.manifest.json", ".random.manifest.json",
                                                       "longest.jsonl", "random.jsonl"]
    loaded = datasets.load_dataset("json", data_dir=str(folder), cache_dir=str(tmp_path / "cache"))
    rows = loaded["train"]
    assert len(rows) == 5 and {"id", "rank", "score", "selector", "instruction", "output"} <= set(rows.column_names)
    assert "kind" not in rows.column_names  # no manifest read as a record
    manifest = json.loads(manifest_path(folder / "random.jsonl").read_text())
    assert manifest["kind"] == "selection" and manifest["output"]["path"] == "random.jsonl"


def test_the_readme_library_example_runs_twice_as_written(tmp_path, monkeypatch):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = readme.split("From a pipeline:\n\n```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        exec(compile(code, "README.md", "exec"), {})
    assert len((tmp_path / "selections" / "mix-longest.jsonl").read_text().splitlines()) == 1000
