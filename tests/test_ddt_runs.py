"""DiT^DH (sitcli/ddt.py) as a sit model: --model DiTDH-*, --head-width/--head-depth, runs that resume exactly,
RAE's stage-2 files through loading and `sit convert` (strict on RAE's names), and patch-1 SiT names."""

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from helpers import assert_same_state, final_state
from sitcli.cli import app
from sitcli.config import TrainConfig
from sitcli.ddt import DDT_models, DiTwDDTHead
from sitcli.errors import InputError
from sitcli.loading import load_model
from sitcli.models import SiT_models
from sitcli.training.presets import apply_presets

runner = CliRunner()
TRAIN = ["--data", "digits", "--batch-size", 16, "--log-every", 1, "--sample-every", 0, "--threads", 1]


def sit(*args):
    return runner.invoke(app, [str(a) for a in args])


def random_ddt(seed=0, **kw) -> DiTwDDTHead:
    """A DiTDH-Ti with every trained tensor random (adaLN-Zero would make its outputs 0)."""
    torch.manual_seed(seed)
    model = DDT_models["DiTDH-Ti"](**{"input_size": 4, "in_channels": 8, "num_classes": 3, **kw})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    return model.eval()


def test_model_names_and_head_flags_build_the_ddt():
    cfg = apply_presets(TrainConfig(data="digits", model="DiTDH-Ti", head_width=48, head_depth=3))
    cfg.check()
    cfg.in_channels, cfg.input_size, cfg.num_classes = 8, 4, 3
    model = cfg.new_model()
    assert isinstance(model, DiTwDDTHead) and len(model.blocks) == 2 + 3 and model.x_embedder.proj.out_channels == 48
    assert cfg.learn_sigma is False  # recorded as what the model is
    for bad, message in ((dict(model="SiT-Ti/4", head_width=48), "shape the DDT head of a DiT\\^DH"),
                         (dict(model="DiTDH-Ti", repa_encoder=["enc"]), "not combined with DiT\\^DH"),
                         (dict(model="DiTDH-Ti", objective="meanflow"), "needs a SiT model"),
                         (dict(model="DiTDH-Q"), "unknown model 'DiTDH-Q'"),
                         (dict(model="DiTDH-Ti", head_width=0), "--head-width 0"),
                         (dict(time_shift="wide"), "--time-shift 'wide'"),
                         (dict(time_shift=2.0, num_timesteps=10), "shifts continuous training times")):
        with pytest.raises(InputError, match=message):
            apply_presets(TrainConfig(data="digits", **bad)).check()
    assert "SiT-XL/1" in SiT_models and "SiT-Ti/1" in SiT_models  # patch 1 for coarse latents


@pytest.mark.slow
def test_a_ddt_run_resumes_bit_for_bit_and_samples(tmp_path, one_thread):
    flags = [*TRAIN, "--model", "DiTDH-Ti", "--head-width", 48, "--time-shift", 2]
    assert sit("train", *flags, "--out", tmp_path / "straight", "--steps", 4, "--ckpt-every", 2).exit_code == 0
    assert sit("train", *flags, "--out", tmp_path / "halves", "--steps", 2, "--ckpt-every", 2).exit_code == 0
    result = sit("train", "--resume", tmp_path / "halves", "--steps", 4, "--time-shift", "2")  # the same shift
    assert result.exit_code == 0, result.output
    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "halves")
    assert a[0] == b[0] == "0000004"
    assert_same_state(a[1], b[1])
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert (config["model"], config["head_width"], config["head_depth"], config["time_shift"]) == \
        ("DiTDH-Ti", 48, None, 2.0)
    assert "s_embedder.proj.weight" in load_file(tmp_path / "straight" / "checkpoints" / "0000004" / "ema.safetensors")
    result = sit("sample", "--ckpt", tmp_path / "straight", "--num", 3, "--steps", 4, "--out", tmp_path / "s")
    assert result.exit_code == 0 and "time shift 2, the run's training shift" in result.output


def test_raes_stage2_file_loads_strictly_and_converts_both_ways_bit_for_bit(tmp_path):
    model = random_ddt(seed=3)
    state = model.state_dict()
    torch.save({"ema": state, "model": state, "optimizer": {}, "epoch": 3}, tmp_path / "ep-0000003.pt")
    loaded = load_model(tmp_path / "ep-0000003.pt")
    assert loaded.checkpoint.format == "rae" and loaded.config.model == "DiTDH-Ti"
    assert loaded.config.time_shift == "dimension"  # RAE's configs all shift by sqrt(C H W / 4096)
    x, t, y = torch.randn(2, 8, 4, 4), torch.tensor([0.2, 0.7]), torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.equal(loaded.model(x, t, y), model(x, t, y))
    result = sit("convert", tmp_path / "ep-0000003.pt", tmp_path / "run", "--to", "sit")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["model"], config["in_channels"], config["time_shift"]) == ("DiTDH-Ti", 8, "dimension")
    result = sit("convert", tmp_path / "run", tmp_path / "back.pt", "--to", "rae")
    assert result.exit_code == 0, result.output
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert set(back) == {"ema", "model"} and all(torch.equal(back["ema"][k], v) for k, v in state.items())
    assert set(back["ema"]) == set(state)  # RAE's loader takes "ema" with strict=True
    # A damaged file is refused by the strict load, naming the layout.
    del state["final_layer.linear.bias"]
    torch.save(state, tmp_path / "cut.pt")
    with pytest.raises(InputError, match="does not fit the DiT\\^DH layout"):
        load_model(tmp_path / "cut.pt")
    for to in ("official", "diffusers"):
        result = sit("convert", tmp_path / "ep-0000003.pt", tmp_path / f"x-{to}", "--to", to)
        assert result.exit_code == 2 and "--to sit or --to rae only" in result.output


def test_rae_latents_without_their_autoencoder_are_refused_when_sampled(tmp_path):
    torch.save(random_ddt(seed=4, in_channels=768, input_size=2).state_dict(), tmp_path / "stage2_model.pt")
    result = sit("sample", "--ckpt", tmp_path / "stage2_model.pt", "--num", 1, "--steps", 1, "--out", tmp_path / "s")
    assert result.exit_code == 2 and "768x2x2 latents and records no autoencoder" in result.output
    assert "--rae-encoder" in result.output and "--latent-stats" in result.output
    assert not (tmp_path / "s").exists()
