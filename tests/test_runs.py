"""sitcli/runs.py: atomic writes, newest complete checkpoint, safe loading."""


import pytest
import torch

from sitcli import runs


def _save(run, step, **kw):
    w = {"a": torch.full((2,), float(step))}
    return runs.save_checkpoint(
        run,
        step,
        w,
        w,
        {"state": {}, "param_groups": []},
        {"r": torch.zeros(3, dtype=torch.uint8)},
        {"step": step},
        **kw,
    )


def test_save_and_load_round_trip(tmp_path):
    path = _save(tmp_path, 7)
    assert path.name == "0000007"
    loaded = runs.load_checkpoint(path)
    assert loaded["state"] == {"step": 7} and torch.equal(loaded["model"]["a"], torch.full((2,), 7.0))
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_newest_complete_checkpoint_wins_and_partial_ones_are_ignored(tmp_path, monkeypatch):
    _save(tmp_path, 10)
    _save(tmp_path, 20)
    # A crash in the middle of a save: files of step 30 are half written, never renamed into place.
    calls = []

    def failing_save_file(tensors, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        torch.save(tensors, path)

    monkeypatch.setattr(runs, "save_file", failing_save_file)
    with pytest.raises(OSError):
        _save(tmp_path, 30)
    monkeypatch.undo()
    # A folder named like a step but missing files (e.g. copied by hand) is not complete either.
    (tmp_path / "checkpoints" / "0000040").mkdir()
    assert runs.latest_checkpoint(tmp_path).name == "0000020"
    assert not (tmp_path / "checkpoints" / "0000030").exists()
