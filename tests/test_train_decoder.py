"""sitcli/training/decoder.py (`sit train-decoder`): an RAE decoder trained behind a tiny random DINOv2 on the
digits; exact resume with the GAN term on, the LPIPS term from local weights, the rFID of reconstructions
through `sit fid`'s library, and the run used as --rae-decoder."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from helpers import assert_same_state, dinov2_folder, final_state
from sitcli.cli import app
from sitcli.errors import InputError
from sitcli.latent_space import load_decoder
from sitcli.training.decoder import DecoderTrainConfig, PatchDiscriminator, train_decoder

runner = CliRunner()
COMMON = ["--image-size", 32, "--rae-patch", 8, "--decoder-size", "ViT-Ti", "--batch-size", 16, "--log-every", 1,
          "--threads", 1]


def sit(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    path = tmp_path_factory.mktemp("decoder") / "dino"
    dinov2_folder(path, registers=4)
    return path


def log_rows(run):
    """log.csv without its timing columns."""
    lines = (run / "log.csv").read_text().splitlines()
    return [line.split(",")[:-3] for line in lines]


@pytest.mark.slow
def test_resume_is_exact_with_noise_and_the_gan_term(dino, tmp_path, one_thread):
    flags = ["--rae-encoder", dino, *COMMON, "--gan", "patch", "--gan-start", 1, "--disc-start", 1]
    assert sit("train-decoder", *flags, "--out", tmp_path / "straight", "--steps", 4, "--ckpt-every", 2).exit_code == 0
    result = sit("train-decoder", *flags, "--out", tmp_path / "halves", "--steps", 2, "--ckpt-every", 2)
    assert result.exit_code == 0, result.output
    result = sit("train-decoder", "--resume", tmp_path / "halves", "--steps", 4)
    assert result.exit_code == 0, result.output
    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "halves")
    assert a[0] == b[0] == "0000004"
    assert_same_state(a[1], b[1])
    for key in ("discriminator", "disc_optimizer"):
        assert a[1]["optimizer"][key].keys() == b[1]["optimizer"][key].keys()
    da, db = a[1]["optimizer"]["discriminator"], b[1]["optimizer"]["discriminator"]
    assert all(torch.equal(da[k], db[k]) for k in da)
    rows = log_rows(tmp_path / "straight")
    assert rows == log_rows(tmp_path / "halves") and len(rows) == 5
    assert rows[0][:6] == ["step", "loss", "loss_l1", "loss_lpips", "loss_gan", "loss_disc"]
    gan, disc = ([float(r[k]) for r in rows[2:]] for k in (4, 5))
    assert all(g != 0 for g in gan) and max(disc) > 0  # both adversarial terms ran from step 2
    result = sit("train-decoder", "--resume", tmp_path / "halves", "--steps", 6, "--decoder-size", "ViT-B")
    assert result.exit_code == 2 and "a resumed run keeps its settings" in result.output


def test_lpips_term_from_local_weights_and_the_run_as_a_decoder(dino, tmp_path, one_thread):
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    lpips = tmp_path / "lpips"
    lpips.mkdir()
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()},
               lpips / "vgg16-397923af.pth")
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) * 0.1 for k, c in enumerate((64, 128, 256, 512, 512))},
               lpips / "vgg.pth")
    cfg = DecoderTrainConfig(rae_encoder=str(dino), out=str(tmp_path / "run"), image_size=32, rae_patch=8,
                             decoder_size="ViT-Ti", batch_size=16, steps=1, log_every=1, lpips=str(lpips),
                             lpips_weight=0.5)
    result = train_decoder(cfg, progress=False)
    assert result.step == 1 and not result.interrupted
    row = dict(zip(*(line.split(",") for line in (tmp_path / "run" / "log.csv").read_text().splitlines())))
    assert float(row["loss_lpips"]) > 0
    assert float(row["loss"]) == pytest.approx(float(row["loss_l1"]) + 0.5 * float(row["loss_lpips"]), rel=1e-5)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["decoder"]["decoder_hidden_size"] == 64 and config["decoder"]["patch_size"] == 8
    decoder = load_decoder(tmp_path / "run")  # the EMA weights of the newest checkpoint, in RAE's names
    from safetensors.torch import load_file

    ema = load_file(tmp_path / "run" / "checkpoints" / "0000001" / "ema.safetensors")
    assert all(torch.equal(decoder.state_dict()[k], v) for k, v in ema.items())


@pytest.mark.slow
def test_rfid_is_sit_fids_fid_of_the_reconstructions(dino, tmp_path, stand_in, one_thread):
    """The rFID logged equals `sit fid` of the reference images and the EMA decoder's reconstructions written
    as PNGs (the same 8-bit images, the same features)."""
    from sitcli.autoencoder.rae import RAE, load_rae_encoder
    from sitcli.data import DigitsDataset, to_uint8
    from sitcli.evaluate import FidConfig, evaluate

    result = train_decoder(DecoderTrainConfig(rae_encoder=str(dino), out=str(tmp_path / "run"), image_size=32,
                                              rae_patch=8, decoder_size="ViT-Ti", batch_size=16, steps=2, log_every=1,
                                              eval_every=2, eval_num=24), progress=False)
    rfid = result.evaluation["rfid"]
    assert np.isfinite(rfid) and rfid > 0 and 0 < result.evaluation["l1"] < 1 and result.evaluation["psnr"] > 0
    eval_csv = (tmp_path / "run" / "eval.csv").read_text().splitlines()
    assert eval_csv[0] == "step,rfid,l1,psnr,eval_s" and eval_csv[1].startswith("2,")
    images = DigitsDataset(32).x[:24]
    rae = RAE(load_rae_encoder(dino, 32, 8), load_decoder(tmp_path / "run"), image_channels=1)
    recon = rae.decode_raw(rae.encoder.features(images))
    for name, x in (("real", images), ("recon", recon)):
        (tmp_path / name).mkdir()
        for i, u8 in enumerate(to_uint8(x).numpy()):
            Image.fromarray(u8[..., 0]).save(tmp_path / name / f"{i:03d}.png")
    fid = evaluate(FidConfig(str(tmp_path / "real"), str(tmp_path / "recon"), metrics="fid", num_workers=0),
                   progress=False).metrics["fid"]
    assert rfid == pytest.approx(fid, rel=1e-6)


def test_settings_are_refused_before_anything_is_written(dino, tmp_path):
    for bad, message in ((dict(gan="dino"), "RAE's DINO discriminator is not built here"),
                         (dict(decoder_size="ViT-H"), "--decoder-size 'ViT-H'"),
                         (dict(image_size=30), "not a multiple of --rae-patch 8"),
                         (dict(steps=2, epochs=1), "not both"),
                         (dict(noise_tau=-1.0), "--noise-tau -1.0")):
        with pytest.raises(InputError, match=message):
            DecoderTrainConfig(rae_encoder=str(dino), rae_patch=8, **{"image_size": 32, **bad})
    result = sit("train-decoder", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "needs --rae-encoder" in result.output and not (tmp_path / "x").exists()


def test_patch_discriminator_gives_patch_logits_for_small_and_large_images():
    disc = PatchDiscriminator(3)
    assert disc(torch.zeros(2, 3, 256, 256)).shape == (2, 1, 30, 30)  # taming's 70x70 PatchGAN map at 256
    assert disc(torch.zeros(2, 3, 16, 16)).shape == (2, 1, 2, 2)
