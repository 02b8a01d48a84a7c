"""Outputs never replace inputs (sitcli/outputs.py, one rule for every output a command declares): an output is
never a file the command reads, nor a folder holding one, with or without --overwrite; --overwrite replaces only a
previous output of the same kind; a refusal is one line, exit 2, and leaves every file as it was.

Cases: `sit sample --grid` over a training image, over a sample of its own folder (drawn or still to be drawn),
over another folder's grid; a rerun replaces the grid it drew, not one changed since; `sit fid` with --save-stats
or --json naming an input (with and without --overwrite: no --overwrite advice), a file of another kind, or the
other output; `sit convert --overwrite` over a folder or file of another kind; `sit cache-latents --out` naming
--data or holding it, or replacing a file that is not part of a cache."""


import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sitcli.cli import app

from helpers import snapshot

runner = CliRunner()


def sit(*args):
    return runner.invoke(app, [str(a) for a in args])



def refused(result, *words: str) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def sample(run, out, *flags):
    return sit("sample", "--ckpt", run, "--out", out, "--num", 2, "--steps", 2, *flags)


@pytest.fixture
def data(tmp_path):
    """An image folder with a training image, data/img/cat/0.png."""
    (tmp_path / "data" / "img" / "cat").mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(tmp_path / "data" / "img" / "cat" / "0.png")
    return tmp_path / "data"


# ----------------------------------------------------------------------------- sit sample --grid


def test_a_grid_never_replaces_a_training_image(tiny_run, tmp_path, data):
    before = snapshot(tmp_path)
    refused(sample(tiny_run, tmp_path / "s", "--grid", data / "img" / "cat" / "0.png"), "--grid", "is not a grid")
    assert snapshot(tmp_path) == before and not (tmp_path / "s").exists()


@pytest.mark.parametrize("index", [0, 1, 5])  # drawn before, drawn by this very call, a later index
def test_a_grid_never_replaces_a_sample_of_its_own_folder(tiny_run, tmp_path, index):
    out = tmp_path / "s"
    assert sample(tiny_run, out).exit_code == 0
    (out / "000001.png").unlink()  # drawn again by the next call
    before = snapshot(tmp_path)
    refused(sample(tiny_run, out, "--grid", out / f"{index:06d}.png"), "--grid", f"sample {index}")
    assert snapshot(tmp_path) == before


def test_a_rerun_replaces_the_grid_it_drew_and_nothing_else(tiny_run, tmp_path):
    grid = tmp_path / "grid.png"
    assert sample(tiny_run, tmp_path / "s", "--grid", grid).exit_code == 0
    first = grid.read_bytes()
    result = sit("sample", "--ckpt", tiny_run, "--out", tmp_path / "s", "--num", 4, "--steps", 2, "--grid", grid)
    assert result.exit_code == 0, result.output
    assert grid.read_bytes() != first  # four images now
    # Another folder's grid is not this folder's to replace, and neither is a grid changed since it was drawn.
    before = snapshot(tmp_path)
    refused(sample(tiny_run, tmp_path / "t", "--grid", grid), "--grid", "is not a grid")
    assert snapshot(tmp_path) == before
    Image.new("L", (4, 4)).save(grid)
    before = snapshot(tmp_path)
    refused(sample(tiny_run, tmp_path / "s", "--grid", grid), "--grid", "is not a grid")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- sit fid --save-stats, --json


@pytest.fixture
def fid_files(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "imgs.npz", arr_0=rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
    np.savez(tmp_path / "B.npz", arr_0=rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
    return tmp_path


FID = ["--num-workers", 0, "--device", "cpu", "--batch-size", 4]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_save_stats_never_replaces_the_images_it_reads(fid_files, stand_in, overwrite):
    before = snapshot(fid_files)
    line = refused(sit("fid", fid_files / "imgs.npz", "--save-stats", fid_files / "imgs.npz", *FID, *overwrite),
                   "--save-stats", "input A")
    assert "--overwrite" not in line  # it cannot help
    assert snapshot(fid_files) == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_json_never_replaces_input_b(fid_files, stand_in, overwrite):
    before = snapshot(fid_files)
    line = refused(sit("fid", fid_files / "imgs.npz", fid_files / "B.npz", "--json", fid_files / "B.npz", *FID,
                       *overwrite), "--json", "input B")
    assert "--overwrite" not in line
    assert snapshot(fid_files) == before


def test_overwrite_replaces_only_previous_outputs_of_the_same_kind(fid_files, stand_in):
    stats, result_json = fid_files / "stats.npz", fid_files / "result.json"
    png = fid_files / "picture.png"
    Image.new("RGB", (4, 4)).save(png)
    a, b = fid_files / "imgs.npz", fid_files / "B.npz"
    for flag, target, what in (("--save-stats", b, "statistics"), ("--json", png, "--json` result")):
        other = ["--save-stats", stats] if flag == "--json" else []
        before = snapshot(fid_files)
        line = refused(sit("fid", a, flag, target, *other, *FID, "--overwrite", *(["-m", "is"] if other else [])),
                       flag, what)
        assert "--overwrite" not in line and snapshot(fid_files) == before
    before = snapshot(fid_files)
    refused(sit("fid", a, b, "--save-stats", stats, "--json", stats, *FID), "--json and --save-stats", "same path")
    assert snapshot(fid_files) == before
    # Previous outputs of the same kind: refused without --overwrite (which is named), replaced with it.
    assert sit("fid", a, b, "--save-stats", stats, "--json", result_json, *FID).exit_code == 0
    for flag, target in (("--save-stats", stats), ("--json", result_json)):
        refused(sit("fid", b, a, flag, target, *FID), flag, "already exists: pass --overwrite")
        old = target.read_bytes()
        result = sit("fid", b, a, flag, target, *FID, "--overwrite")
        assert result.exit_code == 0, result.output
        assert target.read_bytes() != old


# ----------------------------------------------------------------------------- sit convert, sit cache-latents


def test_convert_overwrite_never_replaces_a_destination_of_another_kind(tiny_run, tmp_path, data):
    note = tmp_path / "notes.pt"
    note.write_text("not a checkpoint")
    for dst, to in ((data, "sit"), (data, "diffusers"), (note, "official")):
        before = snapshot(tmp_path)
        line = refused(sit("convert", tiny_run, dst, "--to", to, "--overwrite", "--no-check"), "DST", "is not a")
        assert "--overwrite" not in line and snapshot(tmp_path) == before
    # the run's own weights file, named as DST, is a file of another kind too
    weights = tiny_run / "checkpoints" / "0000003" / "model.safetensors"
    before = snapshot(tiny_run)
    refused(sit("convert", tiny_run, weights, "--to", "official", "--overwrite"), "DST", "is not a")
    assert snapshot(tiny_run) == before
    # a previous result of the same format is replaced
    assert sit("convert", tiny_run, tmp_path / "SiT-a.pt", "--to", "official").exit_code == 0
    assert sit("convert", tiny_run, tmp_path / "SiT-a.pt", "--to", "official", "--overwrite").exit_code == 0


def test_cache_latents_never_writes_over_or_around_its_inputs(vae_and_images, tmp_path):
    images, vae = vae_and_images / "images", vae_and_images / "vae"
    flags = ["--vae", vae, "--image-size", 16, "--num-workers", 0, "--overwrite"]
    before = snapshot(vae_and_images)
    refused(sit("cache-latents", "--data", images, "--out", images, *flags), "--out", "is --data")
    refused(sit("cache-latents", "--data", images, "--out", vae_and_images, *flags), "--out", "holds --data")
    refused(sit("cache-latents", "--data", images, "--out", vae, *flags), "--out", "is --vae")
    assert snapshot(vae_and_images) == before
    out = tmp_path / "c"
    out.mkdir()
    np.save(out / "labels.npy", np.arange(3))  # someone else's file, with a name the cache writes
    before = snapshot(tmp_path)
    refused(sit("cache-latents", "--data", images, "--out", out, *flags), "labels.npy", "not part of a latent cache")
    assert snapshot(tmp_path) == before
