"""sitcli/training/loggers.py: TensorBoard and W&B (offline) receive what log.csv holds; the gradient norm."""


from pathlib import Path

import pytest
from typer.testing import CliRunner

from sitcli.cli import app
from sitcli.config import TrainConfig
from sitcli.training import train
from sitcli.training.reports import read_log
from helpers import assert_same_state, final_state

TINY = dict(data="digits", model="SiT-Ti/4", batch_size=16, lr=1e-3, log_every=2, ckpt_every=3, sample_every=3)


def wandb_records(path: Path):
    """The records of an offline W&B run file: a 7-byte header, then LevelDB-log chunks in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, chunk = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


@pytest.mark.slow
def test_tensorboard_and_offline_wandb_hold_the_numbers_of_log_csv(tmp_path, monkeypatch, one_thread, fresh_wandb):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(TrainConfig(out=str(run), steps=6, log="tensorboard,wandb", **TINY), progress=False)
    rows = read_log(run / "log.csv")
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert all(r["grad_norm"] > 0 and r["lr"] == 1e-3 for r in rows)

    board = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    board.Reload()
    for tag, digits in (("train/loss", 1e-5), ("train/grad_norm", 1e-5), ("train/lr", 1e-6),
                        ("speed/steps_per_s", 1e-3)):  # log.csv rounds speeds to 4 digits
        points = board.Scalars(tag)
        assert [p.step for p in points] == [2, 4, 6]
        assert [p.value for p in points] == pytest.approx([r[tag.split("/")[1]] for r in rows], rel=digits)
    assert [e.step for e in board.Images("ema_samples")] == [3, 6]

    [file] = (run / "wandb").glob("offline-run-*/run-*.wandb")
    history = [
        {item.key or "/".join(item.nested_key): item.value_json for item in r.history.item}
        for r in wandb_records(file)
        if r.WhichOneof("record_type") == "history"
    ]
    logged = [h for h in history if "train/loss" in h]
    assert [int(h["_step"]) for h in logged] == [2, 4, 6]
    for name in ("loss", "grad_norm"):
        assert [float(h[f"train/{name}"]) for h in logged] == pytest.approx([r[name] for r in rows], rel=1e-4)
    assert [int(h["_step"]) for h in history if "ema_samples/path" in h] == [3, 6]


def test_a_logger_that_is_unknown_or_not_installed_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "a"), "--log", "csv,tensorbord"])
    assert result.exit_code == 2 and "csv, tensorboard, wandb" in result.output
    real = __import__("importlib.util").util.find_spec
    monkeypatch.setattr(
        "sitcli.training.loggers.importlib.util.find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "b"), "--log", "wandb"])
    assert result.exit_code == 2 and "pip install 'sit[wandb]'" in result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_the_logged_gradient_norm_is_clip_grad_norms_and_reading_it_leaves_the_update_alone(tmp_path, one_thread):
    settings = {**TINY, "sample_every": 0, "log_every": 1, "steps": 4}
    train(TrainConfig(out=str(tmp_path / "free"), **settings), progress=False)
    train(TrainConfig(out=str(tmp_path / "clip"), grad_clip=1e9, **settings), progress=False)  # never binds
    free, clip = read_log(tmp_path / "free" / "log.csv"), read_log(tmp_path / "clip" / "log.csv")
    assert [r["grad_norm"] for r in free] == pytest.approx([r["grad_norm"] for r in clip], rel=1e-5)
    assert assert_same_state(final_state(tmp_path / "free")[1], final_state(tmp_path / "clip")[1]) is None
