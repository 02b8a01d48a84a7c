"""Faults of the environment (full or read-only disk, an --out under a file, no CUDA, a bad thread count):
one line saying what failed and where, a non-zero exit, no traceback, no partial file."""


import errno
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sitcli import atomic
from sitcli.cli import app

runner = CliRunner()


@pytest.fixture
def run(tiny_run):
    """The session's tiny digits run (conftest.py), read only."""
    return tiny_run


def one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output and result.exception is None or isinstance(
        result.exception, SystemExit), result.output
    return lines[-1]


def disk_full_after(nbytes: int):
    """An atomic writer whose disk fills up after ``nbytes`` of the file are written."""
    real = atomic.atomic_write

    def write(path, fill):
        def partial(tmp):
            Path(tmp).write_bytes(b"x" * nbytes)
            raise OSError(errno.ENOSPC, "No space left on device")

        real(path, partial)

    return write


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


@pytest.mark.parametrize("args, written", [
    (["sample", "--ckpt", "{run}", "--out", "{tmp}/s", "--num-samples", "2", "--steps", "2"], "sample.json"),
    (["train", "--out", "{tmp}/t", "--steps", "1", "--batch-size", "16", "--sample-every", "0"], "config.json"),
])
def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_partial_file(run, tmp_path, monkeypatch, args, written,
                                                                            one_thread):
    monkeypatch.setattr(atomic, "atomic_write", disk_full_after(10))
    result = runner.invoke(app, [a.format(run=run, tmp=tmp_path) for a in args])
    assert result.exit_code == 1
    line = one_line(result)
    assert "No space left on device" in line and written in line and "free some space" in line
    assert leftovers(tmp_path) == [] and not list(tmp_path.rglob(written))


def test_a_read_only_folder_is_one_line_naming_it(run, tmp_path, monkeypatch, one_thread):
    # Permission bits do not bind root (who runs these tests in CI), so the refusal of the OS is simulated.
    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
    result = runner.invoke(app, ["sample", "--ckpt", str(run), "--out", str(tmp_path / "s"), "--num-samples", "1",
                                 "--steps", "2"])
    assert result.exit_code == 1
    line = one_line(result)
    assert "Permission denied" in line and str(tmp_path / "s") in line and "--out" in line


@pytest.mark.parametrize("args", [
    ["train", "--out", "{tmp}/afile/run", "--steps", "1"],
    ["sample", "--ckpt", "{run}", "--out", "{tmp}/afile/s", "--num-samples", "1", "--steps", "2"],
    ["sample", "--ckpt", "{run}", "--out", "{tmp}/afile", "--num-samples", "1", "--steps", "2"],
])
def test_an_out_under_a_file_is_refused_before_anything_is_written(run, tmp_path, args):
    (tmp_path / "afile").write_text("x")
    result = runner.invoke(app, [a.format(run=run, tmp=tmp_path) for a in args])
    assert result.exit_code == 2 and "a file, not a folder" in one_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("args", [
    ["train", "--out", "{tmp}/t", "--steps", "1"],
    ["sample", "--ckpt", "{run}", "--out", "{tmp}/s"],
    ["nll", "--ckpt", "{run}"],
    ["cache-latents", "--data", "{run}", "--vae", "{run}", "--out", "{tmp}/c"],
])
def test_a_missing_cuda_and_a_bad_thread_count_are_one_line(run, tmp_path, monkeypatch, args):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    words = [a.format(run=run, tmp=tmp_path) for a in args]
    result = runner.invoke(app, words + ["--device", "cuda"])
    assert result.exit_code == 2 and "CUDA is not available" in one_line(result)
    if args[0] in ("train", "sample"):
        result = runner.invoke(app, words + ["--threads", "-1"])
        assert result.exit_code == 2 and "--threads -1" in one_line(result)
    assert list(tmp_path.iterdir()) == []
