"""sitcli/locks.py: a run folder in use by `sit train` and a sample folder in use by
`sit sample` are locked; a second process is refused naming the holder; a lock left by a killed process is
taken over. The holders are real processes (a child python holding the lock as `sit train` does)."""

import os

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sitcli.cli import app
from sitcli.errors import InputError
from sitcli.locks import LOCK, FolderLock
from sitcli.training import train
from helpers import tiny

runner = CliRunner()
HOLD = """
import sys, time
from sitcli.locks import FolderLock
lock = FolderLock(sys.argv[1], sys.argv[2]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def sit(*args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def hold(folder: Path, job: str) -> subprocess.Popen:
    """A child process that locks ``folder`` and keeps it until killed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), job], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout.readline().strip() == "locked"
    return child


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("locks")
    train(tiny(root, "run", steps=2), progress=False)
    return root / "run"


def test_a_second_lock_is_refused_and_release_leaves_nothing(tmp_path):
    folder = tmp_path / "new"
    with FolderLock(folder, "sit train") as first:
        assert json.loads((folder / LOCK).read_text())["pid"] == os.getpid()
        with pytest.raises(InputError, match=rf"in use by sit train \(pid {os.getpid()} on "):
            FolderLock(folder, "sit sample").acquire()
        assert first.note() is None
    assert not folder.exists()  # created for the lock only, so removed with it


def test_resume_of_a_run_in_use_is_refused_naming_the_holder_then_taken_over_once_it_is_killed(run, tmp_path):
    holder = hold(run, "sit train")
    try:
        before = snapshot(run)
        result = sit("train", "--resume", run, "--steps", 4)
        assert result.exit_code == 2, result.output
        assert f"in use by sit train (pid {holder.pid} on " in result.output.replace("\n", "")
        assert snapshot(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / LOCK).is_file()  # kill -9 leaves the file; the lock itself went with the process
    result = sit("train", "--resume", run, "--steps", 4)
    assert result.exit_code == 0, result.output
    assert (
        f"locked by sit train (pid {holder.pid}" in result.output and "no longer running; taken over" in result.output
    )
    assert not (run / LOCK).exists()


def test_a_new_run_into_a_folder_in_use_is_refused(tmp_path):
    holder = hold(tmp_path / "out", "sit train")
    try:
        result = sit("train", "--data", "digits", "--out", tmp_path / "out", "--steps", 1, "--model", "SiT-Ti/4")
        assert result.exit_code == 2 and f"pid {holder.pid}" in result.output, result.output
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [LOCK]
    finally:
        holder.kill()
        holder.wait()


def test_a_sample_folder_in_use_is_refused(run, tmp_path):
    out = tmp_path / "samples"
    holder = hold(out, "sit sample")
    try:
        result = sit("sample", "--ckpt", run, "--out", out, "--num", 2, "--steps", 2)
        assert result.exit_code == 2, result.output
        assert f"in use by sit sample (pid {holder.pid}" in result.output.replace("\n", "")
        assert sorted(p.name for p in out.iterdir()) == [LOCK]
    finally:
        holder.kill()
        holder.wait()
    result = sit("sample", "--ckpt", run, "--out", out, "--num", 2, "--steps", 2)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "labels.csv", "sample.json"]


def test_an_out_that_is_a_file_or_cannot_be_created_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        FolderLock(tmp_path / "file", "sit train").acquire()
    with pytest.raises(InputError, match="cannot lock .*under"):
        FolderLock(tmp_path / "file" / "under", "sit train").acquire()
    assert (tmp_path / "file").read_text() == "x"
