"""A run folder: its config.json, its checkpoints (save, load, the newest complete one), its log.

A run folder holds ``config.json`` (the training settings), ``log.csv``, ``loss.png`` (with matplotlib),
``eval.csv`` and ``best.json`` (with --eval-every), ``tensorboard/`` and ``wandb/`` (with --log), EMA sample
grids ``grids/NNNNNNN.png``, and ``checkpoints/NNNNNNN/`` with

    model.safetensors, ema.safetensors   weights (fp32), official SiT parameter names
    optimizer.pt                         AdamW state (and the post-hoc EMA trackers' with --ema-snapshots-every),
                                         loadable with torch.load(weights_only=True)
    rng.safetensors                      RNG states of every rank (uint8 tensors)
    state.json                           step and data position
    manifest.json                        size and SHA-256 of each file above, written last

With --ema-snapshots-every K, ``ema_snapshots/NNNNNNN-SIGMA.safetensors`` holds the power-function EMA of each
relative width at every K-th step (``save_ema_snapshot``), which `sit ema` combines into other widths.

A checkpoint is written into a hidden temporary folder and renamed into place in one step, so a
folder named by its step is complete when written; anything interrupted is a ``.tmp-*`` folder that
is ignored (and cleaned up by the next save). What happens to the files later (a full disk, a copy
cut short, a bad sector) is caught by ``checkpoint_problem``: a checkpoint counts only when every
file matches its manifest.
Nothing here unpickles arbitrary objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sitcli import atomic
from sitcli.errors import InputError
from sitcli.locks import LOCK

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
WEIGHT_FILES = ("model.safetensors", "ema.safetensors")
CHECKPOINT_FILES = (*WEIGHT_FILES, "optimizer.pt", "rng.safetensors", "state.json")
MANIFEST = "manifest.json"


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
    """Checkpoint folders of a run with every file present, oldest first (not yet verified: see
    ``newest_checkpoint``)."""
    folder = Path(run) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.iterdir()
        if p.is_dir() and p.name.isdigit() and all((p / f).is_file() for f in CHECKPOINT_FILES)
    ]
    return sorted(found, key=lambda p: int(p.name))


def newest_checkpoint(run: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint of ``run`` whose files all verify, and the damaged ones newer than it
    (newest first, each with what is wrong). A step folder with a file missing counts as damaged."""
    folder = Path(run) / CHECKPOINTS
    steps = (
        sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: -int(p.name))
        if folder.is_dir()
        else []
    )
    damaged = []
    for path in steps:
        problem = checkpoint_problem(path)
        if problem is None:
            return path, damaged
        damaged.append((path, problem))
    return None, damaged


def latest_checkpoint(run: str | Path) -> Path | None:
    """The newest checkpoint whose files all verify (None when there is none)."""
    return newest_checkpoint(run)[0]


def checkpoint_problem(path: str | Path) -> str | None:
    """What is wrong with checkpoint folder ``path`` (a short phrase), or None when every file verifies.

    Every file has the size and SHA-256 its ``manifest.json`` records.
    """
    path = Path(path)
    missing = [f for f in CHECKPOINT_FILES if not (path / f).is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    if not (path / MANIFEST).is_file():
        return f"{MANIFEST} missing"
    try:
        manifest = json.loads((path / MANIFEST).read_text())["files"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return f"{MANIFEST} is not a manifest"
    for name in CHECKPOINT_FILES:
        want = manifest.get(name) if isinstance(manifest, dict) else None
        if not isinstance(want, dict):
            return f"{MANIFEST} does not list {name}"
        size = (path / name).stat().st_size
        if size != want.get("size"):
            return f"{name} has {size} bytes, {want.get('size')} written"
        if _sha256(path / name) != want.get("sha256"):
            return f"{name} does not match its SHA-256 in {MANIFEST}"
    return None


def file_digest(path: Path) -> str:
    """The SHA-256 of a file, in hex."""
    return _sha256(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


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

    An existing checkpoint of the same step is left as it is (it holds the same training state),
    unless it is damaged (``checkpoint_problem``): then the new one replaces it.
    """
    folder = Path(run) / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{step:07d}"
    if final.exists() and checkpoint_problem(final) is None:
        return final
    for stale in folder.glob(".tmp-*"):  # left by an interrupted save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".tmp-{step:07d}-"))
    aside = None
    try:
        for name, write in (
            ("model.safetensors", lambda path: save_file(_contiguous(model), path)),
            ("ema.safetensors", lambda path: save_file(_contiguous(ema), path)),
            ("optimizer.pt", lambda path: torch.save(optimizer, path)),
            ("rng.safetensors", lambda path: save_file(_contiguous(rng), path)),
        ):
            with atomic.storage_errors(final / name):  # a full disk: an OSError naming the file
                write(tmp / name)
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        files = {
            name: {"size": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in CHECKPOINT_FILES
        }
        (tmp / MANIFEST).write_text(json.dumps({"files": files}, indent=2) + "\n")
        for path in tmp.iterdir():  # the rename must not overtake the data on a crash
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        atomic.honour_umask(tmp)  # a colleague may read the run: mkdtemp's folder and safetensors' files are private
        if final.exists():  # damaged: set aside, replaced in one rename, then removed
            aside = Path(tempfile.mkdtemp(dir=folder, prefix=f".tmp-damaged-{step:07d}-"))
            os.rename(final, aside / final.name)
        os.rename(tmp, final)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
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
#                             Post-hoc EMA snapshots                            #
#################################################################################

SNAPSHOTS = "ema_snapshots"


def save_ema_snapshot(run: str | Path, step: int, sigma_rel: float, weights: dict[str, torch.Tensor]) -> Path:
    """Write ``ema_snapshots/<step>-<sigma_rel>.safetensors`` atomically: the power-function EMA of width
    ``sigma_rel`` at training step ``step`` (``training.posthoc_ema``), in its own dtype, the step and width in
    the file's metadata. A snapshot of the same step and width is replaced (a resumed run redraws it equal)."""
    path = Path(run) / SNAPSHOTS / f"{step:07d}-{float(sigma_rel)!r}.safetensors"
    metadata = {"step": str(int(step)), "sigma_rel": repr(float(sigma_rel))}
    atomic.atomic_write(path, lambda tmp: save_file(_contiguous(weights), tmp, metadata=metadata))
    return path


def list_ema_snapshots(run: str | Path) -> list[tuple[int, float, Path]]:
    """(step, sigma_rel, path) of every post-hoc EMA snapshot of ``run``, by step then width, as each file's
    metadata records them; a file that is not a readable snapshot is refused, named."""
    from safetensors import safe_open

    found = []
    for path in sorted((Path(run) / SNAPSHOTS).glob("*.safetensors")):
        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
            found.append((int(meta["step"]), float(meta["sigma_rel"]), path))
        except Exception:  # noqa: BLE001 - safetensors raises its own error types; a missing key is as bad
            raise InputError(f"{path} is not a readable post-hoc EMA snapshot (damaged?): move it out of "
                             f"{SNAPSHOTS}/, or train the run again") from None
    return sorted(found, key=lambda entry: entry[:2])


def load_ema_snapshot(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def check_new_run(run: Path) -> None:
    """Refuse to start a new run in ``run`` when it holds a run, or anything but a folder lock."""
    if is_run(run):
        raise InputError(f"{run} is already a run; continue it with --resume {run}, or pick a new --out")
    if run.exists() and (not run.is_dir() or any(p.name != LOCK for p in run.iterdir())):
        raise InputError(f"--out {run} exists and is not an empty folder; pick a new --out")
