"""A run folder: its config.json, its checkpoints (save, load, the newest complete one), its log.

A run folder holds ``config.json`` (the training settings), ``log.csv``, ``loss.png`` (with matplotlib),
``eval.csv`` and ``best.json`` (with --eval-every), ``tensorboard/`` and ``wandb/`` (with --log), EMA sample
grids ``grids/NNNNNNN.png``, and ``checkpoints/NNNNNNN/`` with

    model.safetensors, ema.safetensors   weights (fp32), official SiT parameter names
    optimizer.pt                         AdamW state, loadable with torch.load(weights_only=True)
    rng.safetensors                      RNG states of every rank (uint8 tensors)
    state.json                           step and data position

A checkpoint is written into a hidden temporary folder and renamed into place in one step, so a
folder named by its step is always complete; anything interrupted is a ``.tmp-*`` folder that is
ignored (and cleaned up by the next save). Nothing here unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sitcli import atomic
from sitcli.errors import InputError

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
WEIGHT_FILES = ("model.safetensors", "ema.safetensors")
CHECKPOINT_FILES = (*WEIGHT_FILES, "optimizer.pt", "rng.safetensors", "state.json")


#################################################################################
#                                   Run folders                                 #
#################################################################################


def write_config(run: str | Path, config: dict) -> None:
    atomic.write_json(Path(run) / CONFIG, config)


def is_run(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def read_config(run: str | Path) -> dict:
    path = Path(run) / CONFIG
    if not path.is_file():
        raise InputError(f"{run} is not a sit run (no {CONFIG}); pass the folder that `sit train --out` created")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise InputError(f"{path} is not valid JSON; the run folder is damaged or not a sit run") from None


def list_checkpoints(run: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    folder = Path(run) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and all((p / f).is_file() for f in CHECKPOINT_FILES)]
    return sorted(found, key=lambda p: int(p.name))


def latest_checkpoint(run: str | Path) -> Path | None:
    found = list_checkpoints(run)
    return found[-1] if found else None


def save_checkpoint(
    run: str | Path,
    step: int,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    optimizer: dict,
    rng: dict[str, torch.Tensor],
    state: dict,
) -> Path:
    """Write ``checkpoints/<step>/`` atomically (temporary folder, then one rename). Returns its path.

    An existing checkpoint of the same step is left as it is: it holds the same training state.
    """
    folder = Path(run) / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{step:07d}"
    if final.exists():
        return final
    for stale in folder.glob(".tmp-*"):  # left by an interrupted save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".tmp-{step:07d}-"))
    try:
        save_file(_contiguous(model), tmp / "model.safetensors")
        save_file(_contiguous(ema), tmp / "ema.safetensors")
        torch.save(optimizer, tmp / "optimizer.pt")
        save_file(_contiguous(rng), tmp / "rng.safetensors")
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        for path in tmp.iterdir():  # the rename must not overtake the data on a crash
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        atomic.honour_umask(tmp)  # a colleague may read the run: mkdtemp's folder and safetensors' files are private
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Everything ``save_checkpoint`` wrote, loaded without unpickling arbitrary objects."""
    path = Path(path)
    return {
        "model": load_file(path / "model.safetensors", device=str(map_location)),
        "ema": load_file(path / "ema.safetensors", device=str(map_location)),
        "optimizer": torch.load(path / "optimizer.pt", map_location=map_location, weights_only=True),
        "rng": load_file(path / "rng.safetensors"),
        "state": json.loads((path / "state.json").read_text()),
    }
