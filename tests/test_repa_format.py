"""sitcli/formats/repa.py: REPA's .pt files read into sit's time, checked against REPA's own formulas.

The reference below is REPA's deterministic Euler sampler written from its equations (time s from
1 = noise to 0 = data, x <- x + (s_next - s) u(x, s)), run on a REPA-layout network that is called
in REPA's time; the converted model is sampled by sit's own Euler in sit's time.
"""

import math

import pytest
import torch

from sitcli.sample_config import SampleConfig
from sitcli.convert import ConvertConfig, convert
from sitcli.loading import load_model
from sitcli.sample import sample
from sitcli.transport import Transport
from sitcli.transport.samplers import sample_ode
from helpers import repa_file


def repa_euler(u, x, y, steps):
    s = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    x = x.double()
    for s_cur, s_next in zip(s[:-1], s[1:]):
        with torch.no_grad():
            d = u(x.float(), torch.full((x.shape[0],), float(s_cur)), y).double()
        x = x + (s_next - s_cur) * d
    return x


@pytest.mark.parametrize("path_type, interpolant", [("linear", "linear"), ("cosine", "gvp")])
def test_converted_model_is_minus_u_at_one_minus_t_and_samples_like_repas_euler(
    tmp_path, path_type, interpolant, one_thread
):
    path, u = repa_file(tmp_path, path_type)
    loaded = load_model(path, num_heads=2)
    assert loaded.transport.interpolant.name == interpolant and loaded.checkpoint.format == "repa"
    assert not hasattr(loaded.model, "projectors")
    x, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 3, 5])
    t = torch.tensor([0.0, 0.3, 0.95])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x, t, y), -u(x, 1 - t, y), rtol=1e-4, atol=2e-5)
    if path_type == "linear":
        got, nfe = sample_ode(loaded.transport, loaded.model, x, method="euler", steps=8, model_kwargs={"y": y})
        want = repa_euler(u, x, y, 8)
        assert nfe == 8
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=5e-5)


def test_repa_paths_are_sits_interpolants_in_flipped_time():
    x, eps, s = torch.randn(4, 2), torch.randn(4, 2), torch.tensor([0.1, 0.4, 0.6, 0.9])
    linear, gvp = Transport("linear").interpolant, Transport("gvp").interpolant
    torch.testing.assert_close(linear.interpolate(x, eps, 1 - s), (1 - s)[:, None] * x + s[:, None] * eps)
    c, n = torch.cos(math.pi * s / 2)[:, None], torch.sin(math.pi * s / 2)[:, None]
    torch.testing.assert_close(gvp.interpolate(x, eps, 1 - s), c * x + n * eps)


TI = dict(hidden_size=96, num_heads=4, depth=4)  # SiT-Ti/2's layout: a sit run names its model from the table


def test_repa_checkpoint_converts_without_projectors_and_back(tmp_path, one_thread):
    path, _ = repa_file(tmp_path, model="SiT-Ti/2", **TI)
    convert(ConvertConfig(path, tmp_path / "run", dst_format="sit"))
    assert load_model(tmp_path / "run").transport.interpolant.name == "linear"
    official = tmp_path / "official.pt"
    convert(ConvertConfig(path, official, dst_format="official"))
    exported = torch.load(official, weights_only=True)
    assert not any(k.startswith("projectors.") for k in exported)
    # Back in as an official SiT file, it is the sit-time model: no second flip.
    again = load_model(official, src_format="official")
    first = load_model(path)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([0.2, 0.7]), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.equal(again.model(x, t, y), first.model(x, t, y))


def test_sit_sample_reads_a_repa_file(tmp_path, one_thread):
    path, _ = repa_file(tmp_path, model="SiT-Ti/2", in_channels=3, **TI)  # pixels: no VAE needed
    sample(SampleConfig(ckpt=str(path), out=str(tmp_path / "s"), num=2, batch_size=2, steps=2), progress=False)
    assert len(list((tmp_path / "s").glob("*.png"))) == 2
