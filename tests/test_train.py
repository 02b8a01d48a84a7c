"""sitcli/training/ and `sit train`: exact resume, Ctrl-C, non-finite loss, and refusals of bad input."""

import os

import hashlib
import json
import signal

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from helpers import assert_same_state, final_state, tiny
from sitcli import runs
from sitcli.cli import app
from sitcli.training import TrainingDiverged, resume_config, train
from sitcli.transport import Transport

@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    train(tiny(tmp_path, "straight", steps=6), progress=False)
    train(tiny(tmp_path, "halves", steps=3), progress=False)
    result = train(resume_config(tmp_path / "halves", {"steps": 6}), resume=True, progress=False)
    assert result.step == 6
    name_a, a = final_state(tmp_path / "straight")
    name_b, b = final_state(tmp_path / "halves")
    assert name_a == name_b == "0000006"
    assert_same_state(a, b)
    log = (tmp_path / "halves" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["2", "3", "4", "6"]  # 3 is the end of the first half
    assert (tmp_path / "halves" / "loss.png").is_file()
    config = json.loads((tmp_path / "halves" / "config.json").read_text())
    assert config["steps"] == 6 and config["model"] == "SiT-Ti/4" and config["num_classes"] == 10


@pytest.mark.parametrize("density", [dict(time_density="logit-normal", logit_mean=0.4, logit_std=0.8),
                                     dict(time_density="mode", num_timesteps=50)])
@pytest.mark.slow
def test_time_density_is_recorded_and_resumes_exactly(tmp_path, density):
    train(tiny(tmp_path, "straight", steps=4, **density), progress=False)
    train(tiny(tmp_path, "halves", steps=2, **density), progress=False)
    train(resume_config(tmp_path / "halves", {"steps": 4}), resume=True, progress=False)
    assert_same_state(final_state(tmp_path / "straight")[1], final_state(tmp_path / "halves")[1])
    config = json.loads((tmp_path / "halves" / "config.json").read_text())
    assert {k: config[k] for k in density} == density
    # The density's parameters are recorded as used (mode's default scale), the others stay unset.
    assert config["mode_scale"] == (1.29 if density["time_density"] == "mode" else None)
    # ... and the density changes the training (the same run with uniform times ends elsewhere).
    train(tiny(tmp_path, "uniform", steps=4, num_timesteps=density.get("num_timesteps")), progress=False)
    other = final_state(tmp_path / "uniform")[1]
    assert not torch.equal(other["model"]["final_layer.linear.weight"],
                           final_state(tmp_path / "straight")[1]["model"]["final_layer.linear.weight"])


def test_ctrl_c_saves_and_resume_matches_straight_run(tmp_path, monkeypatch):
    original = Transport.regression_loss
    calls = {"n": 0}

    def interrupt_on_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C delivers; the step still completes
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Transport, "regression_loss", interrupt_on_third)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (nohup would ignore SIGINT)
    try:
        result = train(tiny(tmp_path, "interrupted", steps=4, ckpt_every=100), progress=False)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    finally:
        signal.signal(signal.SIGINT, outer)
    assert result.interrupted and result.step == 3 and result.checkpoint.name == "0000003"
    monkeypatch.setattr(Transport, "regression_loss", original)

    train(resume_config(tmp_path / "interrupted"), resume=True, progress=False)
    train(tiny(tmp_path, "straight", steps=4, ckpt_every=100), progress=False)
    assert_same_state(final_state(tmp_path / "interrupted")[1], final_state(tmp_path / "straight")[1])


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    original = Transport.regression_loss
    calls = {"n": 0}

    def nan_on_third(self, *args, **kwargs):
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(Transport, "regression_loss", nan_on_third)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="non-finite.*step 3.*0000002"):
        train(tiny(tmp_path, steps=6), progress=False)
    assert [p.name for p in runs.list_checkpoints(run)] == ["0000002"]
    weights = run / "checkpoints" / "0000002" / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert all(torch.isfinite(v).all() for v in load_file(weights).values())
    assert digest == hashlib.sha256(weights.read_bytes()).hexdigest()
    monkeypatch.setattr(Transport, "regression_loss", original)
    # What the message advises: go on from the last good checkpoint with a lower learning rate.
    resumed = train(resume_config(run, {"lr": 1e-4}), resume=True, progress=False)
    assert resumed.step == 6 and json.loads((run / "config.json").read_text())["lr"] == 1e-4
    assert runs.load_checkpoint(resumed.checkpoint)["optimizer"]["optimizer"]["param_groups"][0]["lr"] == 1e-4


def test_bf16_autocast_trains(tmp_path):
    result = train(tiny(tmp_path, steps=2, precision="bf16"), progress=False)
    weights = runs.load_checkpoint(result.checkpoint)["model"]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())  # fp32 master weights


def test_fused_adamw_matches_the_default_optimiser_to_round_off_and_resumes(tmp_path, monkeypatch):
    built = []
    adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, **kw: built.append(kw.get("fused")) or adamw(*a, **kw))
    train(tiny(tmp_path, "default", steps=4), progress=False)
    train(tiny(tmp_path, "fused", steps=2, fused_adamw=True), progress=False)
    assert built == [None, True]
    # resuming switches it off and on again: the optimiser state is the same either way
    train(resume_config(tmp_path / "fused", {"steps": 4, "fused_adamw": False}), resume=True, progress=False)
    _, default = final_state(tmp_path / "default")
    _, fused = final_state(tmp_path / "fused")
    for name, value in default["model"].items():
        torch.testing.assert_close(fused["model"][name], value, rtol=0, atol=1e-5)
    assert json.loads((tmp_path / "fused" / "config.json").read_text())["fused_adamw"] is False


def test_epochs_set_the_number_of_steps(tmp_path):
    result = train(tiny(tmp_path, steps=None, epochs=1, batch_size=600, ckpt_every=100), progress=False)
    assert result.step == 1797 // 600


runner = CliRunner()


def sit(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    result = sit("train", "--out", run, "--model", "SiT-Ti/4", "--steps", 2, "--batch-size", 16, "--ckpt-every", 1,
                 "--sample-every", 2, "--log-every", 1)
    assert result.exit_code == 0, result.output
    return run


def test_cli_run_folder(finished_run):
    assert (finished_run / "grids" / "0000002.png").is_file()
    assert [p.name for p in runs.list_checkpoints(finished_run)] == ["0000001", "0000002"]
    # `sit sample` on the run, with no --out, writes next to the grids in <run>/samples.
    result = sit("sample", "--ckpt", finished_run, "--num", 2, "--steps", 2)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (finished_run / "samples").glob("*.png")) == ["000000.png", "000001.png"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "{run}"], "already a run"),
        (["--resume", "{run}"], "already finished"),
        (["--resume", "{run}", "--steps", 4, "--interpolant", "vp"], "keeps its settings"),
        (["--resume", "{run}", "--out", "{tmp}/other"], "different folders"),
        (["--resume", "{tmp}"], "not a sit run"),
        (["--out", "{tmp}/new", "--model", "SiT-Q/2"], "unknown model"),
        (["--out", "{tmp}/new", "--interpolant", "cosine"], "interpolant"),
        (["--out", "{tmp}/new", "--data", "{tmp}/missing"], "does not exist"),
        (["--out", "{tmp}/new", "--precision", "fp16", "--device", "cpu"], "CUDA"),
        (["--out", "{tmp}/new", "--model", "SiT-Ti/8", "--image-size", 12], "divisible by its patch size"),
        (["--out", "{tmp}/new", "--vae", "{tmp}"], "drop --vae"),
        (["--out", "{tmp}/new", "--time-density", "lognorm"], "'lognorm' is not one of"),
        (["--out", "{tmp}/new", "--logit-mean", 0.5], "time density uniform takes no logit_mean"),
        (
            ["--out", "{tmp}/new", "--time-density", "mode", "--mode-scale", 3],
            "--mode-scale 3.0: pass a finite number in [-1, 1.75]",
        ),
        (["--resume", "{run}", "--steps", 4, "--time-density", "cosmap"], "keeps its settings"),
    ],
)
def test_cli_refuses_bad_input_without_writing(finished_run, tmp_path, args, message):
    before = sorted(str(p) for p in finished_run.rglob("*"))
    result = sit("train", *[str(a).format(run=finished_run, tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert sorted(str(p) for p in finished_run.rglob("*")) == before
    assert not (tmp_path / "new").exists()


def test_cli_refuses_foreign_run_and_non_empty_out(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text(json.dumps({"lr": 1}))
    result = sit("train", "--resume", tmp_path / "foreign")
    assert result.exit_code == 2 and "not a sit training config" in " ".join(result.output.split())
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    result = sit("train", "--out", tmp_path / "full")
    assert result.exit_code == 2 and "not an empty folder" in result.output


def test_grad_checkpointing_trains_the_same_weights_and_is_recorded(tmp_path):
    train(tiny(tmp_path, "plain", steps=3), progress=False)
    train(tiny(tmp_path, "checked", steps=3, grad_checkpointing=True), progress=False)
    _, a = final_state(tmp_path / "plain")
    _, b = final_state(tmp_path / "checked")
    for name in a["model"]:
        torch.testing.assert_close(b["model"][name], a["model"][name], rtol=1e-5, atol=1e-6, msg=name)
    assert json.loads((tmp_path / "checked" / "config.json").read_text())["grad_checkpointing"] is True
