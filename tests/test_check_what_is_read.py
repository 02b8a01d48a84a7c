"""Check what is read: a damaged input is refused in one line naming the file and the fix, before anything is
written (or, for damage only a batch can show, with nothing left behind); what sit can rebuild itself it rebuilds.

Cases: a latent cache's REPA features cut short, of another width, with fewer rows, or with manifest entries
that do not describe them (width, file, a path outside the cache, a missing key, not a list, tokens against the
grid, dtype); NaN in the cached features or latents (named as damage, not as a loss to cure with --lr); a damaged
shard of an interrupted extraction (cut, empty, bad CRC), encoded again; a truncated encoder folder; a broken
OUT/sample.json (refused) and a non-UTF-8 labels.csv (rewritten); 16-bit grey PNGs (scaled, not white) in training
and in `sit fid`; a guide with NaN weights (named as such); a REPA resume with other encoder weights at the same
path (refused through the sha256 recorded with each checkpoint)."""

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import helpers
import sitcli.data.latent_cache as lc
from sitcli.cli import app
from sitcli.data import ImageFolderDataset
from sitcli.evaluate.inputs import ImageDataset, open_source

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")
FEATURES = "repa_features_0.npy"


def sit(*args):
    return runner.invoke(app, [str(a) for a in args])


def refused(result, *words: str, code: int = 2) -> str:
    bars = ("train ", "sample ", "encoding ")  # a progress bar drawn before the failure
    lines = [line for line in result.output.strip().splitlines() if not line.startswith(bars)]
    assert result.exit_code == code and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("error: ") and all(w in lines[0] for w in words), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny VAE, two classes of 4 images, a tiny DINOv2 folder, and the latent cache of them with its features."""
    root = tmp_path_factory.mktemp("read")
    helpers.tiny_vae(root / "vae")
    helpers.image_folder(root / "images")
    helpers.dinov2_folder(root / "dino")
    cache(root, root / "cache")
    return root


def cache(root: Path, out: Path, **kw):
    config = lc.CacheConfig(str(root / "images"), str(root / "vae"), str(out), 16, batch_size=3, num_workers=0,
                            seed=1, shard_size=3, repa_encoder=[str(root / "dino")], **kw)
    return lc.cache_latents(config, progress=False)


def train_on(files: Path, data: Path, out: Path, *flags):
    return sit("train", "--data", data, "--repa-encoder", files / "dino", "--out", out, "--model", "SiT-Ti/2",
               "--batch-size", 4, "--steps", 2, "--ckpt-every", 2, "--sample-every", 0, "--num-workers", 0, *flags)


def manifest(change):
    def damage(c: Path) -> None:
        m = json.loads((c / "latents.json").read_text())
        change(m)
        (c / "latents.json").write_text(json.dumps(m))
    return damage


def entry(**changes):
    return manifest(lambda m: m["repa_features"][0].update(changes))


DAMAGE = {
    "cut short": lambda c: (c / FEATURES).write_bytes((c / FEATURES).read_bytes()[:3000]),
    "other width": lambda c: np.save(c / FEATURES, np.zeros((8, 2, 16, 16), np.float16)),
    "fewer rows": lambda c: np.save(c / FEATURES, np.load(c / FEATURES)[:4]),
    "manifest width": entry(width=64),
    "manifest file missing": entry(file="repa_features_7.npy"),
    "manifest file outside": entry(file="../cache/latents.npy"),
    "manifest key missing": manifest(lambda m: m["repa_features"][0].pop("grid")),
    "manifest not a list": manifest(lambda m: m.update(repa_features={"a": 1})),
    "manifest tokens": entry(grid=3),
    "manifest dtype": entry(dtype="float32"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_repa_features_are_refused_before_anything_is_written(files, tmp_path, kind):
    damaged = tmp_path / "cache"
    shutil.copytree(files / "cache", damaged)
    DAMAGE[kind](damaged)
    refused(train_on(files, damaged, tmp_path / "run"), f"the cache at {damaged} is damaged", "sit cache-latents")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", [FEATURES, "latents.npy"])
def test_nan_in_a_cache_is_named_as_damage_not_as_a_learning_rate(files, tmp_path, name):
    damaged = tmp_path / "cache"
    shutil.copytree(files / "cache", damaged)
    values = np.load(damaged / name)
    values[:] = np.nan  # every row: the first batch reads some
    np.save(damaged / name, values)
    line = refused(train_on(files, damaged, tmp_path / "run"), f"{name} holds NaN or inf", "damaged")
    assert "--lr" not in line
    assert not (tmp_path / "run").exists()  # the new run saved nothing, so it leaves nothing


def interrupted(files: Path, out: Path, monkeypatch) -> None:
    """The shards of an extraction interrupted before it joined them."""
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(lc, "_assemble", stop)
        with pytest.raises(KeyboardInterrupt):
            cache(files, out)
    assert len(list((out / "shards").glob("*.npz"))) == 3


def same_cache(a: Path, b: Path) -> None:
    for name in ("latents.npy", "labels.npy", FEATURES):
        assert np.array_equal(np.load(a / name), np.load(b / name)), name


@pytest.mark.parametrize("kind", ["cut", "empty"])
def test_a_damaged_shard_of_an_interrupted_extraction_is_encoded_again(files, tmp_path, monkeypatch, kind):
    out = tmp_path / "c"
    interrupted(files, out, monkeypatch)
    shard = out / "shards" / "000001.npz"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2] if kind == "cut" else b"")
    result = sit("cache-latents", "--data", files / "images", "--vae", files / "vae", "--out", out, "--image-size", 16,
                 "--batch-size", 3, "--num-workers", 0, "--seed", 1, "--shard-size", 3,
                 "--repa-encoder", files / "dino")
    assert result.exit_code == 0, result.output
    assert "000001.npz is damaged" in result.output and "2 of 3 shards kept" in " ".join(result.output.split())
    same_cache(out, files / "cache")


def test_a_shard_whose_data_fail_their_crc_is_removed_and_encoded_on_the_next_run(files, tmp_path, monkeypatch):
    out = tmp_path / "c"
    interrupted(files, out, monkeypatch)
    shard = out / "shards" / "000000.npz"
    with zipfile.ZipFile(shard) as zf:  # a byte deep inside the features' data: the index and headers still read
        info = zf.getinfo("features_0.npy")
    data = bytearray(shard.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 5000] ^= 0xFF
    shard.write_bytes(bytes(data))
    flags = ["--data", files / "images", "--vae", files / "vae", "--out", out, "--image-size", 16, "--batch-size", 3,
             "--num-workers", 0, "--seed", 1, "--shard-size", 3, "--repa-encoder", files / "dino"]
    refused(sit("cache-latents", *flags), "000000.npz is damaged", "run the same command again")
    assert not shard.exists()
    assert sit("cache-latents", *flags).exit_code == 0
    same_cache(out, files / "cache")


def test_a_truncated_encoder_is_refused_in_one_line(files, tmp_path):
    bad = tmp_path / "dino"
    shutil.copytree(files / "dino", bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    refused(sit("train", "--repa-encoder", bad, "--out", tmp_path / "run", "--steps", 1), f"encoder {bad}",
            "weights file is complete")
    refused(sit("cache-latents", "--data", files / "images", "--vae", files / "vae", "--out", tmp_path / "c",
                "--image-size", 16, "--repa-encoder", bad), f"encoder {bad}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dino"]


def test_a_broken_sample_json_is_refused_and_a_non_utf8_labels_csv_is_rewritten(tiny_run, tmp_path):
    out = tmp_path / "s"
    flags = ["sample", "--ckpt", tiny_run, "--out", out, "--num", 2, "--steps", 2]
    assert sit(*flags).exit_code == 0
    settings = (out / "sample.json").read_bytes()
    (out / "sample.json").write_text('{"ckpt": ')
    refused(sit(*flags), "sample.json is damaged", "pick a new --out")
    (out / "sample.json").write_bytes(settings)
    labels = (out / "labels.csv").read_bytes()
    (out / "labels.csv").write_bytes(b"\xff\xfe\x00index\n\x80\x81\n\x82\n")
    result = sit(*flags)
    assert result.exit_code == 0, result.output
    assert (out / "labels.csv").read_bytes() == labels


def test_16_bit_grey_pngs_are_scaled_to_8_bits_not_read_as_white(tmp_path):
    values = np.arange(0, 65536, 257 * 4, dtype=np.uint16)[:64].reshape(8, 8)
    expected = (values // 257).astype(np.uint8)  # exact: every value is a multiple of 257
    (tmp_path / "data" / "a").mkdir(parents=True)
    Image.fromarray(values).save(tmp_path / "data" / "a" / "0.png")
    assert Image.open(tmp_path / "data" / "a" / "0.png").mode.startswith("I")
    training = ImageFolderDataset(tmp_path / "data", 8).load(0)
    _, fid, _ = ImageDataset(open_source(tmp_path / "data"))[0]
    for got in (training, fid.numpy().transpose(1, 2, 0)):
        assert got.shape == (8, 8, 3) and np.array_equal(got, np.repeat(expected[..., None], 3, axis=-1))


def test_a_guide_with_nan_weights_is_refused_naming_it(tiny_run, tmp_path):
    weights = load_file(tiny_run / "checkpoints" / "0000003" / "ema.safetensors")
    weights["final_layer.linear.weight"][0, 0] = float("nan")
    save_file(weights, tmp_path / "nan.safetensors")
    line = refused(sit("sample", "--ckpt", tiny_run, "--out", tmp_path / "s", "--num", 2, "--steps", 2,
                       "--guidance-model", tmp_path / "nan.safetensors", "--guidance-scale", 2),
                   "--guidance-model", "NaN or inf in 1 tensors")
    assert "--guidance-scale" not in line and not (tmp_path / "s").exists()


def test_a_repa_resume_with_other_encoder_weights_at_the_same_path_is_refused(files, tmp_path):
    dino = tmp_path / "dino"
    shutil.copytree(files / "dino", dino)
    run = tmp_path / "run"
    flags = ["--model", "SiT-Ti/4", "--batch-size", 16, "--ckpt-every", 2, "--sample-every", 0,
             "--repa-projector-dim", 16]
    assert sit("train", "--out", run, "--steps", 2, "--repa-encoder", dino, *flags).exit_code == 0
    torch.manual_seed(5)
    original = (dino / "model.safetensors").read_bytes()
    other = load_file(dino / "model.safetensors")
    save_file({k: v + 0.01 for k, v in other.items()}, dino / "model.safetensors")
    config = (run / "config.json").read_bytes()
    refused(sit("train", "--resume", run, "--steps", 4), f"encoder {dino} is not the one the run was trained with")
    assert (run / "config.json").read_bytes() == config and not (run / "checkpoints" / "0000004").exists()
    (dino / "model.safetensors").write_bytes(original)
    result = sit("train", "--resume", run, "--steps", 4)
    assert result.exit_code == 0, result.output
