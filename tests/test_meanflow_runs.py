"""Mean-flow runs end to end: SiT's second time, the JVP through it, exact resume, bf16, sampling,
conversion, and the refusals of settings that do not fit the objective."""


import json

import pytest
import torch
from typer.testing import CliRunner

from sitcli.cli import app
from sitcli.config import TrainConfig
from sitcli.sample_config import SampleConfig
from sitcli.errors import InputError
from sitcli.formats.architecture import infer_architecture
from sitcli.loading import load_model
from sitcli.models import SiT
from sitcli.sample import sample
from sitcli.training import resume_config, train
from sitcli.transport import meanflow
from helpers import assert_same_state, final_state

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
TINY = dict(data="digits", model="SiT-Ti/4", batch_size=16, lr=1e-3, log_every=2, ckpt_every=2, sample_every=0,
            objective="meanflow")


def tiny_sit(**kw):
    return SiT(input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=2, num_heads=2, num_classes=10, **kw)


def test_an_ordinary_sit_is_unchanged_and_a_mean_flow_sit_adds_only_its_second_time():
    torch.manual_seed(0)
    plain = tiny_sit()
    torch.manual_seed(0)
    mean_flow = tiny_sit(mean_flow=True)
    extra = set(mean_flow.state_dict()) - set(plain.state_dict())
    assert extra == {f"r_embedder.mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    assert "mean_flow" not in infer_architecture(plain.state_dict(), num_heads=2)
    assert infer_architecture(mean_flow.state_dict(), num_heads=2)["mean_flow"] is True
    with torch.no_grad():
        for p in mean_flow.parameters():
            p.add_(0.05 * torch.randn_like(p))  # leave adaLN-Zero's zero init
    x, t, y = torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([1, 2, 10])
    assert torch.equal(mean_flow.eval()(x, t, y), mean_flow(x, t, y, r=t))  # r = None is u(z, t, t)
    assert not torch.allclose(mean_flow(x, t, y, r=t), mean_flow(x, t, y, r=(t + 0.3).clamp(max=1)))
    with pytest.raises(ValueError, match="mean-flow"):
        plain(x, t, y, r=t)


def test_the_jvp_through_sit_matches_central_differences():
    torch.manual_seed(0)
    model = tiny_sit(mean_flow=True).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, t, r, y = (
        torch.randn(2, 1, 8, 8, dtype=torch.float64),
        torch.tensor([0.2, 0.5]).double(),
        torch.tensor([0.6, 0.9]).double(),
        torch.tensor([3, 4]),
    )
    v = torch.randn_like(x)
    u = lambda z, tt, rr: model(z, tt, y, r=rr)  # noqa: E731
    _, du_dt = meanflow.total_derivative(u, x, t, r, v)
    with torch.no_grad(), meanflow.jvp_math_attention():  # CPU flash attention has no forward-mode derivative
        # In z alone the network is float64 throughout: differences with h = 1e-5 are exact to ~1e-9.
        _, du_dz = torch.func.jvp(u, (x, t, r), (v, torch.zeros_like(t), torch.zeros_like(r)))
        fd_z = (u(x + 1e-5 * v, t, r) - u(x - 1e-5 * v, t, r)) / 2e-5
        # The time embedding is computed in float32 (models.TimestepEmbedder), so along t the differences
        # carry float32 round-off / h: h = 1e-3 leaves ~1e-5.
        h = 1e-3
        fd = (u(x + h * v, t + h, r) - u(x - h * v, t - h, r)) / (2 * h)
    assert (du_dz - fd_z).abs().max() < 1e-8 * (1 + fd_z.abs().max()), (du_dz - fd_z).abs().max()
    assert (du_dt - fd).abs().max() < 1e-4 * (1 + fd.abs().max()), (du_dt - fd).abs().max()
    assert (du_dt - du_dz).abs().max() > 1e-3  # the time tangent counts


@pytest.mark.slow
def test_resume_continues_a_guided_mean_flow_run_exactly(tmp_path):
    kw = dict(meanflow_omega=1.5, meanflow_share=0.5)
    train(TrainConfig(out=str(tmp_path / "straight"), steps=4, **TINY, **kw), progress=False)
    train(TrainConfig(out=str(tmp_path / "halves"), steps=2, **TINY, **kw), progress=False)
    train(resume_config(tmp_path / "halves", {"steps": 4}), resume=True, progress=False)
    (name_a, a), (name_b, b) = final_state(tmp_path / "straight"), final_state(tmp_path / "halves")
    assert name_a == name_b == "0000004"
    assert_same_state(a, b)
    assert "r_embedder.mlp.0.weight" in a["model"]
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert (config["objective"], config["meanflow_omega"], config["meanflow_share"]) == ("meanflow", 1.5, 0.5)


def test_bf16_mean_flow_training_is_finite(tmp_path):
    result = train(TrainConfig(out=str(tmp_path / "bf16"), steps=2, precision="bf16", **TINY), progress=False)
    log = (tmp_path / "bf16" / "log.csv").read_text().splitlines()
    assert result.step == 2 and all(float(row.split(",")[1]) == float(row.split(",")[1]) for row in log[1:])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("meanflow") / "run"
    train(TrainConfig(out=str(out), steps=2, **TINY), progress=False)
    return out


def test_sampling_a_mean_flow_run_jumps_once_by_default(run, tmp_path):
    result = runner.invoke(app, ["sample", "--ckpt", str(run), "--out", str(tmp_path / "s"), "--num", "4"])
    assert result.exit_code == 0, result.output
    assert "NFE per sample 1.0" in result.output.replace("\n", " ")
    recorded = json.loads((tmp_path / "s" / "sample.json").read_text())
    assert (recorded["sampler"], recorded["method"], recorded["steps"]) == ("meanflow", "jump", 1)
    two = sample(
        SampleConfig(ckpt=str(run), out=str(tmp_path / "two"), num=4, sampler="meanflow", steps=2), progress=False
    )
    ode = sample(SampleConfig(ckpt=str(run), out=str(tmp_path / "ode"), num=4, method="euler", steps=3), progress=False)
    assert (two.nfe_per_sample, ode.nfe_per_sample) == (2, 3)  # the ODE runs u(z, t, t), the model's velocity
    loaded = load_model(run)
    assert loaded.checkpoint.arch["mean_flow"] and loaded.config.objective == "meanflow"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--atol", "1e-3"], "does not apply to the mean-flow sampler"),
        (["--sampler", "meanflow", "--spacing", "cosine"], "does not apply to the mean-flow sampler"),
        (["--sampler", "meanflow", "--method", "adams"], "unknown MEANFLOW method"),
    ],
)
def test_sampler_flags_that_do_not_apply_are_refused_before_writing(run, tmp_path, args, message):
    result = runner.invoke(app, ["sample", "--ckpt", str(run), "--out", str(tmp_path / "s"), *args])
    assert result.exit_code == 2 and message in result.output.replace("\n", " "), result.output
    assert not (tmp_path / "s").exists()


def test_a_flow_run_refuses_the_mean_flow_sampler(tmp_path):
    train(TrainConfig(out=str(tmp_path / "flow"), steps=1, **{**TINY, "objective": "flow"}), progress=False)
    with pytest.raises(InputError, match="needs a mean-flow model"):
        sample(SampleConfig(ckpt=str(tmp_path / "flow"), out=str(tmp_path / "s"), sampler="meanflow"), progress=False)
    assert not (tmp_path / "s").exists()


def test_convert_round_trips_to_sit_and_refuses_the_others(run, tmp_path):
    result = runner.invoke(app, ["convert", str(run), str(tmp_path / "copy"), "--to", "sit"])
    assert result.exit_code == 0 and "mean flow" in result.output, result.output
    a, b = load_model(run), load_model(tmp_path / "copy")
    assert b.config.objective == "meanflow"
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key])
    for to in ("official", "diffusers"):
        result = runner.invoke(app, ["convert", str(run), str(tmp_path / f"x-{to}"), "--to", to])
        assert result.exit_code == 2 and "converts --to sit only" in result.output.replace("\n", " "), result.output
        assert not (tmp_path / f"x-{to}").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--objective", "meanflow", "--prediction", "score"], "predicts the average velocity"),
        (["--objective", "meanflow", "--num-timesteps", "100"], "continuous time"),
        (["--objective", "meanflow", "--interpolant", "vp"], "linear or gvp"),
        (["--objective", "meanflow", "--loss-weight", "velocity"], "adaptive weight"),
        (
            ["--objective", "meanflow", "--meanflow-share", "1.5"],
            "--meanflow-share 1.5: pass a finite number in [0, 1]",
        ),
        (["--objective", "meanflow", "--meanflow-c", "0"], "--meanflow-c 0.0: pass a finite number > 0"),
        (["--objective", "meanflow", "--meanflow-p", "-1"], "--meanflow-p -1.0: pass a finite number >= 0"),
        (["--objective", "meanflow", "--meanflow-omega", "0.5"], "--meanflow-omega 0.5: pass a finite number >= 1"),
        (["--objective", "meanflow", "--meanflow-omega", "2", "--class-dropout-prob", "0"], "--class-dropout-prob > 0"),
        (["--meanflow-omega", "2"], "add --objective meanflow"),
    ],
)
def test_train_refuses_combinations_that_make_no_sense_before_writing(tmp_path, flags, message):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--steps", "1", *flags])
    assert result.exit_code == 2 and message in result.output.replace("\n", " "), result.output
    assert not (tmp_path / "r").exists()
