"""The official SiT and DiT code's .pt files, read without executing pickled code.

Two shapes exist: a raw state dict (the published ``SiT-XL-2-256x256.pt``, ``DiT-XL-2-256x256.pt``)
and a training checkpoint ``{"model", "ema", "opt", "args"}`` whose ``args`` is the training script's
``argparse.Namespace``. Both are pickles. They are read with ``torch.load(weights_only=True)``,
PyTorch's restricted unpickler (tensors, numbers, strings, containers), with exactly one class added
to its allow-list, ``argparse.Namespace``; a file that needs anything else is refused before any of
it runs. The SiT and DiT layouts are identical, so which one a raw file holds is told by its name
(``SiT-…`` / ``DiT-…``) or by ``--from``; a training checkpoint tells by its ``args``. REPA's files
(the same layout plus ``projectors.*``) are told by those keys or their args and read into sit's
time by ``formats.repa``; Decoupled MeanFlow's (``logvar_linear.*``, or args with ``dmf_depth``) by ``formats.dmf``.
RAE's stage-2 files (DiT^DH, told by ``s_embedder.*``) are read by ``formats.rae``.
"""

from __future__ import annotations

import argparse
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from sitcli.errors import InputError
from sitcli.formats import DIT_TRANSPORT, SIT_DEFAULT_TRANSPORT, Checkpoint, StateDict, strip_prefixes
from sitcli.formats.architecture import heads_from_model_name, infer_architecture
from sitcli.formats.dmf import dmf_depth_from, dmf_to_sit, is_dmf
from sitcli.formats.rae import is_ddt, rae_checkpoint
from sitcli.formats.repa import is_repa, repa_transport, to_sit_time

ALLOWED_CLASSES = [argparse.Namespace]
TRAINING_KEYS = ("model", "ema")
PATH_TYPES = ("linear", "gvp", "vp")  # the official --path-type values (Linear, GVP, VP), lower-cased


def safe_load(path: Path) -> Any:
    """``torch.load`` restricted to tensors, plain containers and ``argparse.Namespace``.

    A pickle that asks for anything else (``os.system``, ``builtins.eval``, ...) is refused as unsafe,
    naming what it tried to import; nothing in it runs.
    """
    try:
        with torch.serialization.safe_globals(ALLOWED_CLASSES), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # the refusal below says more
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.findall(r"(?:GLOBAL|global:) (?:GLOBAL )?([\w.]+)", str(err))
        imports = list(dict.fromkeys(found or [g for g in pickle_globals(path) if not g.startswith(SAFE_MODULES)]))
        if imports:
            raise InputError(
                f"{path} was refused as unsafe: its pickle imports {', '.join(imports)}, which no checkpoint needs "
                f"(only tensors, plain containers and argparse.Namespace are loaded); nothing in it was run. Use it "
                f"only if you trust its source, and then re-save its weights as safetensors or a plain state dict"
            ) from None
        raise InputError(
            f"{path} is not a PyTorch checkpoint (it cannot be unpickled safely): check the path"
        ) from None
    except Exception as err:  # noqa: BLE001 - torch raises many kinds (struct.error, KeyError, ...) on non-checkpoints
        raise InputError(f"{path} is not a PyTorch checkpoint ({type(err).__name__}): check the path") from None


# Modules whose globals a checkpoint's pickle legitimately names (tensors' rebuild functions, OrderedDict, ...).
SAFE_MODULES = ("torch.", "collections.", "argparse.", "_codecs.", "numpy.")


def pickle_globals(path: Path) -> list[str]:
    """The ``module.name`` globals a pickle (or the pickles in a torch zip file) imports, read opcode by
    opcode with ``pickletools`` and never executed."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                blobs = [z.read(name) for name in z.namelist() if name.endswith(".pkl")]
        else:
            blobs = [Path(path).read_bytes()]
    except (OSError, zipfile.BadZipFile):
        return []
    found = []
    for blob in blobs:
        stack, memo = [], []  # the strings pushed, and the memo, enough to follow STACK_GLOBAL's two arguments
        try:
            for op, arg, _ in pickletools.genops(blob):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(stack) >= 2:
                    found.append(f"{stack[-2]}.{stack[-1]}")
                elif op.name == "MEMOIZE" and stack:
                    memo.append(stack[-1])
                elif op.name in ("BINGET", "LONG_BINGET", "GET") and int(arg) < len(memo):
                    stack.append(memo[int(arg)])
                elif isinstance(arg, str):
                    stack.append(arg)
        except Exception:  # noqa: BLE001 - a damaged pickle: report what was read up to the damage
            pass
    return found


def classify(obj: Any) -> str:
    """ "raw" for a state dict, "training" for {"model"/"ema", ...}, else "" (not a checkpoint)."""
    if not isinstance(obj, dict) or not obj:
        return ""
    if any(k in obj for k in TRAINING_KEYS) and all(isinstance(obj.get(k, {}), dict) for k in TRAINING_KEYS):
        return "training"
    if all(isinstance(k, str) for k in obj) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "raw"
    return ""


def kind_from_name(path: Path) -> str | None:
    """ "sit" or "dit" when the file name says so (SiT-XL-2-256x256.pt, DiT-B-4.pt, ...), else None."""
    match = re.match(r"(sit|dit)[-_]", path.name.lower())
    return match.group(1) if match else None


def read_official(path: Path, kind: str | None = None, num_heads: int | None = None) -> Checkpoint:
    """Read an official SiT (``kind="sit"``) or DiT (``kind="dit"``) .pt file.

    ``kind=None`` decides from the training args or the file name and refuses when neither tells.
    """
    obj = safe_load(path)
    shape = classify(obj)
    if not shape:
        raise InputError(
            f"{path} is a pickle but not a SiT/DiT checkpoint: expected a state dict of tensors or a training "
            f"checkpoint {{'model', 'ema', 'opt', 'args'}}, got {_summary(obj)}"
        )
    args = vars(obj.get("args")) if shape == "training" and isinstance(obj.get("args"), argparse.Namespace) else {}
    first_weights = (obj.get("ema") or obj.get("model")) if shape == "training" else obj
    if is_ddt(strip_prefixes(first_weights or {})):  # RAE's stage-2 DiT^DH (formats.rae)
        return rae_checkpoint(obj, path, num_heads)
    dmf = is_dmf(strip_prefixes(first_weights or {}), args)
    repa = not dmf and is_repa(strip_prefixes(first_weights or {}), args)
    if repa or dmf:
        kind = "sit"
    if kind is None:
        kind = _kind_from_args(args) or kind_from_name(path)
        if kind is None:
            raise InputError(
                f"{path}: SiT and DiT files have the same layout and neither its name nor its contents tell which "
                f"this is: name it SiT-....pt or DiT-....pt, or pass --from official (SiT) or --from dit"
            )
    if shape == "training":
        weights = {k: strip_prefixes(obj[k]) for k in TRAINING_KEYS if isinstance(obj.get(k), dict) and obj[k]}
        if not weights:
            raise InputError(f"{path}: a training checkpoint with empty 'model' and 'ema' weights")
    else:
        weights = {"ema": strip_prefixes(obj)}
    if repa:  # its time runs the other way: fold the map into the weights (formats.repa)
        weights = {name: to_sit_time(state_dict) for name, state_dict in weights.items()}
    if dmf:  # REPA's time too, and a training-only head (formats.dmf)
        weights = {name: dmf_to_sit(state_dict, str(path)) for name, state_dict in weights.items()}
    if num_heads is None:
        num_heads = heads_from_model_name(args.get("model"))
    first = next(iter(weights.values()))
    arch = infer_architecture(first, num_heads, where=str(path))
    if dmf and dmf_depth_from(args) is not None:
        arch["dmf_depth"] = dmf_depth_from(args)
    for name, state_dict in weights.items():
        if set(state_dict) != set(first):
            raise InputError(f"{path}: its {name!r} weights have different keys from its other weights")
    if args.get("image_size") and args["image_size"] // 8 != arch["input_size"]:
        raise InputError(
            f"{path}: args.image_size={args['image_size']} implies latents of {args['image_size'] // 8}, but the "
            f"position embedding is for {arch['input_size']}: the file is inconsistent"
        )
    transport = (dict(DIT_TRANSPORT) if kind == "dit" else repa_transport(args) if repa or dmf
                 else _sit_transport(args))
    what = "training checkpoint" if shape == "training" else "weights"
    name = "DMF" if dmf else "REPA SiT" if repa else "DiT" if kind == "dit" else "SiT"
    extra = {"image_size": int(args["resolution"])} if (repa or dmf) and args.get("resolution") else {}
    return Checkpoint(
        weights,
        arch,
        kind,
        transport,
        source=f"{path} ({name} {what})",
        format="dmf" if dmf else "repa" if repa else "dit" if kind == "dit" else "official",
        extra=extra,
        transport_assumed=kind == "sit" and "path_type" not in args and not repa,
    )


def write_official(state_dict: StateDict, path: Path) -> None:
    """Save a raw state dict as the published files are: ``torch.save`` of name -> tensor."""
    torch.save({k: v.detach().contiguous() for k, v in state_dict.items()}, path)


def _kind_from_args(args: dict) -> str | None:
    model = str(args.get("model", ""))
    if model.startswith("DiT"):
        return "dit"
    if model.startswith("SiT") or "path_type" in args:
        return "sit"
    return None


def _sit_transport(args: dict) -> dict[str, Any]:
    """sit Transport settings from the official SiT training flags (defaults: linear, velocity)."""
    transport = dict(SIT_DEFAULT_TRANSPORT)
    if "path_type" in args:
        path_type = str(args["path_type"]).lower()
        if path_type not in PATH_TYPES:
            raise InputError(f"unknown official path_type {args['path_type']!r}: expected Linear, GVP or VP")
        transport["interpolant"] = path_type
    if args.get("prediction"):
        transport["prediction"] = str(args["prediction"]).lower()
    if args.get("loss_weight"):
        transport["loss_weight"] = str(args["loss_weight"]).lower()
    for key in ("train_eps", "sample_eps"):
        if args.get(key) is not None:
            transport[key] = float(args[key])
    return transport


def _summary(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = ", ".join(repr(k) for k in list(obj)[:4])
        return f"a dict with keys {keys}" if keys else "an empty dict"
    return f"a {type(obj).__name__}"
