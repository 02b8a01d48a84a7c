"""REPA features in a latent cache (latent_cache, data.LatentDataset.use_features): stored, and read by
`sit train --data CACHE --repa-encoder`, giving the training of the encoder run on the fly. (Two ranks
store the one-process features bit for bit: test_latent_cache.)"""


import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import sitcli.autoencoder
import sitcli.data.latent_cache as lc
from sitcli.config import TrainConfig
from sitcli.data import ImageFolderDataset
from sitcli.encoders import encoder_identity, load_encoder
from sitcli.errors import InputError
from sitcli.training import train
from helpers import dinov2_folder, final_state

SIZE = 16


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Eight readable images in two classes, a tiny random VAE, and a tiny random DINOv2 (patch 4)."""
    from diffusers import AutoencoderKL

    root = tmp_path_factory.mktemp("repa_cache")
    torch.manual_seed(0)
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    ).save_pretrained(root / "vae")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / "images" / name).mkdir(parents=True)
        for k in range(4):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / "images" / name / f"{k}.png")
    dinov2_folder(root / "dino")
    return root


def cache(folders, out, *encoders, **kw):
    config = lc.CacheConfig(
        str(folders / "images"),
        str(folders / "vae"),
        str(out),
        SIZE,
        batch_size=3,
        num_workers=0,
        seed=1,
        shard_size=5,
        repa_encoder=[str(e) for e in encoders],
        **kw,
    )
    return lc.cache_latents(config, progress=False)


@pytest.fixture(scope="module")
def caches(folders, tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("caches")
    cache(folders, root / "f32", folders / "dino", repa_dtype="float32")
    cache(folders, root / "f16", folders / "dino")
    cache(folders, root / "plain")
    return root


def pixels(folders) -> torch.Tensor:
    """The images the cache encoded, in its order, in [-1, 1] (the training images)."""
    dataset = ImageFolderDataset(str(folders / "images"), SIZE)
    return torch.stack([dataset[(i, False)][0] for i in range(len(dataset))])


def test_cache_stores_each_encoders_features_of_image_and_mirror(folders, caches, one_thread):
    manifest = json.loads((caches / "f32" / "latents.json").read_text())
    (entry,) = manifest["repa_features"]
    assert entry == {
        "encoder": str((folders / "dino").resolve()),
        "sha256": encoder_identity(folders / "dino"),
        "file": "repa_features_0.npy",
        "requested_grid": 4,
        "grid": 4,
        "resolution": 16,
        "width": 32,
        "tokens": 16,
        "dtype": "float32",
        "fixed_resolution": False,
    }
    stored = np.load(caches / "f32" / "repa_features_0.npy")
    assert stored.shape == (8, 2, 16, 32) and stored.dtype == np.float32
    encoder, x = load_encoder(folders / "dino"), pixels(folders)
    want = torch.stack([encoder.features(x, 4), encoder.features(x.flip(-1), 4)], dim=1)
    # The cache ran the encoder on batches of 3 images, this on all 8 at once: equal to float32 rounding.
    torch.testing.assert_close(torch.from_numpy(stored), want, rtol=0, atol=1e-6)
    half = np.load(caches / "f16" / "repa_features_0.npy")
    assert half.dtype == np.float16 and np.array_equal(half, stored.astype(np.float16))
    # The latents are those of the cache without features, bit for bit.
    assert np.load(caches / "f32" / "latents.npy").tobytes() == np.load(caches / "plain" / "latents.npy").tobytes()
    assert "repa_features" not in json.loads((caches / "plain" / "latents.json").read_text())


def run_config(out, data, **kw) -> TrainConfig:
    settings = dict(
        model="SiT-Ti/2",
        steps=3,
        batch_size=4,
        lr=1e-3,
        ema_decay=0.9,
        num_workers=0,
        threads=1,
        sample_every=0,
        ckpt_every=3,
        log_every=1,
        repa_projector_dim=16,
    )
    return TrainConfig(data=str(data), out=str(out), **{**settings, **kw})


@pytest.mark.slow
def test_training_on_cached_features_is_training_with_the_encoder_on_the_fly(folders, caches, tmp_path, monkeypatch):
    enc = str(folders / "dino")
    for dtype in ("f32", "f16"):
        train(run_config(tmp_path / dtype, caches / dtype, repa_encoder=[enc]), progress=False)

    # On the fly: the image folder with --vae, the encoder run on each batch's (flipped) images by the
    # alignment term; the VAE's encode is replaced by a look-up of the cache's latents of the same image
    # (drawing no noise), so that both runs see the same latents, batch order, flips, times and noise.
    latents = torch.from_numpy(np.load(caches / "f32" / "latents.npy")).float()
    x = pixels(folders)
    lookup = {
        img.numpy().tobytes(): latents[i, f] for i in range(len(x)) for f, img in enumerate((x[i], x[i].flip(-1)))
    }
    monkeypatch.setattr(
        sitcli.autoencoder,
        "encode",
        lambda vae, batch, generator=None: torch.stack([lookup[img.numpy().tobytes()] for img in batch]),
    )
    train(
        run_config(
            tmp_path / "live", folders / "images", image_size=SIZE, vae=str(folders / "vae"), repa_encoder=[enc]
        ),
        progress=False,
    )

    live, cached = final_state(tmp_path / "live")[1], final_state(tmp_path / "f32")[1]
    losses = {
        p: [r.split(",")[:4] for r in (tmp_path / p / "log.csv").read_text().splitlines()] for p in ("live", "f32")
    }
    assert losses["f32"][0][3] == "loss_alignment" and losses["live"] == losses["f32"]  # to the 6 digits logged
    # float32 features: the same weights as on the fly to float32 rounding (the encoder ran on other batches).
    for key in ("model", "ema"):
        for name in live[key]:
            torch.testing.assert_close(cached[key][name], live[key][name], rtol=0, atol=1e-6, msg=f"{key}.{name}")
    # float16 storage: features rounded to 11 bits; after 3 steps the weights agree to 1e-4.
    half = final_state(tmp_path / "f16")[1]
    gap = max((half["model"][n] - live["model"][n]).abs().max().item() for n in live["model"])
    assert 0 < gap < 1e-4


def test_a_cache_without_the_encoders_features_is_refused_naming_the_command(folders, caches, tmp_path):
    with pytest.raises(
        InputError, match=r"has no features of encoder .*dino.*sit cache-latents --data .* --repa-encoder"
    ) as err:
        train(run_config(tmp_path / "run", caches / "plain", repa_encoder=[str(folders / "dino")]), progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()
    other = tmp_path / "other"
    dinov2_folder(other, hidden_size=16)  # another encoder: other weights
    with pytest.raises(InputError, match="has no features of encoder"):
        train(run_config(tmp_path / "run", caches / "f32", repa_encoder=[str(other)]), progress=False)
    assert not (tmp_path / "run").exists()
    copy = tmp_path / "copy"  # the same weights under another path are found by their sha256
    shutil.copytree(folders / "dino", copy)
    train(run_config(tmp_path / "ok", caches / "f32", repa_encoder=[str(copy)], steps=1), progress=False)


def test_cached_grid_other_than_sits_is_interpolated_with_a_note(folders, caches, tmp_path, capsys):
    train(
        run_config(tmp_path / "run", caches / "f32", repa_encoder=[str(folders / "dino")], model="SiT-Ti/4", steps=1),
        progress=False,
    )
    out = capsys.readouterr().out
    assert "gives a 4x4 token grid at 16 pixels; SiT's is 2x2" in out and "--repa-grid 2" in out
    with pytest.raises(InputError, match="--repa-dtype"):
        cache(folders, tmp_path / "bad", folders / "dino", repa_dtype="bfloat16")
    assert not (tmp_path / "bad").exists()
