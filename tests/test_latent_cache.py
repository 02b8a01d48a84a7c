"""sitcli/data/latent_cache.py: shards over two torchrun ranks, bit for bit the one-process cache; resume after
an interruption."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import sitcli.data.latent_cache as lc
from sitcli.errors import InputError
from helpers import dinov2_folder, torchrun

SETTINGS = dict(image_size=16, batch_size=2, num_workers=0, seed=3, shard_size=3)


def make(vae_and_images, out, **kw):
    config = lc.CacheConfig(str(vae_and_images / "images"), str(vae_and_images / "vae"), str(out), **{**SETTINGS, **kw})
    return lc.cache_latents(config, progress=False)


def contents(cache: Path) -> dict:
    manifest = json.loads((cache / "latents.json").read_text())
    return {"latents": np.load(cache / "latents.npy"), "labels": np.load(cache / "labels.npy"), "manifest": manifest}


def assert_same_cache(a: Path, b: Path):
    ca, cb = contents(a), contents(b)
    assert ca["manifest"] == cb["manifest"]
    assert np.array_equal(ca["labels"], cb["labels"])
    assert ca["latents"].tobytes() == cb["latents"].tobytes()
    for entry in ca["manifest"].get("repa_features", []):
        assert (a / entry["file"]).read_bytes() == (b / entry["file"]).read_bytes()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    path = tmp_path_factory.mktemp("encoder") / "dino"
    dinov2_folder(path)
    return path


@pytest.fixture(scope="module")
def one_process(vae_and_images, encoder, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("cache") / "one"
    result = make(vae_and_images, out, repa_encoder=[str(encoder)])  # with REPA features, sharded like the latents
    assert (result.count, result.shards, result.reused_shards) == (8, 3, 0)  # 9 files, one unreadable
    assert not (out / lc.SHARDS).exists()
    return out


@pytest.mark.slow
@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs gloo"
)
def test_two_ranks_make_the_one_process_cache_bit_for_bit(vae_and_images, encoder, one_process, tmp_path):
    proc = torchrun(
        "-m",
        "sitcli",
        "cache-latents",
        "--data",
        vae_and_images / "images",
        "--vae",
        vae_and_images / "vae",
        "--out",
        tmp_path / "two",
        "--image-size",
        16,
        "--batch-size",
        2,
        "--num-workers",
        0,
        "--seed",
        3,
        "--shard-size",
        3,
        "--device",
        "cpu",
        "--repa-encoder",
        encoder,
        cwd=tmp_path,
    )
    assert proc.stderr.count("latent cache of 8 images") + proc.stdout.count("latent cache of 8 images") == 1
    assert_same_cache(one_process, tmp_path / "two")
    assert contents(one_process)["latents"].shape == (8, 2, 4, 8, 8)
    assert np.load(one_process / "repa_features_0.npy").shape == (8, 2, 16, 32)  # the unreadable image left out


def test_an_interrupted_extraction_encodes_only_the_unfinished_shards(
    vae_and_images, encoder, one_process, tmp_path, monkeypatch
):
    save, written, features = lc.atomic.save_npz, [], dict(repa_encoder=[str(encoder)])

    def save_twice_then_stop(path, **arrays):
        if len(written) == 2:
            raise KeyboardInterrupt
        save(path, **arrays)
        written.append(Path(path).name)

    monkeypatch.setattr(lc.atomic, "save_npz", save_twice_then_stop)
    with pytest.raises(KeyboardInterrupt):
        make(vae_and_images, tmp_path / "cache", **features)
    assert sorted(p.name for p in (tmp_path / "cache" / lc.SHARDS).glob("*.npz")) == ["000000.npz", "000001.npz"]
    assert not (tmp_path / "cache" / "latents.json").exists()  # nothing that looks finished

    with pytest.raises(InputError, match="seed differ"):  # shards of other settings are not mixed in
        make(vae_and_images, tmp_path / "cache", seed=4, **features)
    with pytest.raises(InputError, match="repa_features differ"):  # nor shards without the features
        make(vae_and_images, tmp_path / "cache")
    monkeypatch.setattr(lc.atomic, "save_npz", save)
    encoded = []
    encode = lc.encode
    monkeypatch.setattr(lc, "encode", lambda vae, x, **kw: (encoded.append(len(x)), encode(vae, x, **kw))[1])
    result = make(vae_and_images, tmp_path / "cache", **features)
    assert (result.shards, result.reused_shards) == (3, 2)
    assert sum(encoded) == 2 * 3  # the last shard's 3 images, each with its mirror image
    assert_same_cache(one_process, tmp_path / "cache")


def test_each_image_draws_its_own_posterior_noise(vae_and_images, one_process, tmp_path):
    # Other shards and batches change the VAE's batches (float round-off at most), never an image's noise.
    other = contents(make(vae_and_images, tmp_path / "other", shard_size=9, batch_size=4).out)["latents"].astype(
        np.float32
    )
    np.testing.assert_allclose(other, contents(one_process)["latents"].astype(np.float32), rtol=2e-3, atol=2e-3)
    reseeded = contents(make(vae_and_images, tmp_path / "reseeded", seed=4).out)["latents"].astype(np.float32)
    assert np.abs(reseeded - other).max() > 0.01


def test_index_noise_depends_on_seed_index_and_stream_alone():
    from sitcli.seeds import index_normal

    base = index_normal(3, 5, (64,))
    assert torch.equal(base, index_normal(3, 5, (64,)))
    for other in (index_normal(4, 5, (64,)), index_normal(3, 6, (64,)), index_normal(3, 5, (64,), stream=1)):
        assert not torch.allclose(base, other)
    with pytest.raises(InputError, match="--seed"):
        index_normal(-1, 0, ())
