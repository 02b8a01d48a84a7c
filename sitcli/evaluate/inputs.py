"""What `sit fid` reads and writes: image folders, image .npz files, statistics .npz files.

An input is recognised by its content, not its name:

- a directory: every image file below it (recursively) whose suffix is one of
  ``IMAGE_EXTENSIONS``, in sorted path order;
- a .npz holding ``arr_0``: uint8 images of shape (N, H, W, 3), the format of the ADM
  evaluator's sample and reference batches. An uncompressed (``np.savez``) file is
  memory-mapped, so 50,000 images are never all in memory; a compressed one is loaded whole;
- a .npz holding ``mu`` and ``sigma``: precomputed statistics, as pytorch-fid writes them
  (optionally ``mu_s`` and ``sigma_s`` for sFID, as the ADM reference batches hold them).

Decoding is pytorch-fid's: ``PIL.Image.open(path).convert("RGB")`` (16-bit grey scaled to 8 bits, where convert
"RGB" would clip it to white: ``data.images.as_rgb``), then uint8 -> float / 255.
Decoding runs in DataLoader worker processes; images travel as uint8 (4x less than float).
"""

from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sitcli import atomic
from sitcli.data import IMAGE_EXTENSIONS
from sitcli.data.images import as_rgb
from sitcli.errors import InputError
from sitcli.outputs import Kind, json_object, npz_arrays

STATS_KEYS = ("mu", "sigma", "mu_s", "sigma_s", "mu_d", "sigma_d")  # _d: FD-DINOv2 (evaluate.dinov2)


@dataclass
class Source:
    """One input of `sit fid`, opened and checked but not yet decoded."""

    path: Path
    kind: str  # "folder" | "images_npz" | "stats_npz"
    num_images: int | None = None
    files: list[Path] = field(default_factory=list)
    npz: "_NpzImages | None" = None
    stats: dict[str, np.ndarray] = field(default_factory=dict)


def open_source(path: str | Path) -> Source:
    """Recognise and check an input; raises ``InputError`` with a one-line reason."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise InputError(
                f"no images found in folder {path} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}, recursively)"
            )
        return Source(path, "folder", len(files), files=files)
    if not path.exists():
        raise InputError(f"{path} does not exist; give an image folder or an .npz file")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path} is neither a folder nor an .npz file")
    try:
        with zipfile.ZipFile(path) as zf:
            names = {n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy")}
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"cannot read {path} as .npz ({err})") from None
    if "arr_0" in names:
        # ADM reference batches hold images and statistics; the images win, so every metric
        # is computed with this network rather than mixed with another tool's statistics.
        npz = _NpzImages(path)
        return Source(path, "images_npz", npz.shape[0], npz=npz)
    if {"mu", "sigma"} <= names:
        return Source(path, "stats_npz", stats=read_stats(path))
    raise InputError(
        f"{path} holds {sorted(names) or 'no arrays'}; expected arr_0 (uint8 images N x H x W x 3) or mu and sigma"
    )


def read_stats(path: str | Path) -> dict[str, np.ndarray]:
    """``mu``/``sigma`` (and ``mu_s``/``sigma_s`` when present) from a statistics .npz, checked: numbers of
    shapes (d,) and (d, d), finite, sigma symmetric and positive semi-definite (``check_covariance``)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            raw = {k: f[k] for k in STATS_KEYS if k in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"cannot read statistics from {path} ({err})") from None
    for key, value in raw.items():
        if value.dtype.kind not in "fiu":
            raise InputError(f"{path}: {key} is {value.dtype}, not real numbers; recompute the statistics")
    stats = {k: np.asarray(v, dtype=np.float64) for k, v in raw.items()}
    for mu_key, sigma_key in (("mu", "sigma"), ("mu_s", "sigma_s"), ("mu_d", "sigma_d")):
        if mu_key not in stats:
            continue
        mu, sigma = stats[mu_key], stats.get(sigma_key)
        d = mu.shape[0] if mu.ndim == 1 else -1
        if sigma is None or d < 1 or sigma.shape != (d, d):
            shape = None if sigma is None else sigma.shape
            raise InputError(f"{path}: {mu_key} has shape {mu.shape} but {sigma_key} {shape}; expected (d,) and (d, d)")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise InputError(f"{path}: {mu_key}/{sigma_key} contain NaN or inf; recompute the statistics")
        problem = check_covariance(sigma)
        if problem is not None:
            raise InputError(f"{path}: {sigma_key} is not a covariance matrix ({problem}); recompute the statistics")
    return stats


def check_covariance(sigma: np.ndarray, tol: float = 1e-6) -> str | None:
    """What keeps ``sigma`` from being a covariance, or None: symmetric to ``tol`` of its largest entry,
    eigenvalues above ``-tol`` times their mean (room for the round-off of a rank-deficient estimate).

    Positive semi-definiteness is tested with one Cholesky factorisation of sigma + tol * mean(eig) * I
    (a fraction of an eigendecomposition's time at 2048 dimensions); the eigenvalues are computed only
    to name the smallest when it fails.
    """
    scale = float(np.abs(sigma).max())
    if scale == 0.0:
        return None
    asymmetry = float(np.abs(sigma - sigma.T).max())
    if asymmetry > tol * scale:
        return f"not symmetric: entries differ from their transposes by up to {asymmetry:.3g}"
    mean_eig = float(np.trace(sigma)) / len(sigma)
    try:
        if mean_eig <= 0:
            raise np.linalg.LinAlgError
        np.linalg.cholesky((sigma + sigma.T) / 2 + tol * mean_eig * np.eye(len(sigma)))
    except np.linalg.LinAlgError:
        smallest = float(np.linalg.eigvalsh((sigma + sigma.T) / 2)[0])
        return f"not positive semi-definite: smallest eigenvalue {smallest:.3g}"
    return None


class _NpzImages:
    """Lazy access to ``arr_0`` of an .npz, memory-mapped when stored uncompressed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._array: np.ndarray | None = None
        self.offset: int | None = None
        try:
            with zipfile.ZipFile(path) as zf:
                info = zf.getinfo("arr_0.npy")
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        self.shape, fortran, self.dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        self.shape, fortran, self.dtype = np.lib.format.read_array_header_2_0(f)
                    header_len = f.tell()
            nbytes = int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize
            if info.file_size != header_len + nbytes:
                raise InputError(f"{path}: arr_0's header describes shape {tuple(self.shape)} ({nbytes} bytes) but "
                                 f"holds {info.file_size - header_len} bytes; the file is damaged: write it again")
            if info.compress_type == zipfile.ZIP_STORED and not fortran and not info.flag_bits & 0x1:
                with open(path, "rb") as raw:
                    raw.seek(info.header_offset + 26)
                    name_len, extra_len = struct.unpack("<HH", raw.read(4))
                self.offset = info.header_offset + 30 + name_len + extra_len + header_len
                if self.offset + nbytes > os.path.getsize(path):
                    raise InputError(f"{path} is cut short: arr_0 needs {nbytes} bytes past offset {self.offset}; "
                                     "the file is damaged: write it again")
        except InputError:
            raise
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as err:
            raise InputError(f"cannot read arr_0 from {path} ({err})") from None
        shape = tuple(self.shape)
        if self.dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or min(shape) == 0:
            raise InputError(
                f"{path}: arr_0 is {self.dtype} of shape {shape}; expected uint8 images of shape (N, H, W, 3), "
                "none of them 0"
            )

    def array(self) -> np.ndarray:
        if self._array is None:
            if self.offset is not None:
                self._array = np.memmap(
                    self.path, dtype=np.uint8, mode="r", offset=self.offset, shape=tuple(self.shape)
                )
            else:
                with np.load(self.path, allow_pickle=False) as f:
                    self._array = f["arr_0"]
        return self._array

    def __getstate__(self) -> dict:
        # Worker processes reopen the map instead of receiving a pickled copy of the images.
        return {**self.__dict__, "_array": None}


class ImageDataset(torch.utils.data.Dataset):
    """Items are ``(index, uint8 tensor (3, H, W) or None, error message or None)``.

    A file that cannot be decoded is reported, not raised: an exception raised in a worker
    process reaches the caller with a multi-line traceback in its message.
    """

    def __init__(self, source: Source) -> None:
        self.source = source

    def __len__(self) -> int:
        return int(self.source.num_images or 0)

    def __getitem__(self, i: int):
        if self.source.kind == "images_npz":
            image = np.ascontiguousarray(self.source.npz.array()[i].transpose(2, 0, 1))
            return i, torch.from_numpy(image), None
        path = self.source.files[i]
        try:
            with Image.open(path) as img:
                rgb = np.asarray(as_rgb(img))  # pytorch-fid's convert("RGB"), but 16-bit grey is not read as white
        except Exception as err:  # PIL raises many types for broken files
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            return i, None, f"cannot read image {path} ({reason}); remove or re-save it"
        return i, torch.from_numpy(rgb.transpose(2, 0, 1).copy()), None


@dataclass
class Batch:
    """Decoded images: one uint8 tensor (B, 3, H, W), or a list when sizes differ."""

    images: torch.Tensor | list[torch.Tensor]
    error: str | None = None

    def __len__(self) -> int:
        return len(self.images)


def _collate(items: list) -> Batch:
    errors = [err for _, _, err in items if err is not None]
    if errors:
        return Batch([], errors[0])
    images = [img for _, img, _ in items]
    if all(img.shape == images[0].shape for img in images):
        return Batch(torch.stack(images))
    return Batch(images)


def default_num_workers() -> int:
    """pytorch-fid's default: one decoding process per available CPU, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(8, cpus)


def image_batches(source: Source, batch_size: int, num_workers: int, pin_memory: bool = False):
    """A DataLoader over the images of a folder or images .npz, in input order."""
    return torch.utils.data.DataLoader(
        ImageDataset(source),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
    )


def _writable(path: str | Path) -> Path:
    """The output path, refused when its folder does not exist (nothing is created behind the user)."""
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: folder {path.parent} does not exist")
    return path


def check_destination(path: str | Path | None, flag: str) -> None:
    """Refuse an output whose folder does not exist, before any image is read (whether it may replace an
    existing file is ``outputs.check_outputs``'s rule)."""
    if path is not None:
        _writable(path)


def is_statistics(path: Path) -> bool:
    """Whether ``path`` is a statistics .npz (``mu`` and ``sigma``, no images): what --save-stats may replace."""
    names = npz_arrays(path)
    return {"mu", "sigma"} <= names and "arr_0" not in names


def is_fid_result(path: Path) -> bool:
    """Whether ``path`` holds a `sit fid --json` result: what --json may replace."""
    value = json_object(path)
    return value is not None and {"metrics", "inputs", "settings"} <= set(value)


STATISTICS = Kind("a statistics .npz (mu, sigma) that `sit fid --save-stats` wrote", is_statistics)
FID_RESULT = Kind("a `sit fid --json` result", is_fid_result)


def save_stats(path: str | Path, stats: dict[str, np.ndarray]) -> Path:
    """Write statistics atomically as pytorch-fid reads them (``mu``, ``sigma``; plus ``mu_s``, ``sigma_s``)."""
    path = _writable(path)
    atomic.save_npz(path, **{k: np.asarray(v, dtype=np.float64) for k, v in stats.items()})
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` atomically as indented JSON."""
    path = _writable(path)
    atomic.write_json(path, obj)
    return path
