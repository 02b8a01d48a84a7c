"""sitcli/latent_space.py, sitcli/latent_stats.py and their wiring: caches that record their autoencoder and
statistics, `sit latent-stats`, RAE latents in `sit cache-latents` / `sit train` / `sit sample`, training's
refusals, --time-shift dimension. Tiny random DINOv2 (4 registers) and ViT decoder files written here."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from helpers import dinov2_folder, image_folder, tiny_vae
from sitcli.autoencoder.files import load_normalization
from sitcli.autoencoder.rae import load_rae_encoder
from sitcli.autoencoder.rae_decoder import RAEDecoder, decoder_config
from sitcli.autoencoder.statistics import LatentStatistics
from sitcli.cli import app
from sitcli.config import TrainConfig
from sitcli.data import to_unit_range
from sitcli.data.latent_cache import CacheConfig, LatentDataset, cache_latents
from sitcli.errors import InputError
from sitcli.latent_space import AutoencoderSpec, load_decoder, model_autoencoder
from sitcli.latent_stats import LatentStatsConfig, latent_stats

runner = CliRunner()
IMAGE, PATCH = 32, 8  # 32-pixel images, 8-pixel decoder patches: 4 x 4 tokens of the 32-wide DINOv2, fed 16 pixels
SHAPE = (32, 4, 4)


def sit(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """dino/ (a random 2-layer DINOv2 with registers), decoder.pt (RAE's names), images/ (2 classes of 6)."""
    root = tmp_path_factory.mktemp("rae")
    dinov2_folder(root / "dino", registers=4)
    torch.manual_seed(0)
    decoder = RAEDecoder(decoder_config("ViT-Ti", hidden_size=32, num_patches=16, patch_size=PATCH))
    torch.save(decoder.state_dict(), root / "decoder.pt")
    image_folder(root / "images", per_class=6, size=(40, 36))
    return root


@pytest.fixture(scope="module")
def cache(parts, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("cache") / "rae"
    cache_latents(CacheConfig(str(parts / "images"), None, str(out), image_size=IMAGE, batch_size=5, num_workers=0,
                              rae_encoder=str(parts / "dino"), rae_patch=PATCH), progress=False)
    return out


def folder_images(parts):
    from sitcli.data import ImageFolderDataset

    data = ImageFolderDataset(parts / "images", IMAGE)
    return to_unit_range(np.stack([data.load(i).transpose(2, 0, 1) for i in range(len(data))]))


# ---------------------------------------------------------------- caches


def test_a_cache_holds_the_raw_rae_latents_and_records_the_encoder(parts, cache):
    manifest = json.loads((cache / "latents.json").read_text())
    ae = manifest["autoencoder"]
    assert ae["kind"] == "rae" and ae["latent_shape"] == list(SHAPE) and ae["encoder_input_size"] == 16
    assert len(ae["sha256"]) == 64 and manifest["vae"] is None and manifest["latent_scale"] == 1.0
    assert manifest["normalization"] is None
    x = folder_images(parts)
    encoder = load_rae_encoder(parts / "dino", IMAGE, PATCH)
    stored = np.load(cache / "latents.npy")
    assert stored.shape == (12, 2, *SHAPE) and stored.dtype == np.float16
    want = torch.stack([encoder.features(x), encoder.features(x.flip(-1))], 1).numpy().astype(np.float16)
    assert np.array_equal(stored, want)  # RAE's latents of each image and its mirror, deterministic


def test_latent_stats_of_a_cache_are_exact_written_beside_it_and_used_by_its_reader(cache, tmp_path):
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    result = latent_stats(LatentStatsConfig(str(copy), batch_size=5), progress=False)
    assert result.out == copy / "latent_stats.safetensors" and result.recorded and result.count == 24
    raw = torch.from_numpy(np.load(copy / "latents.npy").astype(np.float64)).flatten(0, 1)
    norm = load_normalization(result.out)
    mean, var = raw.mean(0), raw.var(0, unbiased=False)
    torch.testing.assert_close(norm.mean, mean.float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(norm.std, torch.sqrt(var.float() + 1e-5), rtol=1e-6, atol=0)
    manifest = json.loads((copy / "latents.json").read_text())
    assert manifest["normalization"]["file"] == "latent_stats.safetensors" and manifest["normalization"]["kind"] == \
        "element"
    data = LatentDataset(copy)
    x, _ = data.__getitems__([(0, False), (3, True)])
    want = (raw.reshape(12, 2, *SHAPE)[[0, 3], [0, 1]].float() - norm.mean) / norm.std
    assert torch.equal(x, want)  # RAE's (z - mean) / sqrt(var + eps) on the stored float16 latents
    with pytest.raises(InputError, match="already exists: pass --overwrite"):
        latent_stats(LatentStatsConfig(str(copy)), progress=False)
    channel = latent_stats(LatentStatsConfig(str(copy), kind="channel", out=str(tmp_path / "c.safetensors")),
                           progress=False)
    assert not channel.recorded and load_normalization(channel.out).kind == "channel"


def test_statistics_of_an_image_folder_are_those_of_its_cache(parts, cache, tmp_path):
    out = tmp_path / "folder.safetensors"
    latent_stats(LatentStatsConfig(str(parts / "images"), out=str(out), rae_encoder=str(parts / "dino"),
                                   rae_patch=PATCH, image_size=IMAGE, batch_size=4), progress=False)
    from_cache = LatentStatistics().update(
        torch.from_numpy(np.load(cache / "latents.npy").astype(np.float64)).flatten(0, 1)).normalization()
    ours = load_normalization(out)
    # The folder's pass sees float32 latents, the cache float16 ones: equal to float16 rounding.
    torch.testing.assert_close(ours.mean, from_cache.mean, rtol=0, atol=2e-3)
    torch.testing.assert_close(ours.std, from_cache.std, rtol=2e-3, atol=0)


def test_latent_stats_refusals(parts, cache, tmp_path):
    with pytest.raises(InputError, match="need --out FILE"):
        LatentStatsConfig(str(parts / "images"), rae_encoder=str(parts / "dino"))
    with pytest.raises(InputError, match="pass the autoencoder that encodes it"):
        LatentStatsConfig(str(parts / "images"), out=str(tmp_path / "s.safetensors"))
    with pytest.raises(InputError, match="already encoded"):
        LatentStatsConfig(str(cache), rae_encoder=str(parts / "dino"))
    with pytest.raises(InputError, match="--kind 'pixel'"):
        LatentStatsConfig(str(cache), kind="pixel")
    with pytest.raises(InputError, match="name a .safetensors file"):
        latent_stats(LatentStatsConfig(str(cache), out=str(tmp_path / "stats.pt")), progress=False)


# ---------------------------------------------------------------- training and sampling


def run_args(out, *extra):
    return ["train", "--out", out, "--model", "SiT-Ti/1", "--steps", 2, "--batch-size", 4, "--num-workers", 0,
            "--sample-every", 0, "--threads", 1, *extra]


def test_training_on_rae_latents_needs_statistics_and_names_the_command(cache, tmp_path):
    result = sit(*run_args(tmp_path / "run", "--data", cache))
    assert result.exit_code == 2 and f"sit latent-stats {cache}" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_run_records_the_latent_space_and_refuses_another(parts, cache, tmp_path):
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    latent_stats(LatentStatsConfig(str(copy)), progress=False)
    run = tmp_path / "run"
    result = sit(*run_args(run, "--data", copy, "--rae-decoder", parts / "decoder.pt", "--time-shift", "dimension",
                           "--sample-every", 2))
    assert result.exit_code == 0, result.output
    assert "time shift 0.3536 = sqrt(32*4*4/4096)" in result.output
    config = json.loads((run / "config.json").read_text())
    assert config["time_shift"] == "dimension" and config["latent_scale"] == 1.0
    assert config["rae_encoder"] == str((parts / "dino").resolve())
    assert config["latent_stats"] == str((copy / "latent_stats.safetensors").resolve())
    assert config["autoencoder"]["normalization"]["sha256"] == \
        json.loads((copy / "latents.json").read_text())["normalization"]["sha256"]
    assert Image.open(run / "grids" / "0000002.png").mode == "RGB"  # decoded by the RAE's decoder

    result = sit("sample", "--ckpt", run, "--out", tmp_path / "s", "--num", 2, "--steps", 3)
    assert result.exit_code == 0, result.output
    assert "time shift 0.3536 = sqrt(32*4*4/4096), the run's training shift" in result.output
    assert json.loads((tmp_path / "s" / "sample.json").read_text())["time_shift"] == pytest.approx(0.5 ** 1.5)
    assert np.asarray(Image.open(tmp_path / "s" / "000000.png")).shape == (32, 32, 3)

    # Other statistics for the cache, recomputed: resuming is refused, before anything is written.
    latent_stats(LatentStatsConfig(str(copy), kind="channel", overwrite=True), progress=False)
    before = (run / "config.json").read_text()
    result = sit("train", "--resume", run, "--steps", 4)
    assert result.exit_code == 2 and "statistics differ" in result.output
    assert (run / "config.json").read_text() == before
    # Statistics other than the cache's own, another encoder, another kind of autoencoder: refused.
    other = tmp_path / "other.safetensors"
    latent_stats(LatentStatsConfig(str(copy), out=str(other), kind="element"), progress=False)
    for flags, message in ((["--latent-stats", parts / "decoder.pt"], "holds others"),
                           (["--rae-encoder", parts / "images"], "whose files differ"),
                           (["--vae", parts / "dino"], "holds latents of a rae autoencoder")):
        result = sit(*run_args(tmp_path / "refused", "--data", copy, *flags))
        assert result.exit_code == 2 and message in result.output, (flags, result.output)
        assert not (tmp_path / "refused").exists()


def test_on_the_fly_rae_training_equals_training_on_its_cache(parts, cache, tmp_path):
    """The same latents, normalised alike, whether encoded per batch or read from the cache (float16 storage
    apart): the two runs' first losses agree to float16 rounding of the latents."""
    stats = tmp_path / "stats.safetensors"
    latent_stats(LatentStatsConfig(str(cache), out=str(stats)), progress=False)
    common = ["--latent-stats", stats, "--seed", 1, "--log-every", 1, "--steps", 1]
    assert sit(*run_args(tmp_path / "fly", "--data", parts / "images", "--rae-encoder", parts / "dino",
                         "--rae-patch", PATCH, "--image-size", IMAGE, *common)).exit_code == 0
    assert sit(*run_args(tmp_path / "cached", "--data", cache, *common)).exit_code == 0
    fly, cached = ((tmp_path / r / "log.csv").read_text().splitlines()[1].split(",") for r in ("fly", "cached"))
    assert float(fly[1]) == pytest.approx(float(cached[1]), rel=2e-3)
    a, b = (json.loads((tmp_path / r / "config.json").read_text())["autoencoder"] for r in ("fly", "cached"))
    keys = ("kind", "sha256", "latent_shape")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


def test_f16_vae_latents_need_statistics_and_kl_statistics_normalise(tmp_path, vae_and_images):
    from diffusers import AutoencoderKL

    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 5,
                  up_block_types=("UpDecoderBlock2D",) * 5, block_out_channels=(8,) * 5, layers_per_block=1,
                  latent_channels=32, norm_num_groups=4, sample_size=32).save_pretrained(tmp_path / "f16")
    images = vae_and_images / "images"
    result = sit(*run_args(tmp_path / "run", "--data", images, "--vae", tmp_path / "f16", "--image-size", 32))
    assert result.exit_code == 2 and "an f16 VAE's latents have no conventional scale" in result.output
    assert "sit latent-stats" in result.output
    stats = tmp_path / "f16.safetensors"
    result = sit("latent-stats", images, "--vae", tmp_path / "f16", "--image-size", 32, "--kind", "channel",
                 "--out", stats)
    assert result.exit_code == 0, result.output
    result = sit(*run_args(tmp_path / "run", "--data", images, "--vae", tmp_path / "f16", "--image-size", 32,
                           "--latent-stats", stats, "--model", "SiT-Ti/2"))
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["in_channels"], config["input_size"]) == (32, 2)
    assert config["autoencoder"]["downsampling"] == 16 and config["autoencoder"]["normalization"]["kind"] == "channel"
    ae = model_autoencoder(TrainConfig.from_dict(config))
    assert ae.normalization.kind == "channel" and ae.decode(torch.zeros(1, 32, 2, 2)).shape == (1, 3, 32, 32)


def test_an_sd_vae_cache_is_still_todays_and_records_its_vae(vae_and_images, tmp_path):
    """The SD-VAE road: the stored latents are encode(vae, x) * 0.18215 as before (bit for bit: the same
    function), and the manifest gains the autoencoder's identity, which training checks."""
    out = tmp_path / "cache"
    cache_latents(CacheConfig(str(vae_and_images / "images"), str(vae_and_images / "vae"), str(out), image_size=16,
                              batch_size=3, num_workers=0), progress=False)
    manifest = json.loads((out / "latents.json").read_text())
    assert manifest["autoencoder"]["kind"] == "kl" and manifest["autoencoder"]["downsampling"] == 2
    assert manifest["latent_scale"] == 0.18215 and manifest["normalization"] is None
    data = LatentDataset(out)
    assert data.normalization is None  # the stored latents are what the model sees
    x, _ = data.__getitems__([(1, True)])
    assert torch.equal(x, torch.from_numpy(np.load(out / "latents.npy")[1, 1]).float()[None])
    tiny_vae(tmp_path / "other-vae")  # the same architecture, other random weights
    result = sit(*run_args(tmp_path / "run", "--data", out, "--vae", tmp_path / "other-vae", "--model", "SiT-Ti/2"))
    assert result.exit_code == 2 and "whose files differ" in result.output


def test_a_model_without_a_recorded_autoencoder_names_the_flags(tmp_path):
    cfg = TrainConfig(data="external", in_channels=768, input_size=16, num_classes=10)
    with pytest.raises(InputError, match="768x16x16 latents and records no autoencoder: pass --rae-encoder"):
        model_autoencoder(cfg)
    cfg = TrainConfig(data="external", in_channels=32, input_size=16, num_classes=10)
    with pytest.raises(InputError, match="--vae FOLDER --latent-stats STATS"):
        model_autoencoder(cfg)
    assert model_autoencoder(TrainConfig(data="external", in_channels=3, input_size=16)) is None


def test_decoders_load_strictly_from_rae_files_and_refuse_others(parts, tmp_path):
    decoder = load_decoder(parts / "decoder.pt")
    assert decoder.config.patch_size == PATCH and decoder.config.num_patches == 16
    from safetensors.torch import save_file

    state = torch.load(parts / "decoder.pt", weights_only=True)
    save_file(state, tmp_path / "decoder.safetensors")
    again = load_decoder(tmp_path / "decoder.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(decoder.state_dict().values(), again.state_dict().values()))
    del state["decoder_norm.weight"]
    torch.save(state, tmp_path / "cut.pt")
    with pytest.raises(InputError, match="does not fit RAE's decoder layout"):
        load_decoder(tmp_path / "cut.pt")
    with pytest.raises(InputError, match="no RAE decoder at"):
        load_decoder(tmp_path / "missing.pt")
    with pytest.raises(InputError, match="name two autoencoders"):
        AutoencoderSpec(vae="v", rae_encoder="e").check()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs gloo")
def test_two_ranks_merge_to_the_one_process_statistics(cache, tmp_path):
    from helpers import torchrun

    torchrun("-m", "sitcli", "latent-stats", cache, "--out", tmp_path / "two.safetensors", "--batch-size", 5,
             "--device", "cpu", cwd=tmp_path)
    one = latent_stats(LatentStatsConfig(str(cache), out=str(tmp_path / "one.safetensors"), batch_size=5),
                       progress=False)
    a, b = load_normalization(one.out), load_normalization(tmp_path / "two.safetensors")
    # Rank 0 takes batches 0, 2 and rank 1 batch 1; Chan's merge is exact up to float64 rounding.
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.std, b.std, rtol=1e-6, atol=0)
    assert "(24 latents)" in b.source and not json.loads((cache / "latents.json").read_text())["normalization"]


@pytest.mark.slow
def test_eval_every_decodes_rae_samples_with_the_runs_decoder(parts, tmp_path, stand_in, one_thread):
    from sitcli.evaluate import inception

    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(inception.POOL_DIM), sigma=np.eye(inception.POOL_DIM))
    stats = tmp_path / "stats.safetensors"
    latent_stats(LatentStatsConfig("digits", out=str(stats), rae_encoder=str(parts / "dino"), rae_patch=PATCH,
                                   image_size=IMAGE, num=64), progress=False)
    result = sit(*run_args(tmp_path / "run", "--data", "digits", "--image-size", IMAGE, "--rae-encoder", parts / "dino",
                           "--rae-decoder", parts / "decoder.pt", "--latent-stats", stats, "--eval-every", 2,
                           "--eval-num", 4, "--eval-steps", 2, "--eval-ref", ref, "--sample-every", 2))
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "run" / "eval.csv").read_text().splitlines()
    assert rows[0].startswith("step,fid") and np.isfinite(float(rows[1].split(",")[1]))
    assert Image.open(tmp_path / "run" / "grids" / "0000002.png").mode == "L"  # grey digits, decoded grey
