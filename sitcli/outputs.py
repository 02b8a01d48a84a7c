"""Where a job may write: one rule for every output path a command declares, checked before it reads anything.

    check_outputs([Output(cfg.save_stats, "--save-stats", STATISTICS)], reads={"A": cfg.a}, overwrite=cfg.overwrite)

1. An output is never a path the command reads, nor a folder that holds one, with or without --overwrite.
2. Two outputs of one command never share a path.
3. An existing path is replaced only when it is of the output's own kind (a previous output of the same
   sort, ``Kind.holds``) and the command was asked to (``overwrite``); a path of another kind is never
   replaced, so its refusal does not suggest --overwrite.

Paths are compared after resolving links, so a link to an input is that input.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from sitcli.errors import InputError


@dataclass(frozen=True)
class Kind:
    """A sort of output: its name in messages ("a statistics .npz") and whether an existing path is one."""

    name: str
    holds: Callable[[Path], bool]


@dataclass(frozen=True)
class Output:
    """One path a command writes (None: not asked for), the flag that names it, and its kind."""

    path: str | Path | None
    flag: str
    kind: Kind


def check_outputs(outputs: Iterable[Output], reads: dict[str, str | Path | None], overwrite: bool) -> None:
    """Refuse, before anything is read or written, an output that is an input (``reads``: label -> path), holds
    one, shares its path with another output, or would replace a path that is not of its kind or without
    ``overwrite``."""
    inputs = {label: _resolved(p) for label, p in reads.items() if p is not None}
    seen: dict[Path, str] = {}
    for out in outputs:
        if out.path is None:
            continue
        path = Path(out.path).expanduser()
        where = _resolved(path)
        for label, read in inputs.items():
            if where == read:
                raise InputError(f"{out.flag} {path} is {label}, which this command reads: pick another destination")
            if read.is_relative_to(where):
                raise InputError(f"{out.flag} {path} holds {label} ({reads[label]}), which this command reads: "
                                 "pick another destination")
        if where in seen:
            raise InputError(f"{out.flag} and {seen[where]} name the same path {path}: give each its own")
        seen[where] = out.flag
        if not (path.exists() or path.is_symlink()):
            continue
        if not out.kind.holds(path):
            raise InputError(f"{out.flag} {path} exists and is not {out.kind.name}; sit replaces only its own "
                             "outputs of that kind: pick another destination")
        if not overwrite:
            raise InputError(
                f"{out.flag} {path} already exists: pass --overwrite to replace it, or pick another destination"
            )


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def npz_arrays(path: Path) -> set[str]:
    """The array names of an .npz file (empty when it is not one)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return {n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy")}
    except (zipfile.BadZipFile, OSError):
        return set()


def json_object(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it holds none."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None
