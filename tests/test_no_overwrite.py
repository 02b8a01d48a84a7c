"""Outputs that overwrite or disagree: `sit cache-latents --out`, `sit fid --save-stats` and
`--json` never replace an existing file without --overwrite; a sample folder's PNGs, labels.csv and samples.npz
always describe the same samples; kill -9 during `sit convert` and `sit fid --save-stats` leaves no
half-written output that a later command picks up."""

import os

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sitcli.cli import app

runner = CliRunner()


def sit(*args):
    return runner.invoke(app, [str(a) for a in args])


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def run(tiny_run):
    """The session's tiny digits run (conftest.py), read only."""
    return tiny_run


@pytest.fixture(scope="module")
def fid_inputs(tmp_path_factory):
    """A folder of 4 small images (features come from ``stand_in``, in this process and in the children)."""
    root = tmp_path_factory.mktemp("fid")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    return root


def fid_flags(root: Path) -> list:
    return ["--num-workers", 0, "--device", "cpu", "--batch-size", 4]


# ----------------------------------------------------------------------------- no overwrite without --overwrite


def test_cache_latents_refuses_a_non_empty_out_without_overwrite(vae_and_images, tmp_path):
    out = tmp_path / "cache"
    out.mkdir()
    (out / "notes.txt").write_text("someone else's file")
    before = digest(out / "notes.txt")
    flags = [
        "--data",
        vae_and_images / "images",
        "--vae",
        vae_and_images / "vae",
        "--image-size",
        16,
        "--num-workers",
        0,
    ]
    result = sit("cache-latents", *flags, "--out", out)
    assert result.exit_code == 2 and "is not empty (it holds notes.txt)" in result.output, result.output
    assert "--overwrite" in result.output and digest(out / "notes.txt") == before
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    result = sit("cache-latents", *flags, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert len(np.load(out / "labels.npy")) == 8 and digest(out / "notes.txt") == before  # the other file left alone
    result = sit("cache-latents", *flags, "--out", out)  # a finished cache is refused as before, --overwrite named
    assert result.exit_code == 2 and "already holds a latent cache" in result.output and "--overwrite" in result.output


@pytest.mark.parametrize("flag", ["--save-stats", "--json"])
def test_fid_refuses_to_replace_an_existing_output_before_reading_any_image(fid_inputs, tmp_path, flag, stand_in):
    target = tmp_path / ("out.npz" if flag == "--save-stats" else "out.json")
    if flag == "--save-stats":  # a previous output of the same kind: the one thing --overwrite may replace
        np.savez(target, mu=np.zeros(3), sigma=np.eye(3))
    else:
        target.write_text('{"metrics": {}, "inputs": {}, "settings": {}}')
    precious = target.read_bytes()
    other = ["--save-stats", tmp_path / "s.npz"] if flag == "--json" else []
    result = sit("fid", tmp_path / "missing-folder", flag, target, *other, *fid_flags(fid_inputs))
    assert result.exit_code == 2 and f"{target} already exists: pass --overwrite" in result.output.replace("\n", "")
    assert target.read_bytes() == precious and not (tmp_path / "s.npz").exists()
    result = sit("fid", fid_inputs / "images", flag, target, *other, *fid_flags(fid_inputs), "--overwrite")
    assert result.exit_code == 0, result.output
    assert target.read_bytes() != precious


# ----------------------------------------------------------------------------- a sample folder agrees with itself


def sample(run: Path, out: Path, num: int, *flags):
    return sit("sample", "--ckpt", run, "--out", out, "--num", num, "--steps", 2, "--batch-size", 3, *flags)


def pngs(out: Path) -> dict[str, str]:
    return {p.name: digest(p) for p in sorted(out.glob("*.png"))}


def test_damaged_pngs_are_drawn_again(run, tmp_path):
    out = tmp_path / "s"
    assert sample(run, out, 4).exit_code == 0
    first = pngs(out)
    (out / "000001.png").write_bytes(b"not a png at all")
    (out / "000002.png").write_bytes((out / "000002.png").read_bytes()[:-20])  # cut before its IEND chunk
    Image.new("L", (5, 5)).save(out / "000003.png")  # a whole PNG, but not of this model's size
    result = sample(run, out, 4)
    assert result.exit_code == 0, result.output
    assert "3 PNG(s)" in result.output and "drawing them again" in result.output
    assert pngs(out) == first


def test_a_different_num_leaves_pngs_labels_and_npz_agreeing(run, tmp_path):
    out = tmp_path / "s"
    assert sample(run, out, 4, "--npz").exit_code == 0
    first = pngs(out)
    result = sample(run, out, 2)  # fewer: labels.csv would stop describing 000002.png and 000003.png
    assert result.exit_code == 2 and "holds 4 samples; pass --num 4 or more" in result.output, result.output
    assert pngs(out) == first
    result = sample(run, out, 6)  # more: extended, and samples.npz (asked for before) kept up to date
    assert result.exit_code == 0, result.output
    names = sorted(out.glob("*.png"))
    labels = (out / "labels.csv").read_text().splitlines()[1:]
    with np.load(out / "samples.npz") as f:
        arr = f["arr_0"]
    assert len(names) == len(labels) == len(arr) == 6
    assert {k: v for k, v in pngs(out).items() if k in first} == first
    for i, name in enumerate(names):
        assert np.array_equal(arr[i], np.repeat(np.asarray(Image.open(name))[..., None], 3, axis=-1))


# ----------------------------------------------------------------------------- kill -9 in the middle of a write


HALF_CONVERT = """
import sys, time
from pathlib import Path
import sitcli.convert as c
write = c.write_official if sys.argv[1] == "official" else c.write_sit
def half(obj, path):  # write, then cut the file (or a file of the folder) in half and wait for the kill
    write(obj, path)
    path = Path(path)
    target = path if path.is_file() else sorted(path.rglob("model.safetensors"))[0]
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    print("HALF", flush=True)
    time.sleep(120)
setattr(c, "write_official" if sys.argv[1] == "official" else "write_sit", half)
from sitcli.cli import app
app(sys.argv[2:])
"""

HALF_NPZ = """
import sys, time
import numpy as np
from sitcli.evaluate import inception
from helpers import StandIn
net = StandIn()
inception.load_inception = lambda path=None, device="cpu": net
inception.find_inception_weights = lambda path=None: "stand-in"
savez = np.savez
def half(f, **arrays):  # write, then cut the temporary file in half and wait for the kill
    savez(f, **arrays)
    f.flush()
    f.truncate(f.tell() // 2)
    print("HALF", flush=True)
    time.sleep(120)
np.savez = half
from sitcli.cli import app
app(sys.argv[1:])
"""


def killed_halfway(script: str, *args) -> None:
    """Run ``script`` in a child python, kill -9 it once it has written half of its output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = child.stdout.readline()
        assert line.strip() == "HALF", child.stderr.read()
    finally:
        child.kill()
        child.wait()


@pytest.mark.slow
@pytest.mark.parametrize("to", ["official", "sit"])
def test_kill_9_during_convert_leaves_no_half_written_output(run, tmp_path, to):
    dst = tmp_path / ("SiT-Ti-4.pt" if to == "official" else "converted")
    reference = tmp_path / "reference" / dst.name
    assert sit("convert", run, reference, "--to", to).exit_code == 0
    if to == "official":  # a file: the folder case below goes through the same staging
        killed_halfway(HALF_CONVERT, to, "convert", run, dst, "--to", to)
        assert not dst.exists()  # only a hidden staging folder is left
        result = sit("sample", "--ckpt", dst, "--num", 1, "--steps", 2, "--out", tmp_path / "s")
        assert result.exit_code == 2 and "does not exist" in result.output
    assert sit("convert", run, dst, "--to", to).exit_code == 0  # not refused: nothing is there
    # An existing DST replaced with --overwrite and killed halfway stays the old one.
    killed_halfway(HALF_CONVERT, to, "convert", run, dst, "--to", to, "--overwrite")
    for a, b in zip(
        sorted(p for p in reference.rglob("*") if p.is_file()) or [reference],
        sorted(p for p in dst.rglob("*") if p.is_file()) or [dst],
    ):
        assert a.name == b.name and digest(a) == digest(b)


@pytest.mark.slow
def test_kill_9_during_fid_save_stats_leaves_no_half_written_statistics(fid_inputs, tmp_path, stand_in):
    stats = tmp_path / "stats.npz"
    reference = tmp_path / "reference.npz"
    assert sit("fid", fid_inputs / "images", "--save-stats", reference, *fid_flags(fid_inputs)).exit_code == 0
    killed_halfway(HALF_NPZ, "fid", fid_inputs / "images", "--save-stats", stats, *fid_flags(fid_inputs))
    assert not stats.exists()
    result = sit("fid", stats, fid_inputs / "images", *fid_flags(fid_inputs))
    assert result.exit_code == 2 and "does not exist" in result.output
    assert sit("fid", fid_inputs / "images", "--save-stats", stats, *fid_flags(fid_inputs)).exit_code == 0
    assert digest(stats) == digest(reference)
    killed_halfway(HALF_NPZ, "fid", fid_inputs / "images", "--save-stats", stats, *fid_flags(fid_inputs), "--overwrite")
    assert digest(stats) == digest(reference)  # the old file, whole
