"""sitcli/sample.py and `sit sample`: per-index seeds, resumable folders, labels, outputs, refusals."""


import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from helpers import assert_same_images, pngs
from sitcli.cli import app
from sitcli.errors import InputError
from sitcli.models import SiT_models
from sitcli.images import make_grid
from sitcli.sample_config import SampleConfig
from sitcli.sample import sample
from sitcli.seeds import labels_and_noise

runner = CliRunner()


def sit(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("sampler", ["ode", "sde"])
def test_images_depend_on_index_only(tiny_run, tmp_path, sampler):
    common = dict(ckpt=str(tiny_run), sampler=sampler, steps=4, num=5, cfg_scale=1.5)
    sample(SampleConfig(out=str(tmp_path / "a"), batch_size=5, **common), progress=False)
    sample(SampleConfig(out=str(tmp_path / "b"), batch_size=2, **common), progress=False)
    first = pngs(tmp_path / "a")
    assert len(first) == 5 and first["000000.png"].shape == (8, 8)
    assert_same_images(first, pngs(tmp_path / "b"))
    # A restart draws only what is missing, and draws the same images.
    for name in ("000001.png", "000004.png"):
        (tmp_path / "a" / name).unlink()
    result = sample(SampleConfig(out=str(tmp_path / "a"), batch_size=3, **common), progress=False)
    assert result.new == 2 and result.total == 5
    assert_same_images(first, pngs(tmp_path / "a"))


def test_class_labels_and_noise_per_index():
    labels, noise = labels_and_noise(0, [0, 1, 2, 3], (1, 2, 2), 10, "1,7")
    assert labels.tolist() == [1, 7, 1, 7]
    random_labels, same_noise = labels_and_noise(0, [2, 3], (1, 2, 2), 10, None)
    assert torch.equal(same_noise, noise[2:])  # the labels setting does not move the noise
    assert all(0 <= v < 10 for v in random_labels.tolist())
    with pytest.raises(InputError, match="out of range"):
        labels_and_noise(0, [0], (1,), 10, "10")


def test_cli_outputs_npz_grid_and_labels(tiny_run, tmp_path):
    out = tmp_path / "s"
    result = sit("sample", "--ckpt", tiny_run, "--out", out, "--num", 6, "--steps", 3, "--class-labels", 3, "--npz",
                 "--grid", tmp_path / "grid.png", "--batch-size", 4)
    assert result.exit_code == 0, result.output
    assert "NFE per sample 3.0" in result.output and "images/s" in result.output
    arr = np.load(out / "samples.npz")["arr_0"]
    assert arr.shape == (6, 8, 8, 3) and arr.dtype == np.uint8
    assert (out / "labels.csv").read_text().splitlines()[1:] == [f"{i},3" for i in range(6)]
    assert Image.open(tmp_path / "grid.png").size[0] >= 3 * 32


def test_cli_refuses_a_folder_made_with_other_settings(tiny_run, tmp_path):
    out = tmp_path / "s"
    assert sit("sample", "--ckpt", tiny_run, "--out", out, "--num", 2, "--steps", 2).exit_code == 0
    before = pngs(out)
    result = sit("sample", "--ckpt", tiny_run, "--out", out, "--num", 2, "--steps", 3)
    assert result.exit_code == 2 and "steps differ" in result.output
    assert_same_images(before, pngs(out))


def test_bare_weights_file_needs_no_model_flag_and_refuses_a_wrong_one(tiny_run, tmp_path):
    weights = tiny_run / "checkpoints" / "0000003" / "ema.safetensors"
    loose = tmp_path / "w.safetensors"
    loose.write_bytes(weights.read_bytes())
    result = sit("sample", "--ckpt", loose, "--model", "SiT-S/4", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "holds a SiT-Ti/4, not a SiT-S/4" in " ".join(result.output.split())
    assert not (tmp_path / "x").exists()
    for name, flags in (("ok", []), ("checked", ["--model", "SiT-Ti/4"])):
        result = sit("sample", "--ckpt", loose, *flags, "--out", tmp_path / name, "--num", 2, "--steps", 2)
        assert result.exit_code == 0, result.output
        assert_same_images(pngs(tmp_path / name), {k: v for k, v in pngs(_ref(tiny_run, tmp_path)).items()})


def _ref(tiny_run, tmp_path):
    out = tmp_path / "ref"
    sample(SampleConfig(ckpt=str(tiny_run), out=str(out), num=2, steps=2), progress=False)
    return out


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    model = SiT_models["SiT-Ti/2"](input_size=8, in_channels=1, num_classes=10)
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    result = sit("sample", "--ckpt", tmp_path / "w.safetensors", "--model", "SiT-Ti/4", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "holds a SiT-Ti/2, not a SiT-Ti/4" in " ".join(result.output.split())


def test_make_grid_upscales_small_images():
    grid = make_grid(np.zeros((10, 8, 8, 1), dtype=np.uint8), ncol=5)
    assert grid.size == (5 * 34 + 2, 2 * 34 + 2)


@pytest.mark.parametrize("args, message", [
    (["--method", "rk45"], "'rk45' is not one of"),  # a choice of the CLI, from the registry
    (["--sampler", "sde", "--w", "cubic"], "'cubic' is not one of"),
    (["--sampler", "sde", "--last-step", "jump"], "last-step"),
    (["--cfg-channels", "two"], "cfg-channels"),
    (["--class-labels", "a,b"], "comma list"),
    (["--method", "dopri5", "--time-shift", 3], "adaptive and chooses its own steps"),
    (["--spacing", "log"], "'log' is not one of"),
    (["--time-shift", 0], "--time-shift 0.0: pass a finite number > 0"),  # its declared domain
    (["--edm-rho", 5], "together with --spacing edm"),
    (["--guidance-scale", 2], "pass --guidance-model CKPT"),
    (["--guidance-model", "{run}", "--guidance-scale", 2, "--cfg-scale", 2], "do not combine"),
    (["--cfg-scale", 2, "--cfg-interval-in", "edm"], "'edm' is not one of"),
    (["--cfg-scale", 2, "--cfg-interval", 3, 1, "--cfg-interval-in", "sigma"], "cfg interval (3.0, 1.0) in sigma"),
    (["--guidance-model", "{tmp}/other.safetensors", "--guidance-scale", 2], "input_size=4"),
])
def test_cli_refuses_bad_sampling_flags_before_writing(tiny_run, tmp_path, args, message):
    other = SiT_models["SiT-Ti/4"](input_size=4, in_channels=1, num_classes=10)  # another latent shape
    save_file(other.state_dict(), tmp_path / "other.safetensors")
    result = sit(
        "sample",
        "--ckpt",
        tiny_run,
        "--out",
        tmp_path / "x",
        *[str(a).format(run=tiny_run, tmp=tmp_path) for a in args],
    )
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "x").exists()


def test_official_pt_file_samples_like_the_run(tiny_run, tmp_path):
    # What `sit convert` reads (here an official-style .pt holding the EMA state dict) samples directly.
    from safetensors.torch import load_file

    state = load_file(tiny_run / "checkpoints" / "0000003" / "ema.safetensors")
    torch.save(state, tmp_path / "SiT-tiny.pt")  # the name tells SiT from DiT
    result = sit("sample", "--ckpt", tmp_path / "SiT-tiny.pt", "--out", tmp_path / "pt", "--num", 2, "--steps", 2)
    assert result.exit_code == 0, result.output
    assert_same_images(pngs(tmp_path / "pt"), pngs(_ref(tiny_run, tmp_path)))


def test_pt_file_whose_name_does_not_tell_sit_from_dit_samples_with_from(tiny_run, tmp_path):
    from safetensors.torch import load_file

    torch.save(load_file(tiny_run / "checkpoints" / "0000003" / "ema.safetensors"), tmp_path / "weights.pt")
    result = sit("sample", "--ckpt", tmp_path / "weights.pt", "--out", tmp_path / "x", "--num", 2, "--steps", 2)
    assert result.exit_code == 2 and "--from official" in result.output, result.output
    assert not (tmp_path / "x").exists()
    result = sit(
        "sample",
        "--ckpt",
        tmp_path / "weights.pt",
        "--from",
        "official",
        "--out",
        tmp_path / "pt",
        "--num",
        2,
        "--steps",
        2,
    )
    assert result.exit_code == 0, result.output
    assert_same_images(pngs(tmp_path / "pt"), pngs(_ref(tiny_run, tmp_path)))


@pytest.mark.slow
def test_compiled_model_draws_the_same_images(tiny_run, tmp_path):
    result = sit("sample", "--ckpt", tiny_run, "--out", tmp_path / "c", "--num", 2, "--steps", 2, "--compile")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "c" / "sample.json").read_text())["compile"] is True
    assert_same_images(pngs(tmp_path / "c"), pngs(_ref(tiny_run, tmp_path)))


def test_adams_from_the_cli_costs_one_evaluation_per_step(tiny_run, tmp_path):
    result = sit("sample", "--ckpt", tiny_run, "--out", tmp_path / "a", "--num", 2, "--method", "adams", "--steps", 5)
    assert result.exit_code == 0, result.output
    assert "NFE per sample 5.0" in result.output and len(list((tmp_path / "a").glob("*.png"))) == 2


def test_time_shift_one_and_a_guide_equal_to_the_model_change_no_image(tiny_run, tmp_path):
    ref = pngs(_ref(tiny_run, tmp_path))
    for name, flags in (
        ("s1", ["--time-shift", 1]),
        ("self", ["--guidance-model", tiny_run, "--guidance-scale", 2.5, "--cfg-interval", 0.2, 0.9]),
    ):
        result = sit("sample", "--ckpt", tiny_run, "--out", tmp_path / name, "--num", 2, "--steps", 2, *flags)
        assert result.exit_code == 0, result.output
        got = pngs(tmp_path / name)
        assert got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)  # bit for bit
    # adams' 2 steps evaluate at t = 0 (outside the interval: one network) and t = 0.5 (inside: two).
    assert "NFE per sample 3.0" in " ".join(result.output.split())
    recorded = json.loads((tmp_path / "self" / "sample.json").read_text())
    assert recorded["guidance_scale"] == 2.5 and recorded["guidance_model"].endswith("ema.safetensors")


def test_shifted_edm_and_autoguided_sampling_from_the_cli(tiny_run, tmp_path):
    early = tiny_run / "checkpoints" / "0000003" / "model.safetensors"  # the raw weights as a weaker guide
    for name, flags, nfe in (
        ("shift", ["--time-shift", 3, "--method", "heun", "--steps", 4], 8),
        ("edm", ["--spacing", "edm", "--sampler", "sde", "--steps", 5], 5),
        ("auto", ["--guidance-model", early, "--guidance-scale", 2, "--steps", 3], 6),
    ):
        result = sit("sample", "--ckpt", tiny_run, "--out", tmp_path / name, "--num", 2, *flags)
        assert result.exit_code == 0, result.output
        assert f"NFE per sample {nfe:.1f}" in " ".join(result.output.split()), result.output
    result = sit(
        "sample",
        "--ckpt",
        tiny_run,
        "--out",
        tmp_path / "cfg",
        "--num",
        2,
        "--steps",
        2,
        "--cfg-scale",
        2,
        "--cfg-interval",
        0,
        0.7,
        "--cfg-interval-in",
        "repa",
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cfg" / "sample.json").read_text())["cfg_interval_in"] == "repa"
