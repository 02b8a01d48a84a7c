"""Flags that do nothing are refused where the setting is defined (the config's validation), before anything is
read or written, the way the mean-flow settings are refused without --objective meanflow.

Cases: `sit train` --repa-depth / --repa-weight / --repa-projector-dim without --repa-encoder; --eval-ref,
--eval-num, --eval-method, --eval-steps, --eval-metrics, --inception-weights without --eval-every; --repa-encoder ''
(it must not turn REPA off); `sit cache-latents` --repa-grid / --repa-dtype without --repa-encoder, and
--repa-encoder ''; `sit fid --dinov2` without fd_dinov2 (with --save-stats it is used: accepted). A run whose
config.json holds such a setting from before still resumes."""

import json

import pytest
from typer.testing import CliRunner

from sitcli.cli import app

runner = CliRunner()


def sit(*args):
    return runner.invoke(app, [str(a) for a in args])


def refused(result, *words: str) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


@pytest.mark.parametrize("flag, value, needs", [
    ("--repa-depth", 2, "--repa-encoder"),
    ("--repa-weight", 1.0, "--repa-encoder"),
    ("--repa-projector-dim", 16, "--repa-encoder"),
    ("--eval-ref", "ref.npz", "--eval-every"),
    ("--eval-num", 10, "--eval-every"),
    ("--eval-method", "heun", "--eval-every"),
    ("--eval-steps", 5, "--eval-every"),
    ("--eval-metrics", "fid,is", "--eval-every"),
    ("--inception-weights", "pt_inception.pth", "--eval-every"),
])
def test_a_training_flag_without_effect_is_refused(tmp_path, flag, value, needs):
    refused(sit("train", "--out", tmp_path / "t", "--steps", 1, flag, value), flag, "has no effect without", needs)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_repa_encoder_does_not_turn_alignment_off(tmp_path):
    refused(sit("train", "--out", tmp_path / "t", "--steps", 1, "--repa-encoder", ""), "--repa-encoder ''")
    refused(sit("cache-latents", "--data", tmp_path, "--vae", tmp_path, "--out", tmp_path / "c", "--repa-encoder", ""),
            "--repa-encoder ''")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag, value", [("--repa-grid", 4), ("--repa-dtype", "float32")])
def test_a_cache_flag_without_effect_is_refused(tmp_path, flag, value):
    refused(sit("cache-latents", "--data", tmp_path, "--vae", tmp_path, "--out", tmp_path / "c", flag, value),
            flag, "has no effect without --repa-encoder")
    assert list(tmp_path.iterdir()) == []


def test_dinov2_without_fd_dinov2_is_refused(tmp_path):
    refused(sit("fid", tmp_path / "a", tmp_path / "b", "--dinov2", tmp_path / "dino"), "--dinov2", "fd_dinov2")
    refused(sit("fid", tmp_path / "a", tmp_path / "b", "--metrics", "fid,kid", "--dinov2", tmp_path / "dino"),
            "--dinov2")
    # with --save-stats the encoder's statistics are written: it has an effect (refused here only for the missing A)
    result = sit("fid", tmp_path / "a", "--save-stats", tmp_path / "s.npz", "--dinov2", tmp_path / "dino")
    assert result.exit_code == 2 and "--dinov2" not in result.output and "does not exist" in result.output


def test_a_run_that_recorded_such_a_setting_before_still_resumes(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    config["eval_num"] = 10  # accepted without --eval-every by earlier versions
    (run / "config.json").write_text(json.dumps(config))
    refused(sit("train", "--resume", run, "--steps", 4, "--inception-weights", "w.pth"), "--inception-weights",
            "--eval-every")
    result = sit("train", "--resume", run, "--steps", 4)
    assert result.exit_code == 0, result.output
