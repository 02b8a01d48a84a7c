"""Few-step runs end to end: `sit train --objective dmf|imf|alphaflow --init-from CKPT`, exact resume, the settings'
refusals, sampling at 1, 2 and 4 jumps (and --omega), what the weights and config.json tell, and conversion.

The source of every fine-tuning is the session's tiny flow run (``tiny_run``), or its EMA weights saved as an
official .pt file.
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from helpers import assert_same_state, final_state, pngs, random_sit, tiny
from sitcli.cli import app
from sitcli.config import TrainConfig
from sitcli.sample_config import SampleConfig
from sitcli.errors import InputError
from sitcli.loading import load_model
from sitcli.sample import sample
from sitcli.session import session
from sitcli.training import resume_config, train
from sitcli.training.fewstep_losses import AlphaFlowLoss
from sitcli.training.prepare import prepare
from sitcli.transport import fewstep

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
# The settings of each objective in these tests: guided where the objective can be.
OBJECTIVES = {
    "dmf": dict(objective="dmf", meanflow_omega=2.0, dmf_guidance_interval=(0.3, 1.0), meanflow_share=0.5),
    "imf": dict(objective="imf", imf_omega_max=4.0, meanflow_share=0.5),
    "alphaflow": dict(objective="alphaflow", meanflow_omega=1.5, meanflow_share=0.5),
}


def sit(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def fine_tuned(tmp_path, source, objective: str, name: str | None = None, **kw) -> TrainConfig:
    """A tiny fine-tuning of ``source`` (its model size comes from the source: no --model)."""
    return tiny(tmp_path, name or objective, init_from=str(source), **{**OBJECTIVES[objective], "model": None, **kw})


def official_file(run, path):
    """The EMA weights of a sit run as the official code's raw .pt (a SiT- name tells it from DiT)."""
    torch.save(load_model(run).model.state_dict(), path)
    return path


# ----------------------------------------------------------------------------------------- --init-from


SLOW = pytest.mark.slow


@pytest.mark.parametrize("objective", [pytest.param("flow", marks=SLOW), pytest.param("meanflow", marks=SLOW), "dmf",
                                       "imf", pytest.param("alphaflow", marks=SLOW)])
def test_the_run_starts_from_the_sources_ema_weights_and_records_them(tiny_run, tmp_path, objective):
    """Model and EMA start as the source: at r = t (and omega = 1) they compute its output bit for bit."""
    settings = OBJECTIVES.get(objective, {"objective": objective})
    cfg = tiny(tmp_path, objective, steps=2, init_from=str(tiny_run), **{**settings, "model": None})
    with session("cpu") as s:
        p = prepare(cfg, False, s)
    source = load_model(tiny_run).model
    x, t, y = torch.randn(5, 1, 8, 8), torch.rand(5), torch.tensor([0, 3, 9, 10, 4])
    with torch.no_grad():
        want = source(x, t, y)
        for net in (p.model.eval(), p.ema):
            kwargs = {} if objective == "flow" else {"r": t}
            out = net(x, t, y, with_velocity=objective == "imf", **kwargs)
            assert torch.equal(out[:, :1], want)
            if objective == "imf":  # the velocity head starts as the source's last block: its output too
                assert torch.equal(out[:, 1:], want)
    assert p.model.dmf_depth == (3 if objective == "dmf" else None)  # 20 of 28 blocks scaled to SiT-Ti's 4
    config = json.loads((tmp_path / objective / "config.json").read_text())
    weights = tiny_run / "checkpoints" / "0000003" / "ema.safetensors"
    assert config["model"] == "SiT-Ti/4" and config["init_from"] == str(tiny_run)
    assert (config["init_from_format"], config["init_from_step"]) == ("sit", 3)
    assert config["init_from_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


@pytest.mark.slow
def test_an_official_pt_file_starts_a_run_and_is_recorded(tiny_run, tmp_path):
    source = official_file(tiny_run, tmp_path / "SiT-digits.pt")
    code, output = sit("train", "--out", tmp_path / "run", "--init-from", source, "--objective", "imf",
                       "--imf-omega-max", 4, "--steps", 2, "--batch-size", 16, "--sample-every", 0)
    assert code == 0, output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["init_from_format"], config["init_from_step"], config["omega_input"]) == ("official", None, True)
    assert config["init_from_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert config["velocity_head_depth"] == 1  # depth // 4


@pytest.fixture(scope="module")
def dmf_run(tiny_run, tmp_path_factory):
    """A 2-step DMF fine-tuning of the tiny flow run (read only)."""
    cfg = fine_tuned(tmp_path_factory.mktemp("dmf"), tiny_run, "dmf", steps=2)
    train(cfg, progress=False)
    return Path(cfg.out)


@pytest.mark.parametrize(
    "source, flags, message",
    [
        ("run", ["--model", "SiT-S/4"], "holds a SiT-Ti/4, not a SiT-S/4: drop --model"),
        pytest.param("run", ["--interpolant", "gvp"], "predicts velocity on the linear interpolant, this run "
                     "velocity on gvp", marks=SLOW),
        ("dit", [], "is a DiT (trained as a DDPM chain)"),
        pytest.param("few-step", [], "is a few-step model already (dmf_depth)", marks=SLOW),
        ("five", [], "has num_classes=5, the data digits gives 10"),
        pytest.param("missing", [], "does not exist", marks=SLOW),
        pytest.param("run", ["--objective", "dmf", "--dmf-depth", "5"], "--dmf-depth 5: SiT-Ti/4 has 4 blocks",
                     marks=SLOW),
    ],
)
def test_init_from_refuses_a_source_that_does_not_fit_before_writing(tiny_run, request, tmp_path, source, flags,
                                                                     message):
    five = random_sit(in_channels=1, input_size=8, patch_size=4, hidden_size=96, depth=4, num_heads=4, num_classes=5)
    paths = {"run": lambda: tiny_run, "dit": lambda: official_file(tiny_run, tmp_path / "DiT-digits.pt"),
             "few-step": lambda: request.getfixturevalue("dmf_run"), "missing": lambda: tmp_path / "missing",
             "five": lambda: torch.save(five.state_dict(), tmp_path / "SiT-five.pt") or tmp_path / "SiT-five.pt"}
    code, output = sit("train", "--out", tmp_path / "new", "--init-from", paths[source](), "--steps", 1, *flags)
    assert code == 2 and message in output, output
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_a_resume_ignores_the_source(tiny_run, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(tiny_run, source)
    train(fine_tuned(tmp_path, source, "dmf", steps=2), progress=False)
    shutil.rmtree(source)  # gone: the resume reads the run's own checkpoint
    assert train(resume_config(tmp_path / "dmf", {"steps": 4}), resume=True, progress=False).step == 4


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["dmf", "imf", "alphaflow"])
def test_resume_continues_a_fine_tuning_exactly(tiny_run, tmp_path, objective):
    """2 + 2 steps give the weights, EMA and optimiser state of 4 straight ones, bit for bit (AlphaFlow's
    schedule fixed at 4 steps, so that its alpha runs between 1 and 0 over both halves)."""
    kw = {"alphaflow_end": 4, "alphaflow_gamma": 3.0} if objective == "alphaflow" else {}
    train(fine_tuned(tmp_path, tiny_run, objective, "straight", steps=4, **kw), progress=False)
    train(fine_tuned(tmp_path, tiny_run, objective, "halves", steps=2, **kw), progress=False)
    train(resume_config(tmp_path / "halves", {"steps": 4}), resume=True, progress=False)
    (name_a, a), (name_b, b) = final_state(tmp_path / "straight"), final_state(tmp_path / "halves")
    assert name_a == name_b == "0000004"
    assert_same_state(a, b)
    source = load_model(tiny_run).model.final_layer.linear.weight
    assert not torch.equal(a["model"]["final_layer.linear.weight"], source)  # it trained


@pytest.mark.slow
def test_alphaflow_follows_the_step_and_keeps_its_schedule_when_a_run_is_extended(tiny_run, tmp_path, monkeypatch):
    told = []
    at_step = AlphaFlowLoss.at_step
    monkeypatch.setattr(AlphaFlowLoss, "at_step",
                        lambda self, step, total: (at_step(self, step, total), told.append((step, total, self.alpha))))
    train(fine_tuned(tmp_path, tiny_run, "alphaflow", steps=3, alphaflow_gamma=2.0), progress=False)
    assert json.loads((tmp_path / "alphaflow" / "config.json").read_text())["alphaflow_end"] == 3  # the run's steps
    train(resume_config(tmp_path / "alphaflow", {"steps": 5}), resume=True, progress=False)
    assert [(s, n) for s, n, _ in told] == [(0, 3), (1, 3), (2, 3), (3, 5), (4, 5)]
    want = [fewstep.alphaflow_alpha(s / 3, gamma=2.0) for s in range(5)]  # the schedule over the first 3 steps
    assert [a for _, _, a in told] == want and want[-1] == 0 and 0 < want[1] < 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dmf-depth", "2"], "--dmf-depth is a setting of Decoupled MeanFlow (--objective dmf, imf, alphaflow): "
                               "add --objective dmf"),
        (["--objective", "dmf", "--imf-omega-max", "4"], "--imf-omega-max is a setting of improved MeanFlow"),
        (["--objective", "imf", "--meanflow-omega", "2"], "--meanflow-omega is a setting of mean flows"),
        (["--objective", "meanflow", "--alphaflow-end", "9"], "add --objective alphaflow"),
        (["--objective", "meanflow", "--velocity-head-depth", "1"], "add --objective imf"),
        (["--objective", "dmf", "--dmf-depth", "9"], "--dmf-depth 9: SiT-Ti/4 has 4 blocks; pass 0..4"),
        (["--objective", "imf", "--velocity-head-depth", "5"], "--velocity-head-depth 5: SiT-Ti/4 has 4 blocks"),
        (["--objective", "dmf", "--meanflow-omega", "2", "--dmf-guidance-interval", "0.6", "0.2"], "pass LO <= HI"),
        (["--objective", "dmf", "--dmf-guidance-interval", "0.3", "1"], "pass --meanflow-omega > 1 with it"),
        (["--objective", "dmf", "--dmf-guidance-interval", "0.3", "1.5"], "--dmf-guidance-interval 1.5: pass a"),
        (["--objective", "alphaflow", "--alphaflow-start", "5", "--alphaflow-end", "5"], "must be below"),
        (["--objective", "alphaflow", "--alphaflow-start", "5"], "must be below --alphaflow-end (default: the run's"),
        (["--objective", "imf", "--imf-omega-max", "0.5"], "--imf-omega-max 0.5: pass a finite number >= 1"),
        (["--objective", "imf", "--imf-omega-max", "4", "--class-dropout-prob", "0"], "--imf-omega-max folds"),
        (["--objective", "alphaflow", "--prediction", "score"], "--objective alphaflow: the model predicts"),
        (["--objective", "dmf", "--interpolant", "vp"], "--objective dmf: jumps reach t = 1"),
        (["--objective", "flux"], "'flux' is not one of"),
    ],
)
def test_train_refuses_settings_of_other_objectives_and_bad_combinations_before_writing(tmp_path, flags, message):
    code, output = sit("train", "--out", tmp_path / "r", "--steps", 1, *flags)
    assert code == 2 and message in output, output
    assert not (tmp_path / "r").exists()


def test_the_objectives_take_their_model_forms_and_depths_from_the_model():
    from sitcli.training.presets import apply_presets

    forms = {}
    for objective, model in (("dmf", "SiT-Ti/4"), ("dmf", "SiT-XL/2"), ("imf", "SiT-Ti/4"), ("imf", "SiT-B/2"),
                             ("alphaflow", "SiT-Ti/4"), ("meanflow", "SiT-Ti/4"), ("flow", "SiT-Ti/4")):
        cfg = apply_presets(TrainConfig(data="digits", model=model, objective=objective))
        cfg.check()
        forms[objective, model] = cfg.model_form()
    assert forms["dmf", "SiT-Ti/4"] == {"dmf_depth": 3} and forms["dmf", "SiT-XL/2"] == {"dmf_depth": 20}
    assert forms["imf", "SiT-Ti/4"] == {"mean_flow": True, "velocity_head_depth": 1}
    assert forms["imf", "SiT-B/2"] == {"mean_flow": True, "velocity_head_depth": 3}
    assert forms["alphaflow", "SiT-Ti/4"] == forms["meanflow", "SiT-Ti/4"] == {"mean_flow": True}
    assert forms["flow", "SiT-Ti/4"] == {}
    cfg = apply_presets(TrainConfig(data="digits", objective="imf", imf_omega_max=8.0, dmf_depth=2))
    cfg.check()
    assert cfg.model_form() == {"dmf_depth": 2, "omega_input": True, "velocity_head_depth": 1}
    with pytest.raises(InputError, match="omega_input is set for --objective imf"):
        apply_presets(TrainConfig(data="digits", objective="dmf", omega_input=True)).check()


# ----------------------------------------------------------------------------------------- sampling, conversion


@pytest.fixture(scope="module")
def runs_(tiny_run, dmf_run, tmp_path_factory):
    """Fine-tunings of the tiny flow run, one per objective, 2 steps each (read only)."""
    root = tmp_path_factory.mktemp("fewstep")
    out = {"dmf": dmf_run}
    for objective in ("imf", "alphaflow"):
        cfg = fine_tuned(root, tiny_run, objective, steps=2)
        train(cfg, progress=False)
        out[objective] = Path(cfg.out)
    return out


FORMS = {"dmf": {"dmf_depth": 3}, "imf": {"mean_flow": True, "omega_input": True, "velocity_head_depth": 1},
         "alphaflow": {"mean_flow": True}}


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["dmf", "imf", "alphaflow"])
def test_each_form_samples_in_1_2_and_4_jumps_and_through_the_ode(runs_, tmp_path, objective):
    run = runs_[objective]
    arch = load_model(run).checkpoint.arch
    assert {k: arch[k] for k in FORMS[objective]} == FORMS[objective]  # from the keys, and config.json's dmf_depth
    for jumps in (1, 2, 4):
        code, output = sit("sample", "--ckpt", run, "--out", tmp_path / f"j{jumps}", "--num", 3, "--steps", jumps)
        assert code == 0 and f"NFE per sample {jumps}.0" in output, output
        recorded = json.loads((tmp_path / f"j{jumps}" / "sample.json").read_text())
        assert (recorded["sampler"], recorded["steps"], recorded["omega"]) == ("meanflow", jumps, None)
    ode = sample(SampleConfig(ckpt=str(run), out=str(tmp_path / "ode"), num=3, sampler="ode", method="euler", steps=3),
                 progress=False)
    assert ode.nfe_per_sample == 3  # the ODE runs u(z, t, t)
    guided = sample(SampleConfig(ckpt=str(run), out=str(tmp_path / "cfg"), num=3, steps=2, cfg_scale=2.0),
                    progress=False)
    assert guided.nfe_per_sample == 2  # classifier-free guidance of the jumps: r goes with both halves of the batch


@pytest.mark.slow
def test_omega_is_fed_to_an_omega_model_recorded_and_refused_elsewhere_before_writing(runs_, tmp_path):
    for omega in (1.0, 3.0):
        code, output = sit("sample", "--ckpt", runs_["imf"], "--out", tmp_path / f"w{omega}", "--num", 4, "--omega",
                           omega)
        assert code == 0 and "NFE per sample 1.0" in output, output
        assert json.loads((tmp_path / f"w{omega}" / "sample.json").read_text())["omega"] == omega
    model, x0 = load_model(runs_["imf"], ema=False).model, torch.randn(4, 1, 8, 8)
    with torch.no_grad():  # two steps trained the omega embedder away from its zero start: omega counts
        one, three = (model(x0, torch.zeros(4), torch.arange(4), r=torch.ones(4), omega=w) for w in (1.0, 3.0))
    assert (one - three).abs().max() > 1e-6
    for run in (runs_["dmf"], runs_["alphaflow"]):
        code, output = sit("sample", "--ckpt", run, "--out", tmp_path / "no", "--omega", 2)
        assert code == 2 and "takes omega as an input" in output, output
        assert not (tmp_path / "no").exists()


@pytest.mark.slow
def test_a_dmf_weights_file_outside_its_run_needs_dmf_depth_and_then_samples_as_the_run(runs_, tmp_path):
    shutil.copy(runs_["dmf"] / "checkpoints" / "0000002" / "ema.safetensors", tmp_path / "dmf.safetensors")
    assert "dmf_depth" not in load_model(tmp_path / "dmf.safetensors").checkpoint.arch  # the weights cannot tell
    for ckpt, extra in ((runs_["dmf"], []), (tmp_path / "dmf.safetensors", ["--dmf-depth", 3])):
        code, output = sit("sample", "--ckpt", ckpt, "--out", tmp_path / f"s{len(extra)}", "--num", 3, "--steps", 2,
                           *extra)
        assert code == 0 and "NFE per sample 2.0" in output, output
    a, b = pngs(tmp_path / "s0"), pngs(tmp_path / "s2")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    code, output = sit("sample", "--ckpt", runs_["dmf"], "--out", tmp_path / "x", "--dmf-depth", 2)
    assert code == 2 and "records dmf_depth=3: drop --dmf-depth 2" in output, output


@pytest.mark.slow
def test_a_run_whose_config_no_longer_fits_its_weights_is_refused(runs_, tmp_path):
    shutil.copytree(runs_["dmf"], tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    (tmp_path / "run" / "config.json").write_text(json.dumps({**config, "dmf_depth": None}))
    with pytest.raises(InputError, match="the run folder was changed by hand"):
        load_model(tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["dmf", "imf", "alphaflow"])
def test_convert_round_trips_each_form_to_sit_bit_for_bit_and_refuses_the_others(runs_, tmp_path, objective):
    run = runs_[objective]
    code, output = sit("convert", run, tmp_path / "copy", "--to", "sit")
    assert code == 0, output
    a, b = load_model(run), load_model(tmp_path / "copy")
    assert b.config.objective == objective and a.checkpoint.arch == b.checkpoint.arch
    assert set(a.model.state_dict()) == set(b.model.state_dict())
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    for to in ("official", "diffusers"):
        code, output = sit("convert", run, tmp_path / f"x-{to}", "--to", to)
        assert code == 2 and "is a few-step model" in output and "converts --to sit only" in output, output
        assert not (tmp_path / f"x-{to}").exists()
