"""Run folders and checkpoints: atomic writes, safe loading, finding the newest complete checkpoint.

A run folder holds ``config.json`` (the training settings), ``log.csv``, ``loss.png``, EMA sample
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
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sitcli.errors import InputError

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
WEIGHT_FILES = ("model.safetensors", "ema.safetensors")
CHECKPOINT_FILES = (*WEIGHT_FILES, "optimizer.pt", "rng.safetensors", "state.json")


#################################################################################
#                                 Atomic writes                                 #
#################################################################################


def _atomic(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def atomic_save_image(path: str | Path, image) -> None:
    """Save a PIL image atomically; the format follows the final name's suffix."""
    fmt = Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"
    _atomic(Path(path), lambda tmp: image.save(tmp, format=fmt))


def atomic_save_npz(path: str | Path, **arrays) -> None:
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    _atomic(Path(path), write)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


#################################################################################
#                                   Run folders                                 #
#################################################################################


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


#################################################################################
#                                 Weights for use                               #
#################################################################################


def resolve_weights(ckpt: str | Path, ema: bool = True) -> tuple[Path, Path | None]:
    """(weights file, run folder or None) for a run folder, a checkpoint folder, or a weights file."""
    path = Path(ckpt)
    if not path.exists():
        raise InputError(f"--ckpt {path} does not exist; pass a run folder, a checkpoint folder or a weights file")
    name = WEIGHT_FILES[1] if ema else WEIGHT_FILES[0]
    if path.is_file():
        return path, None
    if is_run(path):
        latest = latest_checkpoint(path)
        if latest is None:
            raise InputError(f"run {path} has no complete checkpoint yet; wait for one (--ckpt-every) or train longer")
        return latest / name, path
    if (path / name).is_file() and is_run(path.parent.parent):
        return path / name, path.parent.parent
    raise InputError(f"{path} is neither a sit run, a checkpoint folder nor a weights file")


def load_weights(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a .pt/.pth file with ``weights_only`` loading.

    Files wrapped as ``{"model": ..., "ema": ...}`` (the official SiT training checkpoints) give
    their EMA weights. Pickled objects other than tensors are refused unless ``trust_pickle``.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as err:  # noqa: BLE001 - torch raises several kinds for "needs pickle"
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise InputError(
                f"{path} holds pickled Python objects besides tensors; convert it with `sit convert`, "
                "or pass --trust-pickle if you trust its source"
            ) from None
        raise InputError(f"could not read weights from {path}: {err}") from None
    if isinstance(obj, dict) and "ema" in obj and isinstance(obj["ema"], dict):
        obj = obj["ema"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path} does not hold a state dict (name -> tensor)")
    return obj
