"""sitcli/autoencoder/{normalization,statistics,files}.py: the maps between raw and model latents,
exact statistics in one streaming pass, and the statistics files of sit, RAE and LightningDiT."""

import math

import pytest
import torch

from sitcli.autoencoder.files import load_normalization, save_normalization
from sitcli.autoencoder.normalization import RAE_EPS, LatentNormalization, from_mean_std, from_mean_var, scale_only
from sitcli.autoencoder.statistics import LatentStatistics
from sitcli.errors import InputError


def latents(seed: int, n: int = 37, shape=(6, 3, 4)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(shape, generator=g) * 3 + 0.1
    return torch.randn((n, *shape), generator=g) * scale + 5 * torch.randn(shape, generator=g)


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


# ---------------------------------------------------------------- the maps, bit for bit with the reference codes


def test_scale_only_is_sd_vaes_multiplication_and_division_bit_for_bit():
    z = latents(0).float()
    norm = scale_only(0.18215)
    assert norm.kind == "scale"
    assert bitwise_equal(norm.normalize(z), z * 0.18215)  # sit's encode: z.float() * latent_scale
    assert bitwise_equal(norm.denormalize(z), z / 0.18215)  # sit's decode: z / latent_scale


def test_shift_factor_is_subtracted_before_the_scale():
    z = latents(1).float()
    norm = scale_only(1.5305, 0.0609)  # SD3's VAE config
    assert norm.kind == "scale"
    assert bitwise_equal(norm.normalize(z), (z - torch.tensor(0.0609)) * 1.5305)
    torch.testing.assert_close(norm.denormalize(norm.normalize(z)), z, rtol=0, atol=1e-5)


def test_rae_statistics_apply_raes_formula_bit_for_bit():
    z = latents(2).float()
    mean, var = torch.randn(6, 3, 4), torch.rand(6, 3, 4) * 2
    norm = from_mean_var(mean, var)  # eps defaults to RAE's 1e-5
    assert norm.kind == "element" and norm.eps == RAE_EPS == 1e-5
    # RAE's stage1/rae.py: encode (z - mean) / sqrt(var + eps); decode z * sqrt(var + eps) + mean.
    assert bitwise_equal(norm.normalize(z), (z - mean) / torch.sqrt(var + 1e-5))
    assert bitwise_equal(norm.denormalize(z), z * torch.sqrt(var + 1e-5) + mean)
    # A leading batch axis of 1, as a (1, C, H, W) file may hold it, is the same statistics.
    assert bitwise_equal(from_mean_var(mean[None], var[None]).normalize(z), norm.normalize(z))


def test_lightningdit_channel_statistics_apply_its_formula():
    z = latents(3).float()
    mean, std = torch.randn(1, 6, 1, 1), torch.rand(1, 6, 1, 1) + 0.5  # latents_stats.pt layout
    norm = from_mean_std(mean, std, scale=1.0)
    assert norm.kind == "channel"
    assert bitwise_equal(norm.normalize(z), (z - mean[0]) / std[0] * 1.0)
    assert bitwise_equal(norm.denormalize(z), (z * std[0]) / 1.0 + mean[0])
    # With a latent_multiplier other than 1 the inverse divides first: equal to rounding.
    scaled = from_mean_std(mean, std, scale=0.7)
    torch.testing.assert_close(scaled.denormalize(z), (z * std[0]) / 0.7 + mean[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda: scale_only(0.3),
    lambda: from_mean_var(torch.randn(6, 3, 4), torch.rand(6, 3, 4)),
    lambda: from_mean_std(torch.randn(6, 1, 1), torch.rand(6, 1, 1) + 0.1, scale=2.0),
])
def test_denormalize_inverts_normalize_to_float_rounding(make):
    z = latents(4).double()  # float64 in, float64 out: the round trip to 1e-12
    norm = make()
    assert norm.normalize(z).dtype == torch.float64
    torch.testing.assert_close(norm.denormalize(norm.normalize(z)), z, rtol=1e-12, atol=1e-12)
    half = norm.normalize(z.half())  # low-precision latents (a float16 cache) come out float32
    assert half.dtype == torch.float32


def test_bad_statistics_are_refused():
    with pytest.raises(InputError, match="positive"):
        LatentNormalization(mean=torch.zeros(2, 1, 1), std=torch.tensor([1.0, 0.0]).view(2, 1, 1))
    with pytest.raises(ValueError, match="differ in shape"):
        LatentNormalization(mean=torch.zeros(2, 1, 1), std=torch.ones(2, 3, 3))
    with pytest.raises(InputError, match="nonzero"):
        scale_only(0.0)
    norm = from_mean_var(torch.zeros(6, 3, 4), torch.ones(6, 3, 4))
    norm.check_shape((6, 3, 4))
    with pytest.raises(InputError, match=r"does not fit latents of shape \(6, 4, 4\)"):
        norm.check_shape((6, 4, 4))
    from_mean_std(torch.zeros(6, 1, 1), torch.ones(6, 1, 1)).check_shape((6, 9, 9))  # per channel fits any size


# ---------------------------------------------------------------- statistics


def test_statistics_are_the_exact_mean_and_variance_whatever_the_batching():
    z = latents(5, n=101).double()
    one = LatentStatistics()
    for batch in z.split(7):
        one.update(batch)
    other = LatentStatistics()
    for batch in z.split(50):
        other.update(batch)
    mean, var = one.element()
    torch.testing.assert_close(mean, z.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(var, z.var(0, unbiased=False), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(one.element(unbiased=True)[1], z.var(0, unbiased=True), rtol=1e-12, atol=1e-12)
    for a, b in zip(one.element(), other.element()):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    # Per channel: every position of the channel pooled.
    cm, cv = one.channel()
    flat = z.transpose(0, 1).reshape(6, -1)
    torch.testing.assert_close(cm[:, 0, 0], flat.mean(1), rtol=0, atol=1e-12)
    torch.testing.assert_close(cv[:, 0, 0], flat.var(1, unbiased=False), rtol=1e-12, atol=1e-12)
    unbiased = one.channel(unbiased=True)[1][:, 0, 0]
    torch.testing.assert_close(unbiased, flat.var(1, unbiased=True), rtol=1e-12, atol=1e-12)


def test_merging_ranks_equals_one_pass():
    z = latents(6, n=60).double()
    parts = [LatentStatistics().update(z[:13]), LatentStatistics().update(z[13:40]), LatentStatistics().update(z[40:])]
    merged = LatentStatistics()
    for p in parts:
        merged.merge(p)
    merged.merge(LatentStatistics())  # an empty rank changes nothing
    whole = LatentStatistics().update(z)
    assert merged.count == 60
    for a, b in zip(merged.element(), whole.element()):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_float64_accumulation_keeps_large_offsets_exact():
    # Latents far from zero (mean 1e4, std 1e-2): naive float32 sums of squares would lose every digit.
    g = torch.Generator().manual_seed(7)
    z = (1e4 + 1e-2 * torch.randn(400, 2, 2, 2, generator=g, dtype=torch.float64))
    stats = LatentStatistics()
    for batch in z.float().split(64):
        stats.update(batch)
    var = stats.element()[1]
    torch.testing.assert_close(var, z.float().double().var(0, unbiased=False), rtol=1e-9, atol=0)


def test_normalization_from_statistics_whitens_the_latents():
    z = latents(8, n=500).float()
    stats = LatentStatistics().update(z)
    element = stats.normalization("element")
    assert element.kind == "element" and element.eps == 1e-5
    n = element.normalize(z)
    torch.testing.assert_close(n.mean(0), torch.zeros(6, 3, 4), rtol=0, atol=1e-5)
    # eps = 1e-5 against variances >= 0.01: unit variance to 1e-3.
    torch.testing.assert_close(n.var(0, unbiased=False), torch.ones(6, 3, 4), rtol=0, atol=1e-3)
    channel = stats.normalization("channel", unbiased=True)
    assert channel.kind == "channel" and channel.eps == 0
    flat = channel.normalize(z).transpose(0, 1).reshape(6, -1)
    torch.testing.assert_close(flat.std(1), torch.ones(6), rtol=1e-5, atol=1e-5)
    # std is RAE's float32 sqrt(var + eps), so exporting var to RAE's file gives the same numbers.
    mean, var = stats.element()
    assert bitwise_equal(element.std, torch.sqrt(var.float() + 1e-5))
    with pytest.raises(ValueError, match="at least 1 latent"):
        LatentStatistics().element()


# ---------------------------------------------------------------- files


def test_sit_statistics_file_round_trips_bit_for_bit(tmp_path):
    z = latents(9).float()
    for norm in (LatentStatistics().update(z).normalization("element", source="test"), scale_only(0.18215),
                 scale_only(1.5305, 0.0609), from_mean_std(torch.randn(6, 1, 1), torch.rand(6, 1, 1) + 1, scale=0.5)):
        path = tmp_path / f"{norm.kind}-{norm.scale}.safetensors"
        save_normalization(path, norm)
        back = load_normalization(path)
        assert (back.kind, back.scale, back.eps, back.source) == (norm.kind, norm.scale, norm.eps, norm.source)
        assert bitwise_equal(back.normalize(z), norm.normalize(z))
        assert bitwise_equal(back.denormalize(z), norm.denormalize(z))


def test_raes_and_lightningdits_files_are_read(tmp_path):
    z = latents(10).float()
    mean, var = torch.randn(6, 3, 4), torch.rand(6, 3, 4)
    torch.save({"mean": mean, "var": var}, tmp_path / "stat.pt")  # RAE's calculate_stat.py output
    rae = load_normalization(tmp_path / "stat.pt")
    assert rae.kind == "element" and bitwise_equal(rae.normalize(z), (z - mean) / torch.sqrt(var + 1e-5))
    m, s = torch.randn(1, 6, 1, 1), torch.rand(1, 6, 1, 1) + 0.5
    torch.save({"mean": m, "std": s}, tmp_path / "latents_stats.pt")  # LightningDiT's
    light = load_normalization(tmp_path / "latents_stats.pt")
    assert light.kind == "channel" and bitwise_equal(light.normalize(z), (z - m[0]) / s[0])


def test_unreadable_or_foreign_statistics_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no latent statistics at"):
        load_normalization(tmp_path / "missing.safetensors")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="holds no latent statistics"):
        load_normalization(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable statistics file"):
        load_normalization(tmp_path / "junk.pt")
    from safetensors.torch import save_file

    save_file({"mean": torch.zeros(2, 1, 1)}, tmp_path / "foreign.safetensors")
    with pytest.raises(InputError, match="not a sit latent-normalization file"):
        load_normalization(tmp_path / "foreign.safetensors")


def test_describe_names_the_kind_and_shape():
    assert scale_only(0.18215).describe() == "scale 0.18215"
    assert "after subtracting 0.0609" in scale_only(1.5, 0.0609).describe()
    text = from_mean_var(torch.zeros(768, 16, 16), torch.ones(768, 16, 16)).describe()
    assert text == "element statistics (768, 16, 16), eps 1e-05, scale 1"
    assert math.isclose(from_mean_var(None, torch.full((2, 1, 1), 4.0), eps=0).std.max().item(), 2.0)
