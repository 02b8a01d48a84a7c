"""A searched solver on disk (``transport.searched.SearchedSolver``): a small safetensors file beside the run.

    write_solver("runs/digits/solver-nfe10.safetensors", solver)    # atomic
    solver = read_solver("runs/digits/solver-nfe10.safetensors")    # InputError if it is not one

Tensors ``times`` (N + 1,) and ``coefficients`` (N, N), float64; metadata ``format`` (``searched.FORMAT``) and
``metadata``, the solver's metadata as JSON (the model's fingerprint, interpolant, interval, guidance, how it was
searched). ``sit search-solver`` writes it, ``sit sample --method searched --solver FILE`` reads it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sitcli import atomic
from sitcli.errors import InputError
from sitcli.transport.searched import SearchedSolver


def write_solver(path: str | Path, solver: SearchedSolver) -> None:
    """Write ``solver`` to ``path`` atomically (the caller decides whether an existing file may be replaced)."""
    from safetensors.torch import save_file

    data = solver.to_dict()
    tensors = {"times": data["times"].contiguous(), "coefficients": data["coefficients"].contiguous()}
    metadata = {"format": data["format"], "metadata": json.dumps(data["metadata"], sort_keys=True)}
    atomic.atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_solver(path: str | Path) -> SearchedSolver:
    """The searched solver in ``path``; InputError naming the file when it is missing or not one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--solver {path} does not exist: pass the file sit search-solver wrote")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(metadata.get("metadata", "{}"))
    except Exception as err:  # noqa: BLE001 - safetensors and json raise their own kinds on damaged files
        raise InputError(f"--solver {path} is not a readable solver file ({type(err).__name__}): pass the file "
                         "sit search-solver wrote") from None
    if set(tensors) != {"times", "coefficients"} or not isinstance(meta, dict):
        raise InputError(f"--solver {path} holds {sorted(tensors)}, not a searched solver's times and coefficients")
    return SearchedSolver.from_dict({"format": metadata.get("format"), **tensors, "metadata": meta})


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (recorded in sample.json beside the solver's path)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
