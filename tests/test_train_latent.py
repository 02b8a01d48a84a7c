"""Image vae_and_images and latent space end to end (a tiny random AutoencoderKL): cache, train, preview, sample."""


import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from sitcli.cli import app

runner = CliRunner()


def sit(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cache_train_and_sample_in_latent_space(vae_and_images, tmp_path):
    cache = tmp_path / "cache"
    result = sit("cache-latents", "--data", vae_and_images / "images", "--vae", vae_and_images / "vae", "--out", cache,
                 "--image-size", 16, "--batch-size", 3, "--num-workers", 0)
    assert result.exit_code == 0, result.output
    manifest = json.loads((cache / "latents.json").read_text())
    assert manifest["count"] == 8 and manifest["skipped"][0].endswith("bad.jpg") and manifest["classes"] == ["a", "b"]
    assert np.load(cache / "latents.npy", mmap_mode="r").shape == (8, 2, 4, 8, 8)
    assert not list(cache.glob("*.tmp"))

    run = tmp_path / "run"
    result = sit("train", "--data", cache, "--out", run, "--model", "SiT-Ti/4", "--steps", 2, "--batch-size", 4,
                 "--sample-every", 2, "--ckpt-every", 2, "--num-workers", 0)
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert (config["in_channels"], config["input_size"], config["image_size"]) == (4, 8, 16)
    assert config["vae"] == str((vae_and_images / "vae").resolve()) and config["num_classes"] == 2
    assert Image.open(run / "grids" / "0000002.png").mode == "RGB"  # the preview is decoded

    result = sit("sample", "--ckpt", run, "--out", tmp_path / "s", "--num", 2, "--steps", 2)
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(tmp_path / "s" / "000000.png")).shape == (16, 16, 3)

    result = sit("cache-latents", "--data", vae_and_images / "images", "--vae", vae_and_images / "vae", "--out", cache)
    assert result.exit_code == 2 and "already holds a latent cache" in result.output


def test_train_with_vae_on_the_fly(vae_and_images, tmp_path):
    result = sit(
        "train",
        "--data",
        vae_and_images / "images",
        "--vae",
        vae_and_images / "vae",
        "--image-size",
        16,
        "--out",
        tmp_path / "run",
        "--model",
        "SiT-Ti/4",
        "--steps",
        1,
        "--batch-size",
        4,
        "--sample-every",
        0,
        "--num-workers",
        0,
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["in_channels"] == 4


def test_missing_vae_is_a_clear_error(vae_and_images, tmp_path):
    result = sit(
        "train",
        "--data",
        vae_and_images / "images",
        "--vae",
        tmp_path / "novae",
        "--image-size",
        16,
        "--out",
        tmp_path / "run",
    )
    assert result.exit_code == 2 and "no VAE at" in result.output
    assert not (tmp_path / "run").exists()


def test_train_on_pixels_of_an_image_folder_with_loader_workers(vae_and_images, tmp_path):
    result = sit(
        "train",
        "--data",
        vae_and_images / "images",
        "--image-size",
        8,
        "--out",
        tmp_path / "run",
        "--model",
        "SiT-Ti/4",
        "--steps",
        2,
        "--batch-size",
        4,
        "--sample-every",
        2,
        "--num-workers",
        1,
    )
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "run" / "grids" / "0000002.png").mode == "RGB"


def test_alignment_term_reads_pixels_with_a_vae_and_refuses_a_cache_without_features(vae_and_images, tmp_path):
    from test_encoders import dinov2_folder

    dinov2_folder(tmp_path / "dino")
    common = [
        "--model",
        "SiT-Ti/4",
        "--steps",
        1,
        "--batch-size",
        4,
        "--sample-every",
        0,
        "--num-workers",
        0,
        "--repa-encoder",
        tmp_path / "dino",
        "--repa-projector-dim",
        8,
    ]
    result = sit(
        "train",
        "--data",
        vae_and_images / "images",
        "--vae",
        vae_and_images / "vae",
        "--image-size",
        16,
        "--out",
        tmp_path / "run",
        *common,
    )
    assert result.exit_code == 0, result.output
    assert "loss_alignment" in (tmp_path / "run" / "log.csv").read_text().splitlines()[0]
    cache = tmp_path / "cache"
    assert (
        sit(
            "cache-latents",
            "--data",
            vae_and_images / "images",
            "--vae",
            vae_and_images / "vae",
            "--out",
            cache,
            "--image-size",
            16,
            "--num-workers",
            0,
        ).exit_code
        == 0
    )
    result = sit("train", "--data", cache, "--out", tmp_path / "run2", *common)
    # A cache made without the encoder's features: refused, naming the command that stores them.
    assert result.exit_code == 2 and "has no features of encoder" in result.output and "--repa-encoder" in result.output
    assert not (tmp_path / "run2").exists()
