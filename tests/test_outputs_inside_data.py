"""Folders inside folders: what sit writes (a run, a sample folder, a latent cache, a folder a job holds) inside an
image folder is left out of its data (``data.images.is_sit_output``), so keeping an output in its own --data
folder neither adds a class nor adds images.

Cases: a run inside its own --data folder resumes with the classes it started with (not "num_classes 2 -> 3");
a latent cache made inside its --data folder has the folder's classes and images only (its folder is held, and so
left out, while the images are listed); a sample folder inside a class folder adds no images to it; an ordinary
sub-folder holding a config.json that is not a run's is still data."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import helpers
from sitcli.cli import app
from sitcli.data import ImageFolderDataset

runner = CliRunner()


def sit(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_a_run_folder_inside_the_data_is_left_out(tiny_run, tmp_path):
    import shutil

    data = helpers.image_folder(tmp_path / "data", size=(8, 8))
    shutil.copytree(tiny_run, data / "run")
    (data / "run" / "grids").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / "run" / "grids" / "0000001.png")
    shutil.copytree(data / "run", data / "a" / "nested-run")  # at any depth
    dataset = ImageFolderDataset(data, 8)
    assert dataset.classes == ["a", "b"] and len(dataset) == 8


@pytest.mark.slow
def test_a_run_inside_its_own_data_folder_resumes_with_its_classes(tmp_path, one_thread):
    data = helpers.image_folder(tmp_path / "data", size=(8, 8))
    run = data / "run"
    flags = ["--data", data, "--image-size", 8, "--model", "SiT-Ti/4", "--batch-size", 4, "--sample-every", 1,
             "--num-workers", 0, "--threads", 1,
             "--ckpt-every", 1]
    assert sit("train", *flags, "--out", run, "--steps", 1).exit_code == 0
    assert list((run / "grids").glob("*.png"))  # images inside the data folder, from the run
    result = sit("train", "--resume", run, "--steps", 2)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["num_classes"] == 2
    assert len(ImageFolderDataset(data, 8)) == 8


def test_a_cache_made_inside_its_data_folder_holds_only_the_data(vae_and_images, tmp_path):
    import shutil

    data = tmp_path / "images"
    shutil.copytree(vae_and_images / "images", data)
    (data / "cache").mkdir()  # made beforehand, empty: held by the extraction while the images are listed
    result = sit("cache-latents", "--data", data, "--vae", vae_and_images / "vae", "--out", data / "cache",
                 "--image-size", 16, "--num-workers", 0)
    assert result.exit_code == 0, result.output
    manifest = json.loads((data / "cache" / "latents.json").read_text())
    assert manifest["classes"] == ["a", "b"] and manifest["count"] == 8
    assert ImageFolderDataset(data, 16).classes == ["a", "b"]  # and the finished cache stays out of it


def test_a_sample_folder_inside_a_class_folder_adds_no_images(tiny_run, tmp_path):
    data = helpers.image_folder(tmp_path / "data", size=(8, 8))
    assert sit("sample", "--ckpt", tiny_run, "--out", data / "a" / "samples", "--num", 3, "--steps", 2).exit_code == 0
    dataset = ImageFolderDataset(data, 8)
    assert len(dataset) == 8 and not any("samples" in str(path) for path, _ in dataset.files)


def test_a_folder_with_a_config_json_of_its_own_is_still_data(tmp_path):
    data = helpers.image_folder(tmp_path / "data", size=(8, 8))
    (data / "c").mkdir()
    (data / "c" / "config.json").write_text('{"labels": ["cat"]}')  # not a run's
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / "c" / "0.png")
    assert ImageFolderDataset(data, 8).classes == ["a", "b", "c"]
