"""sitcli/training/evaluation.py: FID during training leaves the weights bit for bit as they are, and resumes."""


import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sitcli.cli import app
from sitcli.config import TrainConfig
from sitcli.evaluate import FidConfig, evaluate
from sitcli.training import resume_config, train
from sitcli.training.reports import read_log
from helpers import assert_same_state, final_state, random_inception_state

TINY = dict(data="digits", model="SiT-Ti/4", batch_size=16, lr=1e-3, log_every=2, ckpt_every=2, sample_every=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(Inception weights, statistics .npz) of a few random RGB images, under random Inception weights."""
    folder = tmp_path_factory.mktemp("ref")
    weights = folder / "inception.pth"
    torch.save(random_inception_state(), weights)
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    np.savez(folder / "images.npz", arr_0=images)
    evaluate(
        FidConfig(
            str(folder / "images.npz"),
            None,
            None,
            save_stats=str(folder / "stats.npz"),
            inception_weights=str(weights),
            num_workers=0,
        ),
        device="cpu",
    )
    return weights, folder / "stats.npz"


def evaluating(reference, **kw):
    weights, stats = reference
    return dict(
        eval_every=2,
        eval_num=3,
        eval_ref=str(stats),
        eval_method="euler",
        eval_steps=2,
        inception_weights=str(weights),
        **kw,
    )


@pytest.mark.slow
def test_evaluating_during_training_changes_no_weight_and_marks_the_best(tmp_path, reference, one_thread):
    train(TrainConfig(out=str(tmp_path / "plain"), steps=4, **TINY), progress=False)
    train(TrainConfig(out=str(tmp_path / "eval"), steps=4, **TINY, **evaluating(reference)), progress=False)
    assert assert_same_state(final_state(tmp_path / "plain")[1], final_state(tmp_path / "eval")[1]) is None
    assert (tmp_path / "plain" / "log.csv").read_text().splitlines()[1:][0].split(",")[:3] == (
        tmp_path / "eval" / "log.csv"
    ).read_text().splitlines()[1:][0].split(",")[:3]
    rows = read_log(tmp_path / "eval" / "eval.csv")
    assert [r["step"] for r in rows] == [2, 4]
    assert all(math.isfinite(r["fid"]) and r["fid"] > 0 and r["eval_s"] > 0 for r in rows)
    best = json.loads((tmp_path / "eval" / "best.json").read_text())
    low = min(rows, key=lambda r: r["fid"])
    assert best["step"] == low["step"] and best["fid"] == pytest.approx(low["fid"])
    assert best["checkpoint"] == str(tmp_path / "eval" / "checkpoints" / f"{best['step']:07d}")
    config = json.loads((tmp_path / "eval" / "config.json").read_text())
    assert (config["eval_method"], config["eval_steps"], config["eval_num"]) == ("euler", 2, 3)


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_evaluations(tmp_path, reference, one_thread):
    train(TrainConfig(out=str(tmp_path / "straight"), steps=4, **TINY, **evaluating(reference)), progress=False)
    train(TrainConfig(out=str(tmp_path / "halves"), steps=2, **TINY, **evaluating(reference)), progress=False)
    train(resume_config(tmp_path / "halves", {"steps": 4}), resume=True, progress=False)
    straight, halves = (read_log(tmp_path / name / "eval.csv") for name in ("straight", "halves"))
    assert [r["step"] for r in halves] == [2, 4]
    assert [r["fid"] for r in halves] == [r["fid"] for r in straight]
    assert assert_same_state(final_state(tmp_path / "straight")[1], final_state(tmp_path / "halves")[1]) is None


def test_evaluation_without_reference_statistics_is_refused_before_anything_is_written(tmp_path, reference):
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "a"), "--eval-every", "2"])
    assert result.exit_code == 2 and "--eval-ref" in result.output
    result = runner.invoke(
        app,
        [
            "train",
            "--out",
            str(tmp_path / "b"),
            "--eval-every",
            "2",
            "--eval-ref",
            str(reference[0]),
            "--inception-weights",
            str(reference[0]),
        ],
    )
    assert result.exit_code == 2 and "holds no 2048-d Inception statistics" in result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_inception_score_and_sfid_come_from_the_same_samples(tmp_path, reference, one_thread):
    """--eval-metrics is,sfid adds columns from the same samples (the FID does not move); kid is refused up front."""
    train(TrainConfig(out=str(tmp_path / "fid"), steps=2, **TINY, **evaluating(reference)), progress=False)
    train(
        TrainConfig(out=str(tmp_path / "more"), steps=2, **TINY, **evaluating(reference, eval_metrics="is,sfid")),
        progress=False,
    )
    plain, more = read_log(tmp_path / "fid" / "eval.csv"), read_log(tmp_path / "more" / "eval.csv")
    header = (tmp_path / "more" / "eval.csv").read_text().splitlines()[0]
    assert header == "step,fid,is,is_std,sfid,eval_s"
    assert more[0]["fid"] == plain[0]["fid"]
    assert more[0]["is"] > 1 and more[0]["is_std"] == 0  # 3 samples: one split, whose score exceeds 1 unless all agree
    assert math.isfinite(more[0]["sfid"]) and more[0]["sfid"] > 0
    with pytest.raises(Exception, match="--eval-metrics 'kid'"):
        train(
            TrainConfig(out=str(tmp_path / "bad"), steps=2, **TINY, **evaluating(reference, eval_metrics="kid")),
            progress=False,
        )
    assert not (tmp_path / "bad").exists()
