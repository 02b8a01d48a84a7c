"""Damaged runs and caches: a checkpoint counts only when every file in it verifies,
resume and sampling name the damaged one, nothing is rewritten until a resume is known to work, and a
damaged latent cache says what is wrong and how to rebuild it."""


import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sitcli import runs
from sitcli.cli import app
from sitcli.data import open_dataset
from sitcli.errors import InputError
from sitcli.training import train
from helpers import assert_same_state, final_state, snapshot, tiny  # tiny: a checkpoint every 2 steps

runner = CliRunner()
KINDS = ("zero", "truncated", "corrupt")


def sit(*args):
    return runner.invoke(app, [str(a) for a in args])


def damage(path: Path, kind: str) -> None:
    """A zero-byte, truncated (first half) or corrupt (one byte flipped in the middle) copy of ``path``."""
    data = path.read_bytes()
    mid = len(data) // 2
    path.write_bytes({"zero": b"", "truncated": data[:mid],
                      "corrupt": data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:]}[kind])



@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A run with checkpoints 2 and 4, and a straight run of 6 steps to compare resumed ones with."""
    root = tmp_path_factory.mktemp("damaged")
    train(tiny(root, "run", steps=4), progress=False)
    train(tiny(root, "straight", steps=6), progress=False)
    return root


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained / "run", copy)
    return copy


def ckpt(run: Path, step: int) -> Path:
    return run / runs.CHECKPOINTS / f"{step:07d}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", runs.CHECKPOINT_FILES)
def test_every_damaged_file_is_found(run, name, kind):
    assert runs.checkpoint_problem(ckpt(run, 4)) is None
    damage(ckpt(run, 4) / name, kind)
    assert name in runs.checkpoint_problem(ckpt(run, 4))
    assert runs.newest_checkpoint(run) == (ckpt(run, 2), [(ckpt(run, 4), runs.checkpoint_problem(ckpt(run, 4)))])
    assert runs.latest_checkpoint(run) == ckpt(run, 2)


@pytest.mark.parametrize("kind", ["zero", "truncated", "missing", "no manifest"])
def test_a_damaged_or_missing_manifest_or_a_missing_file_is_a_damaged_checkpoint(run, kind):
    path = ckpt(run, 4) / (runs.MANIFEST if kind not in ("missing",) else "rng.safetensors")
    if kind in ("missing", "no manifest"):
        path.unlink()
    else:
        damage(path, kind)
    assert runs.checkpoint_problem(ckpt(run, 4)) is not None
    assert runs.latest_checkpoint(run) == ckpt(run, 2)


@pytest.mark.parametrize("name,kind", [("model.safetensors", "zero"), ("ema.safetensors", "truncated"),
                                       ("optimizer.pt", "corrupt"), ("state.json", "corrupt")])
def test_resume_goes_on_from_the_newest_intact_checkpoint_to_the_same_weights(trained, run, name, kind):
    damage(ckpt(run, 4) / name, kind)
    result = sit("train", "--resume", run, "--steps", 6)
    assert result.exit_code == 0, result.output
    assert f"checkpoint {ckpt(run, 4)} is damaged ({name}" in result.output
    assert f"resuming from {ckpt(run, 2)}" in result.output
    assert runs.checkpoint_problem(ckpt(run, 4)) is None  # written again
    assert not list((run / runs.CHECKPOINTS).glob(".tmp-*"))
    assert_same_state(final_state(run)[1], final_state(trained / "straight")[1])


def test_resume_without_an_intact_checkpoint_changes_nothing(run):
    damage(ckpt(run, 4) / "model.safetensors", "zero")
    damage(ckpt(run, 2) / "state.json", "corrupt")
    before = snapshot(run)
    result = sit("train", "--resume", run, "--steps", 6)
    assert result.exit_code == 2, result.output
    assert f"checkpoint {ckpt(run, 4)} is damaged" in result.output and "no older one is intact" in result.output
    assert snapshot(run) == before  # config.json still says steps 4


def test_a_checkpoint_that_does_not_fit_the_model_is_refused_before_config_json_changes(run, tmp_path):
    """A checkpoint whose files verify against their manifest but hold another model: refused, nothing rewritten."""
    train(tiny(tmp_path, "other", steps=2, model="SiT-Ti/2"), progress=False)
    shutil.copy(ckpt(tmp_path / "other", 2) / "model.safetensors", ckpt(run, 4) / "model.safetensors")
    manifest = json.loads((ckpt(run, 4) / runs.MANIFEST).read_text())
    data = (ckpt(run, 4) / "model.safetensors").read_bytes()
    manifest["files"]["model.safetensors"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt(run, 4) / runs.MANIFEST).write_text(json.dumps(manifest))
    assert runs.checkpoint_problem(ckpt(run, 4)) is None
    before = snapshot(run)
    result = sit("train", "--resume", run, "--steps", 6)
    assert result.exit_code == 2 and "does not fit the model" in result.output, result.output
    assert snapshot(run) == before


@pytest.mark.parametrize("name,kind", [("ema.safetensors", "zero"), ("state.json", "truncated")])
def test_sample_names_the_damaged_checkpoint_and_the_newest_intact_one(run, tmp_path, name, kind):
    damage(ckpt(run, 4) / name, kind)
    result = sit("sample", "--ckpt", run, "--out", tmp_path / "s", "--num", 2, "--steps", 2)
    assert result.exit_code == 2, result.output
    assert f"{ckpt(run, 4)}, is damaged ({name}" in result.output.replace("\n", "")
    assert not (tmp_path / "s").exists()
    # What the message offers works.
    assert f"--ckpt {ckpt(run, 2)}" in result.output.replace("\n", "")
    result = sit("sample", "--ckpt", ckpt(run, 2), "--out", tmp_path / "s", "--num", 2, "--steps", 2)
    assert result.exit_code == 0, result.output
    # A damaged checkpoint named explicitly is refused too.
    result = sit("sample", "--ckpt", ckpt(run, 4), "--out", tmp_path / "t", "--num", 2, "--steps", 2)
    assert result.exit_code == 2 and "is damaged" in result.output, result.output


# ----------------------------------------------------------------------------- data that changed under a run


def image_folder(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{k}.png")
    return root


def test_resume_after_the_data_changed(tmp_path):
    data = image_folder(tmp_path / "images", {"a": 4, "b": 4})
    run = tmp_path / "run"
    flags = ["--data", data, "--image-size", 8, "--model", "SiT-Ti/4", "--batch-size", 4, "--log-every", 1,
             "--ckpt-every", 2, "--sample-every", 0, "--threads", 1, "--num-workers", 0]
    assert sit("train", *flags, "--out", run, "--steps", 2).exit_code == 0
    image_folder(data, {"c": 2})  # a new class: the model would need another label embedding
    before = snapshot(run)
    result = sit("train", "--resume", run, "--steps", 4)
    assert result.exit_code == 2 and "num_classes 2 -> 3" in result.output, result.output
    assert snapshot(run) == before
    shutil.rmtree(data / "c")
    image_folder(data, {"a": 8})  # more images of the same classes: resumable, but not exactly
    result = sit("train", "--resume", run, "--steps", 4)
    assert result.exit_code == 0, result.output
    assert "now holds 12 images, the run was trained on 8" in result.output
    assert json.loads((ckpt(run, 4) / "state.json").read_text())["data_size"] == 12


# ----------------------------------------------------------------------------- latent caches


def latent_cache(root: Path, n: int = 6) -> Path:
    root.mkdir(parents=True)
    np.save(root / "latents.npy", np.zeros((n, 2, 4, 2, 2), dtype=np.float16))
    np.save(root / "labels.npy", np.arange(n) % 2)
    manifest = {"data": "/images", "vae": "/vae", "image_size": 16, "latent_scale": 0.18215, "classes": ["a", "b"],
                "count": n, "skipped": [], "seed": 0}
    (root / "latents.json").write_text(json.dumps(manifest))
    return root


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


CACHE_DAMAGE = {
    "latents.npy missing": (lambda c: (c / "latents.npy").unlink(), "latents.npy is missing"),
    "labels.npy truncated": (lambda c: _truncate(c / "labels.npy"), "labels.npy cannot be read"),
    "latents.npy truncated": (lambda c: _truncate(c / "latents.npy"), "latents.npy cannot be read"),
    "latents.npy zero": (lambda c: (c / "latents.npy").write_bytes(b""), "latents.npy cannot be read"),
    "manifest not JSON": (lambda c: (c / "latents.json").write_text('{"count": 6,'), "latents.json is not valid JSON"),
    "manifest lacks keys": (lambda c: (c / "latents.json").write_text('{"count": 6}'), "latents.json lacks classes"),
    "counts disagree": (lambda c: np.save(c / "labels.npy", np.zeros(5, dtype=np.int64)), "6 latents, 5 labels"),
    "manifest missing": (lambda c: (c / "latents.json").unlink(), "latents.json is missing"),
}


@pytest.mark.parametrize("case", CACHE_DAMAGE)
def test_a_damaged_latent_cache_says_what_and_how_to_rebuild(tmp_path, case):
    cache = latent_cache(tmp_path / "cache")
    assert len(open_dataset(str(cache))) == 6
    spoil, what = CACHE_DAMAGE[case]
    spoil(cache)
    with pytest.raises(InputError, match="the cache at .* is damaged") as err:
        open_dataset(str(cache))
    assert what in str(err.value) and "sit cache-latents" in str(err.value)
    if case != "manifest missing" and case != "manifest not JSON" and case != "manifest lacks keys":
        assert f"--data /images --vae /vae --image-size 16 --seed 0 --out {cache} --overwrite" in str(err.value)
    result = sit("train", "--data", cache, "--out", tmp_path / "run", "--steps", 1, *map(str, ("--batch-size", 2)))
    assert result.exit_code == 2 and "is damaged" in result.output and not (tmp_path / "run").exists(), result.output
