"""log.csv after a resume: the rows of an interrupted and resumed run are the rows of an
uninterrupted one.

A row holds the means over the steps since the previous row. A stop (SIGTERM, Ctrl-C) or crash between two
rows used to lose the steps before the checkpoint from the resumed run's first row, so that row was the mean
of a shorter window. The checkpoint now keeps those steps' values (``TrainLog.window``).

Compared: step, loss (and its terms), grad_norm and lr, as written (deterministic: the same steps give the same
floats). Not compared: steps_per_s, images_per_s and elapsed_s (``TIMING_COLUMNS``), which measure the clock.
"""

import os

import signal

import pytest

from sitcli.training import resume_config, train
from sitcli.training.reports import TIMING_COLUMNS
from sitcli.transport import Transport
from helpers import assert_same_state, final_state, tiny

SETTINGS = dict(steps=8, log_every=4, ckpt_every=100, batch_size=8)


def deterministic_rows(run) -> list[dict]:
    lines = (run / "log.csv").read_text().splitlines()
    columns = lines[0].split(",")
    rows = [dict(zip(columns, line.split(","))) for line in lines[1:]]
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("straight")
    train(tiny(root, "run", **SETTINGS, grad_clip=1.0), progress=False)
    return root / "run"


def fail_on_call(monkeypatch, n: int, action):
    original = Transport.regression_loss
    calls = {"n": 0}

    def wrapped(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            action()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Transport, "regression_loss", wrapped)
    return original


@pytest.mark.parametrize("stop_at", [1, 3, 4, 6])
def test_sigterm_between_rows_then_resume_logs_the_straight_rows(tmp_path, monkeypatch, straight, stop_at):
    original = fail_on_call(monkeypatch, stop_at, lambda: os.kill(os.getpid(), signal.SIGTERM))
    result = train(tiny(tmp_path, "run", **SETTINGS, grad_clip=1.0), progress=False)
    assert result.interrupted and result.step == stop_at
    monkeypatch.setattr(Transport, "regression_loss", original)
    train(resume_config(tmp_path / "run"), resume=True, progress=False)
    assert_same_state(final_state(tmp_path / "run")[1], final_state(straight)[1])
    rows = deterministic_rows(tmp_path / "run")
    assert [r["step"] for r in rows] == ["4", "8"]
    assert rows == deterministic_rows(straight)
    assert set(rows[0]) == {"step", "loss", "grad_norm", "lr"}


class Crash(Exception):
    pass


@pytest.mark.slow
def test_crash_after_a_checkpoint_between_rows_then_resume_logs_the_straight_rows(tmp_path, monkeypatch, straight):
    """As kill -9 leaves it: a checkpoint at step 3, a row at 4 that the resume drops and writes again."""
    def crash():
        raise Crash

    original = fail_on_call(monkeypatch, 6, crash)
    with pytest.raises(Crash):
        train(tiny(tmp_path, "run", **{**SETTINGS, "ckpt_every": 3}, grad_clip=1.0), progress=False)
    assert [r["step"] for r in deterministic_rows(tmp_path / "run")] == ["4"]
    monkeypatch.setattr(Transport, "regression_loss", original)
    train(resume_config(tmp_path / "run"), resume=True, progress=False)
    assert deterministic_rows(tmp_path / "run") == deterministic_rows(straight)
