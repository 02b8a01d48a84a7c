"""sitcli/checkpoint.py: atomic writes, newest complete checkpoint, safe loading."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse

import pytest
import torch

from sitcli import checkpoint
from sitcli.errors import InputError


def _save(run, step, **kw):
    w = {"a": torch.full((2,), float(step))}
    return checkpoint.save_checkpoint(run, step, w, w, {"state": {}, "param_groups": []}, {"r": torch.zeros(3, dtype=torch.uint8)},
                                      {"step": step}, **kw)


def test_save_and_load_round_trip(tmp_path):
    path = _save(tmp_path, 7)
    assert path.name == "0000007"
    loaded = checkpoint.load_checkpoint(path)
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

    monkeypatch.setattr(checkpoint, "save_file", failing_save_file)
    with pytest.raises(OSError):
        _save(tmp_path, 30)
    monkeypatch.undo()
    # A folder named like a step but missing files (e.g. copied by hand) is not complete either.
    (tmp_path / "checkpoints" / "0000040").mkdir()
    assert checkpoint.latest_checkpoint(tmp_path).name == "0000020"
    assert not (tmp_path / "checkpoints" / "0000030").exists()


def test_atomic_write_replaces_whole_files(tmp_path):
    target = tmp_path / "f.json"
    checkpoint.write_json(target, {"x": 1})
    checkpoint.write_json(target, {"x": 2})
    assert target.read_text().strip().endswith("}") and '"x": 2' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "grid.png"
    checkpoint.write_json(target, {"old": 1})

    class Exploding:
        def save(self, path, format=None):
            with open(path, "wb") as f:
                f.write(b"partial")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint.atomic_save_image(target, Exploding())
    assert '"old": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_weights_files_load_safely(tmp_path):
    sd = {"w": torch.ones(2)}
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({"model": {"w": torch.zeros(2)}, "ema": sd}, tmp_path / "wrapped.pt")
    assert torch.equal(checkpoint.load_weights(tmp_path / "plain.pt")["w"], torch.ones(2))
    assert torch.equal(checkpoint.load_weights(tmp_path / "wrapped.pt")["w"], torch.ones(2))  # EMA preferred
    torch.save({"w": torch.ones(2), "args": argparse.Namespace(model="SiT-XL/2")}, tmp_path / "pickled.pt")
    with pytest.raises(InputError, match="--trust-pickle"):
        checkpoint.load_weights(tmp_path / "pickled.pt")


def test_resolve_weights(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        checkpoint.resolve_weights(tmp_path / "nope")
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(InputError, match="neither"):
        checkpoint.resolve_weights(run)
    checkpoint.write_json(run / "config.json", {"data": "digits"})
    with pytest.raises(InputError, match="no complete checkpoint"):
        checkpoint.resolve_weights(run)
    ckpt = _save(run, 5)
    assert checkpoint.resolve_weights(run) == (ckpt / "ema.safetensors", run)
    assert checkpoint.resolve_weights(ckpt, ema=False) == (ckpt / "model.safetensors", run)
