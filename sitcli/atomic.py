"""Atomic writes: text, JSON, images, npz and safetensors go to a temporary file in the target's
folder and are renamed over it, so a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from sitcli.errors import InputError


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it over ``path``.

    The file gets the mode an ordinary ``open`` would give it (0666 less the umask: 0644 under umask 022),
    not mkstemp's private 0600. An OSError (a full disk, a read-only folder) names ``path``, not the
    temporary file, and leaves nothing behind.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise with_path(err, path) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise with_path(err, path, tmp) from None
        raise


def with_path(err: OSError, path: str | Path, tmp: str | None = None) -> OSError:
    """``err`` naming ``path`` when it names no file or only the temporary one."""
    if err.filename is not None and str(err.filename) != str(tmp):
        return err
    return type(err)(err.errno, err.strerror or str(err), str(path))


def reserve(path: str | Path) -> None:
    """Give the file at ``path`` disk blocks for its whole size (``posix_fallocate``), so that writing it through a
    memory map cannot meet a full disk: that is an OSError naming ``path`` here, where a map would die of SIGBUS."""
    if not hasattr(os, "posix_fallocate"):  # not on Linux: nothing to reserve with
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, max(os.fstat(f.fileno()).st_size, 1))
        except OSError as err:
            if err.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # a file system without it: glibc has no fallback
                return
            raise with_path(err, path) from None


@contextlib.contextmanager
def storage_errors(path: str | Path, staging: str | Path | None = None) -> Iterator[None]:
    """Raise the failure of a writer that does not raise OSError (safetensors' SafetensorError, torch.save's
    RuntimeError) as the OSError it stands for, naming ``path`` (also for an OSError about a file under the
    temporary ``staging`` folder the result is written in): a full disk is one line, not a traceback."""
    try:
        yield
    except OSError as err:
        if staging is not None and err.filename is not None and Path(err.filename).is_relative_to(staging):
            raise type(err)(err.errno, err.strerror or str(err), str(path)) from None
        raise
    except Exception as err:  # noqa: BLE001 - only the writers' I/O failures are turned into OSError
        text = str(err)
        code = re.search(r"\(os error (\d+)\)", text)
        if code:
            number = int(code.group(1))
            raise OSError(number, os.strerror(number), str(path)) from None
        if "inline_container" in text or "PytorchStreamWriter" in text:  # torch.save's writer gives no errno
            if shutil.disk_usage(Path(path).parent if Path(path).parent.exists() else ".").free < 1 << 20:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
            raise OSError(errno.EIO, "the file could not be written (a full disk, a quota or a file size limit)",
                          str(path)) from None
        raise


def check_can_create(folder: str | Path, flag: str) -> None:
    """Refuse a ``folder`` (given as ``flag``) that is a file, or lies under one, before anything is written."""
    folder = Path(folder)
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                where = "is a file" if part == folder else f"lies under {part}, which is a file"
                raise InputError(f"{flag} {folder} {where}, not a folder: pick another {flag}")
            return


def honour_umask(path: str | Path) -> None:
    """Give ``path`` and everything under it the modes the umask asks for: mkdtemp makes private
    folders, and some writers (safetensors) private files, where a colleague should be able to read."""
    path = Path(path)
    for part in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not part.is_symlink():
            os.chmod(part, folder_mode() if part.is_dir() else file_mode())


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from ``open``: 0o666 less the umask."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """The mode a new folder gets from ``mkdir``: 0o777 less the umask (mkdtemp's is 0o700)."""
    return 0o777 & ~_umask()


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON with a final newline."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


# The image files sit writes, by suffix: Pillow's formats that hold 8-bit grey and RGB images.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
                 ".tiff": "TIFF"}


def save_image(path: str | Path, image) -> None:
    """Save a PIL image in the format of its suffix (``IMAGE_FORMATS``)."""
    fmt = IMAGE_FORMATS[Path(path).suffix.lower()]
    atomic_write(path, lambda tmp: image.save(tmp, format=fmt))


def save_npz(path: str | Path, **arrays) -> None:
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
