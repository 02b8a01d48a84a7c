"""sitcli/nll.py and `sit nll`: bits/dim through the ODE likelihood with uniform dequantization."""


import math

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from sitcli.cli import app
from sitcli.data import DigitsDataset
from sitcli.errors import InputError
from sitcli.models import SiT_models
from sitcli.nll import bits_per_dim, dequantize, NllConfig, nll
from sitcli.config import TrainConfig
from sitcli.training import train


def test_dequantize_stays_inside_the_pixel_bins():
    x = torch.tensor([-1.0, 1.0, 0.0039215686])  # pixels 0, 255, 128
    u = (dequantize(x.expand(1000, 3)) + 1) * 128  # back to the 0..256 scale
    assert (u[:, 0] >= 0).all() and (u[:, 0] < 1).all()
    assert (u[:, 1] >= 255).all() and (u[:, 1] < 256).all()
    assert (u[:, 2] >= 128).all() and (u[:, 2] < 129).all()


def test_untrained_model_gives_the_gaussian_prior_exactly(tmp_path):
    # adaLN-Zero: a fresh SiT outputs 0, so the flow is the identity and log p(x) = log N(x; 0, I).
    model = SiT_models["SiT-Ti/4"](input_size=8, in_channels=1, num_classes=10)
    save_file(model.state_dict(), tmp_path / "zero.safetensors")
    # Hutchinson's estimate of the divergence of a zero field is exactly 0 too, and cheap.
    result = nll(
        NllConfig(
            str(tmp_path / "zero.safetensors"),
            data="digits",
            num=6,
            batch_size=6,
            method="euler",
            steps=2,
            divergence="hutchinson",
            model="SiT-Ti/4",
        ),
        progress=False,
        device="cpu",
    )
    g = torch.Generator().manual_seed(0)
    data = DigitsDataset()
    order = torch.randperm(len(data), generator=g)[:6].tolist()
    x = dequantize(data.__getitems__([(i, False) for i in order])[0], g).flatten(1).double()
    log_p = -0.5 * (x**2).sum(1) - 0.5 * 64 * math.log(2 * math.pi)
    assert result.num == 6 and result.dims == 64
    assert result.bits_per_dim == pytest.approx(bits_per_dim(log_p, 64).mean().item(), abs=1e-4)


@pytest.mark.slow
def test_cli_scores_a_run(tmp_path):
    run = tmp_path / "run"
    train(
        TrainConfig(data="digits", out=str(run), model="SiT-Ti/4", batch_size=16, steps=2, sample_every=0),
        progress=False,
    )
    result = CliRunner().invoke(
        app, ["nll", "--ckpt", str(run), "--num-samples", "4", "--method", "euler", "--steps", "3"]
    )
    assert result.exit_code == 0, result.output
    value = float(result.stdout.split()[0])
    assert 0 < value < 20 and "bits/dim over 4 images" in result.output


def test_latent_models_are_refused(tmp_path):
    model = SiT_models["SiT-Ti/4"](input_size=8, in_channels=4, num_classes=10)
    save_file(model.state_dict(), tmp_path / "latent.safetensors")
    with pytest.raises(InputError, match="pixel-space"):
        nll(NllConfig(str(tmp_path / "latent.safetensors"), data="digits", model="SiT-Ti/4"), progress=False)
