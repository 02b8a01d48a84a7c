"""The REPA alignment term (training/losses.AlignmentLoss) and training with it: tiny random encoders."""

import copy
import shutil

import pytest
import torch
from transformers import ViTConfig, ViTModel

from sitcli import runs
from sitcli.sample_config import SampleConfig
from sitcli.convert import ConvertConfig, convert
from sitcli.encoders import load_encoder, match_grid
from sitcli.errors import InputError
from sitcli.loading import load_model
from sitcli.models import SiT
from sitcli.sample import sample
from sitcli.training import resume_config, train
from sitcli.training.losses import AlignmentLoss, StepBatch
from helpers import SMALL, assert_same_state, dinov2_folder, final_state, hub_file, tiny


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    dinov2_folder(root / "dino")
    _, hub = hub_file(root)
    torch.manual_seed(3)
    ViTModel(ViTConfig(**SMALL, image_size=20), add_pooling_layer=False).save_pretrained(root / "vit")
    return {"dino": str(root / "dino"), "hub": str(hub), "vit": str(root / "vit")}


def tiny_sit(widths):
    torch.manual_seed(0)
    return SiT(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=3, num_heads=2, num_classes=10,
               projector_dims=widths, projector_hidden=16)


def batch_for(model, depth, images):
    t = torch.rand(images.shape[0])
    out, tokens = model(images, t, torch.zeros(images.shape[0], dtype=torch.long), return_tokens=(depth,))
    return StepBatch(images, torch.randn_like(images), t, images, None, out, tokens)


def test_term_is_the_negative_cosine_by_hand(encoders, one_thread):
    encs = [load_encoder(encoders["dino"]), load_encoder(encoders["hub"])]
    model = tiny_sit((32, 64))
    term = AlignmentLoss(encs, model.projectors, depth=2, weight=0.5, grid=4)
    assert term.notes() == [] and term.token_depths == (2,)
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    batch = batch_for(model, 2, images)
    got = term(batch)
    want = torch.zeros(3, dtype=torch.float64)
    h = batch.tokens[2].double()
    for enc, proj in zip(encs, model.projectors):
        z = copy.deepcopy(proj).double()(h)
        f = enc.features(images, grid=4).double()
        for b in range(3):
            for n in range(16):
                want[b] -= torch.dot(z[b, n], f[b, n]) / (z[b, n].norm() * f[b, n].norm()) / 16 / 2
    assert got.shape == (3,)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_gradients_reach_projectors_and_backbone_but_not_the_encoder(encoders, one_thread):
    enc = load_encoder(encoders["dino"])
    before = {k: v.clone() for k, v in enc.module.state_dict().items()}
    model = tiny_sit((32,))
    term = AlignmentLoss([enc], model.projectors, depth=1, weight=1.0, grid=4)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(2):
        term(batch_for(model, 1, torch.rand(2, 1, 8, 8) * 2 - 1)).mean().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projectors.parameters())
        assert model.x_embedder.proj.weight.grad.abs().sum() > 0  # (adaLN-Zero: the blocks start as identities)
        assert model.blocks[1].attn.qkv.weight.grad is None and model.final_layer.linear.weight.grad is None
        opt.step()
        opt.zero_grad()
    assert all(p.grad is None for p in enc.module.parameters())
    assert all(torch.equal(before[k], v) for k, v in enc.module.state_dict().items())


def test_finite_and_close_under_bf16_autocast(encoders, one_thread):
    enc = load_encoder(encoders["dino"])
    model = tiny_sit((32,))
    term = AlignmentLoss([enc], model.projectors, depth=2, weight=1.0, grid=4)
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    torch.manual_seed(5)
    full = term(batch_for(model, 2, images))
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = term(batch_for(model, 2, images))
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    torch.testing.assert_close(half, full, atol=0.03, rtol=0)


def test_a_fixed_size_encoder_grid_is_interpolated_to_sits(encoders, one_thread):
    enc = load_encoder(encoders["vit"])  # 20 pixels, patch 4: a 5x5 grid; SiT's is 4x4
    model = tiny_sit((32,))
    term = AlignmentLoss([enc], model.projectors, depth=1, weight=1.0, grid=4)
    assert len(term.notes()) == 1 and "5x5 token grid" in term.notes()[0] and "interpolated" in term.notes()[0]
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    batch = batch_for(model, 1, images)
    target = torch.nn.functional.normalize(match_grid(enc.features(images, 4), 4), dim=-1)
    z = torch.nn.functional.normalize(model.projectors[0](batch.tokens[1]), dim=-1)
    torch.testing.assert_close(term(batch), -(z * target).sum(-1).mean(-1))


@pytest.mark.slow
def test_weight_zero_trains_exactly_the_plain_weights(tmp_path, encoders, one_thread):
    train(tiny(tmp_path, "plain", steps=3), progress=False)
    train(tiny(tmp_path, "zero", steps=3, repa_encoder=[encoders["dino"]], repa_weight=0.0, repa_projector_dim=16),
          progress=False)
    _, plain = final_state(tmp_path / "plain")
    _, zero = final_state(tmp_path / "zero")
    for key in ("model", "ema"):
        assert any(k.startswith("projectors.") for k in zero[key])
        backbone = {k: v for k, v in zero[key].items() if not k.startswith("projectors.")}
        assert backbone.keys() == plain[key].keys()
        assert all(torch.equal(v, plain[key][k]) for k, v in backbone.items())


def test_resume_with_the_term_is_exact_and_the_run_samples_and_converts(tmp_path, encoders, one_thread):
    repa = dict(repa_encoder=[encoders["dino"], encoders["hub"]], repa_projector_dim=16, repa_depth=2)
    train(tiny(tmp_path, "straight", steps=4, **repa), progress=False)
    train(tiny(tmp_path, "halves", steps=2, **repa), progress=False)
    train(resume_config(tmp_path / "halves", {"steps": 4}), resume=True, progress=False)
    _, a = final_state(tmp_path / "straight")
    assert_same_state(a, final_state(tmp_path / "halves")[1])
    assert {"projectors.0.0.weight", "projectors.1.4.weight"} <= set(a["model"])
    header = (tmp_path / "straight" / "log.csv").read_text().splitlines()[0]
    assert "loss_alignment" in header and "loss_regression" in header
    assert runs.read_config(tmp_path / "straight")["repa_encoder"] == [encoders["dino"], encoders["hub"]]

    loaded = load_model(tmp_path / "straight")  # the projectors stay behind: a plain SiT
    assert not hasattr(loaded.model, "projectors")
    convert(ConvertConfig(tmp_path / "straight", tmp_path / "official.pt", dst_format="official"))
    exported = torch.load(tmp_path / "official.pt", weights_only=True)
    assert exported.keys() == {k for k in a["ema"] if not k.startswith("projectors.")}
    sample(SampleConfig(ckpt=str(tmp_path / "straight"), out=str(tmp_path / "s"), num=2, batch_size=2, steps=2),
           progress=False)
    assert len(list((tmp_path / "s").glob("*.png"))) == 2


def test_bad_repa_settings_are_refused_before_anything_is_written(tmp_path, encoders):
    with pytest.raises(InputError, match="does not exist: download"):
        train(tiny(tmp_path, "a", steps=1, repa_encoder=[str(tmp_path / "nothing")]), progress=False)
    with pytest.raises(InputError, match="--repa-depth 9 must name a block of SiT-Ti/4: 1..4"):
        train(tiny(tmp_path, "b", steps=1, repa_encoder=[encoders["dino"]], repa_depth=9), progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_encoder_path_with_a_comma_is_one_path(tmp_path, encoders, one_thread):
    from typer.testing import CliRunner

    from sitcli.cli import app

    comma = tmp_path / "dinov2,small"  # a folder whose name holds a comma
    shutil.copytree(encoders["dino"], comma)
    flags = ["--steps", "1", "--batch-size", "8", "--sample-every", "0", "--repa-projector-dim", "8",
             "--repa-depth", "2"]
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--out",
            str(tmp_path / "run"),
            "--repa-encoder",
            str(comma),
            "--repa-encoder",
            encoders["hub"],
            *flags,
        ],
    )
    assert result.exit_code == 0, result.output
    assert runs.read_config(tmp_path / "run")["repa_encoder"] == [str(comma), encoders["hub"]]
    # A comma list is not split: it names no file, and the error says to repeat the flag.
    result = CliRunner().invoke(
        app,
        ["train", "--out", str(tmp_path / "run2"), "--repa-encoder", f"{encoders['dino']},{encoders['hub']}", *flags],
    )
    assert result.exit_code == 2 and "repeat --repa-encoder" in result.output and not (tmp_path / "run2").exists()
