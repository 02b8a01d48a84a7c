"""Faults of the environment (full or read-only disk, an --out under a file, no CUDA, a bad thread count):
one line saying what failed and where, a non-zero exit, no traceback, no partial file."""


import errno
import sys
from pathlib import Path

import numpy as np
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


# ----------------------------------------------------------------------------- round 3
# Disk full in train and convert (safetensors and torch.save fail with their own errors, not OSError), a full disk
# under cache-latents' memory-mapped write (blocks reserved first: an OSError, not a SIGBUS), a broken tensorboard
# or wandb install and wandb without a key (refused before config.json).

SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"
TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"


def full_disk_writer(real, error):
    """A writer that leaves part of a file behind, then fails as safetensors or torch.save does on a full disk."""
    def write(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"x" * 10)
        raise error
    return write


@pytest.mark.parametrize("writer", ["safetensors", "torch.save"])
def test_a_full_disk_at_a_checkpoint_is_one_line_and_a_new_run_leaves_nothing(tmp_path, monkeypatch, writer,
                                                                             one_thread):
    from safetensors import SafetensorError

    from sitcli import runs

    if writer == "safetensors":
        monkeypatch.setattr(runs, "save_file", full_disk_writer(runs.save_file, SafetensorError(SAFETENSORS_FULL)))
        written = "model.safetensors"
    else:
        monkeypatch.setattr(runs.torch, "save", full_disk_writer(runs.torch.save, RuntimeError(TORCH_FULL)))
        monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 0})())
        written = "optimizer.pt"
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "t"), "--steps", "2", "--batch-size", "16",
                                 "--sample-every", "0", "--log-every", "1"])
    assert result.exit_code == 1
    line = one_line(result)
    assert "No space left on device" in line and written in line and "free some space" in line
    assert list(tmp_path.iterdir()) == []  # config.json and log.csv of the run that saved nothing: gone too


def test_a_full_disk_during_convert_is_one_line_naming_dst(run, tmp_path, monkeypatch):
    import sitcli.convert

    monkeypatch.setattr(sitcli.convert, "write_official",
                        full_disk_writer(sitcli.convert.write_official, RuntimeError(TORCH_FULL)))
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 0})())
    result = runner.invoke(app, ["convert", str(run), str(tmp_path / "SiT-x.pt"), "--to", "official"])
    assert result.exit_code == 1
    line = one_line(result)
    assert "No space left on device" in line and str(tmp_path / "SiT-x.pt") in line
    assert list(tmp_path.iterdir()) == []  # nor a staging folder


def test_cache_latents_reserves_its_blocks_so_a_full_disk_is_one_line_not_a_sigbus(vae_and_images, tmp_path,
                                                                                    monkeypatch):
    sparse = tmp_path / "sparse.npy"
    np.lib.format.open_memmap(sparse, mode="w+", dtype=np.float32, shape=(1 << 20,))
    assert sparse.stat().st_blocks * 512 < (1 << 20)  # a hole: a map onto it would meet a full disk on writing
    atomic.reserve(sparse)
    assert sparse.stat().st_blocks * 512 >= 4 << 20  # every block allocated: nothing left for a map to fail on

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "posix_fallocate", full)
    out = tmp_path / "cache"
    result = runner.invoke(app, ["cache-latents", "--data", str(vae_and_images / "images"), "--vae",
                                 str(vae_and_images / "vae"), "--out", str(out), "--image-size", "16",
                                 "--num-workers", "0"])
    assert result.exit_code == 1
    line = one_line(result)
    assert "No space left on device" in line and "latents.npy" in line
    assert not list(out.glob("*.tmp"))


def broken_package(root: Path, name: str, monkeypatch) -> None:
    """``name`` installed but failing on import, first on the path."""
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text("raise RuntimeError('a broken install: half of its files are missing')")
    monkeypatch.syspath_prepend(str(root))
    for module in [m for m in sys.modules if m.split(".")[0] == name or m.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, module)


@pytest.mark.parametrize("backend", ["tensorboard", "wandb"])
def test_a_broken_logger_install_is_refused_before_config_json(tmp_path, monkeypatch, backend):
    broken_package(tmp_path / "site", backend, monkeypatch)
    out = tmp_path / "t"
    result = runner.invoke(app, ["train", "--out", str(out), "--steps", "1", "--batch-size", "16", "--log", backend])
    assert result.exit_code == 2
    line = one_line(result)
    assert f"--log-to {backend} cannot start" in line and "a broken install" in line and "reinstall" in line
    assert not out.exists()


def test_wandb_without_a_key_is_refused_before_config_json(tmp_path, monkeypatch, fresh_wandb):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no wandb settings
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / "wandb"))
    out = tmp_path / "t"
    result = runner.invoke(app, ["train", "--out", str(out), "--steps", "1", "--batch-size", "16", "--log", "wandb"])
    assert result.exit_code == 2
    line = one_line(result)
    assert "--log-to wandb cannot start" in line and "wandb login" in line and "WANDB_MODE=offline" in line
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "convert"])
def test_a_real_write_limit_is_one_line_and_leaves_nothing(run, tmp_path, command):
    """The real writers in a child process whose files may not grow past 200 KB (RLIMIT_FSIZE; SIGXFSZ ignored, so
    a write fails with EFBIG as one fails with ENOSPC on a full disk)."""
    import os
    import resource
    import signal
    import subprocess

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    args = {"train": ["train", "--out", str(tmp_path / "t"), "--steps", "2", "--batch-size", "16",
                      "--sample-every", "0", "--log-every", "1"],
            "convert": ["convert", str(run), str(tmp_path / "SiT-x.pt"), "--to", "official"]}[command]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-m", "sitcli", *args], capture_output=True, text=True, env=env,
                           preexec_fn=limit, timeout=300)
    lines = child.stderr.strip().splitlines()
    assert child.returncode == 1 and "Traceback" not in child.stderr, child.stderr
    assert lines[-1].startswith("error: ") and str(tmp_path) in lines[-1], child.stderr
    assert list(tmp_path.iterdir()) == []
