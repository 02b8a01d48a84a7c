"""Bounds and the rest: extreme numbers are refused (or, where only the machine can tell, fail in one line), a
folder has one extraction and one width of names, and what a killed `sit convert` leaves is cleaned by the next.

Cases: --edm-rho 1e308 and 1e-300 (a collapsed or overflowing time grid, refused before sample.json); sizes no
machine holds (--steps 1e15, --image-size 1e7: one line, exit 1, not an allocator traceback); --num-workers 100000
for train, cache-latents and fid (bounded by the machine's CPUs); a second cache-latents on a held folder; the
hidden staging folder of a convert killed by SIGTERM (removed by the next run, one in use kept); PNG names keep
the folder's width when it grows past a million (000000.png beside 1000000.png, never 0000000.png)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sitcli.cli import app
from sitcli.config import TrainConfig
from sitcli.data.latent_cache import CacheConfig
from sitcli.evaluate import FidConfig
from sitcli.locks import FolderLock
from sitcli.training.presets import apply_presets

runner = CliRunner()


def sit(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line(result, code: int, *words: str) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == code and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


@pytest.mark.parametrize("rho", ["1e308", "1e-300"])
def test_an_extreme_edm_rho_is_refused_before_sample_json(tiny_run, tmp_path, rho):
    one_line(sit("sample", "--ckpt", tiny_run, "--out", tmp_path / "s", "--num", 2, "--steps", 4, "--spacing", "edm",
                 "--edm-rho", rho), 2, "--edm-rho", "collapses")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [
    ["sample", "--ckpt", "{run}", "--out", "{tmp}/s", "--num-samples", "2", "--steps", "1000000000000000"],
    ["train", "--out", "{tmp}/t", "--steps", "1", "--batch-size", "16", "--image-size", "10000000"],
])
def test_a_size_no_machine_holds_is_one_line(tiny_run, tmp_path, args):
    result = runner.invoke(app, [a.format(run=tiny_run, tmp=tmp_path) for a in args])
    line = one_line(result, 1, "out of memory", "could not allocate")
    assert line.startswith("error: ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["train", "cache-latents", "fid"])
def test_num_workers_is_bounded_by_the_machine(tmp_path, command):
    cpus = len(os.sched_getaffinity(0))
    args = {"train": ["train", "--out", tmp_path / "t"],
            "cache-latents": ["cache-latents", "--data", tmp_path, "--vae", tmp_path, "--out", tmp_path / "c"],
            "fid": ["fid", tmp_path / "a", tmp_path / "b"]}[command]
    one_line(sit(*args, "--num-workers", 100000), 2, "--num-workers 100000", f"{cpus} CPUs")
    assert list(tmp_path.iterdir()) == []
    bound = max(8, 4 * cpus)  # the bound itself is accepted
    {"train": lambda: apply_presets(TrainConfig(num_workers=bound)).check(),
     "cache-latents": lambda: CacheConfig("data", "vae", "out", num_workers=bound),
     "fid": lambda: FidConfig("a", "b", num_workers=bound)}[command]()


def test_a_second_cache_latents_on_a_held_folder_is_refused(vae_and_images, tmp_path):
    out = tmp_path / "c"
    with FolderLock(out, "sit cache-latents"):
        one_line(sit("cache-latents", "--data", vae_and_images / "images", "--vae", vae_and_images / "vae", "--out",
                     out, "--image-size", 16, "--num-workers", 0), 2, "is in use by sit cache-latents")
        assert [p.name for p in out.iterdir()] == [".lock"]


def test_the_staging_folders_a_killed_convert_left_are_removed_by_the_next(tiny_run, tmp_path):
    dst = tmp_path / "SiT-x.pt"
    stale = tmp_path / ".SiT-x.pt.tmp-killed"
    (stale / "SiT-x.pt").mkdir(parents=True)
    (stale / "SiT-x.pt" / "half").write_bytes(b"x" * 100)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    running = tmp_path / ".SiT-x.pt.tmp-running"  # held by a convert still at work: kept
    with FolderLock(running, "sit convert"):
        result = sit("convert", tiny_run, dst, "--to", "official")
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in tmp_path.iterdir()) == [".SiT-x.pt.tmp-running", "SiT-x.pt"]


HALT_CONVERT = """
import sys, time
import sitcli.convert as c
write = c.write_official
def halt(obj, path):  # write, then wait for the signal in the middle of the conversion
    write(obj, path)
    print("WRITTEN", flush=True)
    time.sleep(120)
c.write_official = halt
from sitcli.cli import app
from sitcli.config import TrainConfig
from sitcli.data.latent_cache import CacheConfig
from sitcli.evaluate import FidConfig
app(sys.argv[1:])
"""


@pytest.mark.slow
def test_sigterm_during_convert_leaves_a_staging_folder_that_the_next_run_removes(tiny_run, tmp_path):
    dst = tmp_path / "SiT-x.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", HALT_CONVERT, "convert", str(tiny_run), str(dst), "--to",
                              "official"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "WRITTEN", child.stderr.read()
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=60)
    finally:
        child.kill()
        child.wait()
    [staging] = [p for p in tmp_path.iterdir()]
    assert staging.name.startswith(".SiT-x.pt.tmp-") and not dst.exists()
    result = sit("convert", tiny_run, dst, "--to", "official")
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["SiT-x.pt"]


def test_png_names_keep_the_folders_width_past_a_million(tiny_run, tmp_path):
    from sitcli.sample import _index_width

    out = tmp_path / "s"
    assert sit("sample", "--ckpt", tiny_run, "--out", out, "--num", 2, "--steps", 2).exit_code == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["000000.png", "000001.png"]
    assert _index_width(out, 10**6 + 1) == 6  # 000000.png .. 999999.png, then 1000000.png
    assert _index_width(tmp_path / "new", 10**6 + 1) == 7  # a new folder of that size: one width from the start
    assert _index_width(tmp_path / "new", 10) == 6
    (out / "7.png").write_bytes(b"")  # a stray short name does not change the width
    assert _index_width(out, 10**6 + 1) == 6
    wide = tmp_path / "wide"
    wide.mkdir()
    (wide / "0000000.png").write_bytes(b"")
    assert _index_width(wide, 10) == 7  # a folder begun with 7 digits keeps them when extended by fewer
    assert Path(out / f"{10**6:06d}.png").name == "1000000.png"
