"""sitcli/autoencoder/kl.py (and base.py): a diffusers AutoencoderKL behind the Autoencoder interface,
bit for bit the SD-VAE functions sit has always used, with the config's shift and with statistics."""

import json

import pytest
import torch

import sitcli.autoencoder as ae
from sitcli.autoencoder import KLAutoencoder, decode, encode, latent_scale, load_vae
from sitcli.autoencoder.normalization import from_mean_std
from sitcli.autoencoder.statistics import LatentStatistics
from sitcli.errors import InputError


def vae_folder(path, **config):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                  latent_channels=4, norm_num_groups=4, sample_size=16, **config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return vae_folder(tmp_path_factory.mktemp("kl") / "vae")


def test_the_old_functions_are_still_there():
    assert ae.DEFAULT_LATENT_SCALE == 0.18215
    for name in ("load_vae", "encode", "decode", "latent_scale", "latent_shape"):
        assert callable(getattr(ae, name))


def test_kl_autoencoder_is_the_sd_vae_road_bit_for_bit(folder):
    auto = KLAutoencoder.load(folder)
    vae = load_vae(folder)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    n = auto.encode(x, noise=noise)
    assert auto.normalization.kind == "scale" and auto.normalization.scale == latent_scale(vae) == 0.18215
    assert torch.equal(n, encode(vae, x, noise=noise))
    assert torch.equal(auto.decode(n), decode(vae, n))
    assert auto.latent_shape(16) == (4, 8, 8) and auto.identity()["downsampling"] == 2
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(auto.encode(x, generator=g1), encode(vae, x, generator=g2))
    with pytest.raises(InputError, match="not divisible by the VAE's downsampling factor 2"):
        auto.latent_shape(15)


def test_the_configs_shift_factor_is_honoured(tmp_path):
    path = vae_folder(tmp_path / "sd3like", scaling_factor=1.5305, shift_factor=0.0609)
    auto = KLAutoencoder.load(path)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    noise = torch.randn(1, 4, 8, 8)
    raw = auto.encode_raw(x, noise=noise)
    assert torch.equal(auto.encode(x, noise=noise), (raw - torch.tensor(0.0609)) * 1.5305)
    torch.testing.assert_close(auto.normalization.denormalize(auto.encode(x, noise=noise)), raw, rtol=0, atol=1e-6)
    assert json.loads((path / "config.json").read_text())["shift_factor"] == 0.0609


def test_channel_statistics_replace_the_scale(folder):
    auto = KLAutoencoder.load(folder)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(32, 3, 16, 16, generator=g) * 2 - 1
    stats = LatentStatistics().update(auto.encode_raw(x, generator=g))
    other = auto.with_normalization(stats.normalization("channel"))
    assert other.vae is auto.vae and other.normalization.kind == "channel" and auto.normalization.kind == "scale"
    flat = other.encode(x, generator=torch.Generator().manual_seed(5)).transpose(0, 1).reshape(4, -1)
    assert flat.mean(1).abs().max() < 0.1 and (flat.std(1) - 1).abs().max() < 0.1  # whitened per channel
    z = torch.randn(2, 4, 8, 8)
    lightning = other.with_normalization(from_mean_std(torch.zeros(4, 1, 1), torch.full((4, 1, 1), 2.0)))
    assert torch.equal(lightning.decode(z), auto.decode_raw(z * 2.0))
