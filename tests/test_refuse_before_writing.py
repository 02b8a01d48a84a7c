"""Refuse before writing, everywhere: a setting that can only fail later is refused where it is defined (the
config's domains, the time grids built up front), and a sampling call that fails before its first image leaves
the folder as it found it, so the corrected command into the same --out simply works.

Cases: `sit sample` with --cfg-scale 1e308, --guidance-scale 1e308, --w-norm 1e308 or --time-shift 1e308 / 1e-300
(refused before sample.json); a first batch that comes out NaN (nothing left; the corrected command works, and an
existing folder keeps its sample.json and labels.csv byte for byte); a mean-flow model with --cfg-scale 2 (guided,
exactly u + s (c - u)) or with a flow model as its guide (refused before sample.json); `sit train
--num-timesteps 10 --sample-every 10` (works: the EMA grid takes the steps that fit) and with --eval-every
(refused before config.json, naming --eval-steps)."""


import pytest
import torch
from typer.testing import CliRunner

import sitcli.sample
from sitcli.cli import app
from sitcli.config import TrainConfig
from sitcli.guidance import ClassifierFreeGuidance
from sitcli.training import train

from helpers import snapshot

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def sit(*args):
    return runner.invoke(app, [str(a) for a in args])



def refused(result, *words: str) -> str:
    """The one error line (a progress bar drawn before a failure may precede it), exit 2, no traceback."""
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("sample ")]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("error: ") and all(w in lines[0] for w in words), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def mean_flow(tmp_path_factory):
    run = tmp_path_factory.mktemp("meanflow") / "run"
    train(TrainConfig(data="digits", out=str(run), model="SiT-Ti/4", batch_size=16, steps=2, sample_every=0,
                      objective="meanflow"), progress=False)
    return run


@pytest.mark.parametrize("flags", [
    ["--cfg-scale", "1e308"],
    ["--guidance-model", "{run}", "--guidance-scale", "1e308"],
    ["--sampler", "sde", "--w-norm", "1e308"],
    ["--time-shift", "1e308"],
    ["--time-shift", "1e-300"],
])
def test_extreme_scales_are_refused_before_sample_json(tiny_run, tmp_path, flags):
    flags = [f.format(run=tiny_run) for f in flags]
    refused(sit("sample", "--ckpt", tiny_run, "--out", tmp_path / "s", "--num", 2, "--steps", 4, *flags), flags[-2])
    assert list(tmp_path.iterdir()) == []


def test_a_first_batch_that_fails_leaves_nothing_and_the_corrected_command_works(tiny_run, tmp_path, monkeypatch):
    real = sitcli.sample.sample_ode

    def overflowing(*args, **kwargs):
        x, nfe = real(*args, **kwargs)
        return x * float("inf"), nfe

    out = tmp_path / "s"
    monkeypatch.setattr(sitcli.sample, "sample_ode", overflowing)
    refused(sit("sample", "--ckpt", tiny_run, "--out", out, "--num", 2, "--steps", 2, "--cfg-scale", 3), "NaN or inf",
            "run the command again")
    assert not out.exists()
    monkeypatch.setattr(sitcli.sample, "sample_ode", real)
    assert sit("sample", "--ckpt", tiny_run, "--out", out, "--num", 2, "--steps", 2).exit_code == 0
    before = snapshot(out)
    monkeypatch.setattr(sitcli.sample, "sample_ode", overflowing)  # extending the folder fails at its first batch
    refused(sit("sample", "--ckpt", tiny_run, "--out", out, "--num", 4, "--steps", 2, "--w-norm", 2), "NaN or inf")
    assert snapshot(out) == before  # sample.json (its w_norm, unused by the ODE) and labels.csv as they were
    monkeypatch.setattr(sitcli.sample, "sample_ode", real)
    assert sit("sample", "--ckpt", tiny_run, "--out", out, "--num", 4, "--steps", 2).exit_code == 0


def test_classifier_free_guidance_of_a_mean_flow_model_is_exact():
    calls = []

    def u(x, t, y=None, r=None):  # an average velocity that depends on every input, row by row
        calls.append(len(x))
        return x * (1 + t + 2 * r)[:, None] + y[:, None].float()

    x, t, r, y = torch.randn(3, 4), torch.rand(3), torch.rand(3), torch.tensor([1, 2, 0])
    guided = ClassifierFreeGuidance(u, 2.5, null_class=7)(x, t, y, r=r)
    cond, uncond = u(x, t, y, r=r), u(x, t, torch.full_like(y, 7), r=r)
    assert torch.allclose(guided, uncond + 2.5 * (cond - uncond)) and calls[0] == 6  # one doubled batch


def test_a_mean_flow_model_samples_with_classifier_free_guidance(mean_flow, tmp_path):
    plain = sit("sample", "--ckpt", mean_flow, "--out", tmp_path / "a", "--num", 2, "--class-labels", 3)
    guided = sit("sample", "--ckpt", mean_flow, "--out", tmp_path / "b", "--num", 2, "--class-labels", 3,
                 "--cfg-scale", 2)
    assert plain.exit_code == 0 and guided.exit_code == 0, guided.output
    assert "NFE per sample 1.0" in " ".join(guided.output.split())
    assert len(list((tmp_path / "b").glob("*.png"))) == 2  # the guidance itself: the exact test above


def test_a_mean_flow_model_with_a_flow_guide_is_refused_before_sample_json(mean_flow, tiny_run, tmp_path):
    refused(sit("sample", "--ckpt", mean_flow, "--out", tmp_path / "s", "--num", 2, "--guidance-model", tiny_run,
                "--guidance-scale", 2), "--guidance-model", "mean-flow")
    assert list(tmp_path.iterdir()) == []
    # the other way round, and with the ODE, the mean-flow model's r = t velocity serves
    result = sit("sample", "--ckpt", mean_flow, "--out", tmp_path / "ode", "--num", 2, "--sampler", "ode",
                 "--steps", 2, "--guidance-model", tiny_run, "--guidance-scale", 2)
    assert result.exit_code == 0, result.output


def test_discrete_time_with_ema_grids_trains_and_its_grid_takes_the_steps_that_fit(tmp_path):
    result = sit("train", "--out", tmp_path / "r", "--model", "SiT-Ti/4", "--batch-size", 16, "--steps", 10,
                 "--num-timesteps", 10, "--sample-every", 10)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "grids" / "0000010.png").is_file()
    assert (tmp_path / "r" / "checkpoints" / "0000010").is_dir()


def test_evaluation_steps_that_do_not_fit_discrete_time_are_refused_before_config_json(tmp_path):
    refused(sit("train", "--out", tmp_path / "r", "--model", "SiT-Ti/4", "--batch-size", 16, "--steps", 10,
                "--num-timesteps", 10, "--eval-every", 5, "--eval-ref", tmp_path / "ref.npz"),
            "--eval-steps 50", "--num-timesteps")
    assert list(tmp_path.iterdir()) == []
