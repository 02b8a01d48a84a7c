"""Starting a few-step model from a trained flow SiT's weights: the first step of fine-tuning (``--init-from``).

    from sitcli.training.init_from import init_from_flow
    model = init_from_flow(SiT(**arch, dmf_depth=20), flow_state_dict)   # a DMF model that is the flow SiT at r = t

``sit train --init-from CKPT`` reads the source with ``read_source`` (before the presets: the run's model size is
the source's), checks it against the data and the transport with ``check_source`` (which records its sha256,
format and step in config.json), and starts model and EMA with ``init_from_flow``; a resumed run ignores it.

The few-step forms are ``SiT`` options (``models.SiT``: ``mean_flow``, ``dmf_depth``, ``omega_input``,
``velocity_head_depth``); the objectives that fine-tune them are in ``training.fewstep_losses``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from sitcli.config import TrainConfig
from sitcli.errors import InputError
from sitcli.formats.architecture import describe, registry_name
from sitcli.loading import Loaded, load_model
from sitcli.models import SiT


def init_from_flow(model: SiT, flow_state_dict: dict[str, torch.Tensor]) -> SiT:
    """Start a few-step ``model`` from a trained flow SiT's weights (fine-tuning, ``model`` changed in place).

    ``model`` is the flow SiT's architecture with any of ``mean_flow``, ``dmf_depth``, ``omega_input``,
    ``velocity_head_depth``. Every backbone tensor is copied; the new parts start so that the model
    computes the flow model's output exactly, bit for bit, at r = t and omega = 1 (and, for ``mean_flow``
    and ``omega_input``, at every r and omega, until the first update):

        dmf_depth             nothing new: r goes through the shared ``t_embedder``, as in DMF's fine-tuning
        r_embedder,           the last linear layer zero (a zero embedding added to c), the first as
        omega_embedder          ``initialize_weights`` drew it; the zero layer gets gradients at once
        velocity_blocks.i,    copies of blocks.(depth - k + i) and of ``final_layer``: iMF's two heads
        velocity_final_layer    start as the flow model's last k blocks

    The flow model's training-only ``projectors.*`` are copied when ``model`` has them and skipped
    otherwise; any other key that does not fit is refused (ValueError).
    """
    target = model.state_dict()
    foreign = sorted(k for k in flow_state_dict if k not in target and not k.startswith("projectors."))
    if foreign:
        raise ValueError(f"not weights of this SiT's backbone: {foreign[:3]}")
    new = ("r_embedder.", "omega_embedder.", "velocity_blocks.", "velocity_final_layer.")
    missing = sorted(k for k in target if k not in flow_state_dict and not k.startswith(new + ("projectors.",)))
    if missing:
        raise ValueError(f"the flow model has no {missing[:3]}: a different architecture")
    state = dict(target)
    for key, value in flow_state_dict.items():
        if key in target:
            if value.shape != target[key].shape:
                raise ValueError(f"{key}: shape {tuple(value.shape)} in the flow model, "
                                 f"{tuple(target[key].shape)} here")
            state[key] = value
    for name in ("r_embedder", "omega_embedder"):
        if f"{name}.mlp.2.weight" in target and f"{name}.mlp.2.weight" not in flow_state_dict:
            state[f"{name}.mlp.2.weight"] = torch.zeros_like(target[f"{name}.mlp.2.weight"])
            state[f"{name}.mlp.2.bias"] = torch.zeros_like(target[f"{name}.mlp.2.bias"])
    first = len(model.blocks) - model.velocity_head_depth
    for key in target:
        if key in flow_state_dict:
            continue
        if key.startswith("velocity_blocks."):
            index, rest = key[len("velocity_blocks."):].split(".", 1)
            state[key] = flow_state_dict[f"blocks.{first + int(index)}.{rest}"]
        elif key.startswith("velocity_final_layer."):
            state[key] = flow_state_dict["final_layer." + key[len("velocity_final_layer."):]]
    model.load_state_dict(state)
    return model


#################################################################################
#                   --init-from: the source checkpoint of a run                 #
#################################################################################


def read_source(cfg: TrainConfig) -> Loaded:
    """Load ``cfg.init_from`` (any checkpoint ``sit sample`` reads: a sit run, an official SiT or REPA .pt, a
    diffusers folder; its EMA weights) and take the run's model size and learned-sigma layout from it.

    Refused (InputError): a DiT (a DDPM chain, not a flow), a model that is already a few-step one, a size
    outside the size table, or one that differs from a given ``--model``. Called before the presets fill
    ``cfg``, so that an unset ``--model`` is the source's."""
    loaded = load_model(cfg.init_from, ema=True)
    arch, source = loaded.checkpoint.arch, cfg.init_from
    if loaded.checkpoint.kind != "sit":
        raise InputError(f"--init-from {source} is a DiT (trained as a DDPM chain): pass a SiT flow model")
    form = [k for k in ("mean_flow", "omega_input", "velocity_head_depth") if arch.get(k)]
    form += ["dmf_depth"] if arch.get("dmf_depth") is not None else []
    if form:
        raise InputError(f"--init-from {source} is a few-step model already ({', '.join(form)}): pass the flow "
                         f"model it came from, or continue its run with --resume")
    name = registry_name(arch)
    if name is None:
        raise InputError(f"--init-from {source} holds a {describe(arch)}, outside the size table sit trains")
    if cfg.model is not None and cfg.model != name:
        raise InputError(f"--init-from {source} holds a {name}, not a {cfg.model}: drop --model")
    cfg.model, cfg.learn_sigma = name, arch["learn_sigma"]
    return loaded


def check_source(cfg: TrainConfig, loaded: Loaded) -> None:
    """Refuse a source whose data shape or transport differ from the run's (call once the data filled ``cfg``),
    then record what it is in ``cfg``: the sha256 of its weights file, its format and its training step."""
    arch, source = loaded.checkpoint.arch, cfg.init_from
    for name in ("in_channels", "input_size", "num_classes"):
        if arch[name] != getattr(cfg, name):
            raise InputError(f"--init-from {source} has {name}={arch[name]}, the data {cfg.data} gives "
                             f"{getattr(cfg, name)}: pass a source trained on data of this shape")
    theirs = (loaded.config.prediction, loaded.config.interpolant)
    if theirs != (cfg.prediction, cfg.interpolant):
        raise InputError(f"--init-from {source} predicts {theirs[0]} on the {theirs[1]} interpolant, this run "
                         f"{cfg.prediction} on {cfg.interpolant}: pass --interpolant {theirs[1]}, or another source")
    cfg.init_from_sha256 = file_sha256(loaded.weights)
    cfg.init_from_format = loaded.checkpoint.format
    cfg.init_from_step = next((int(s) for s in (loaded.weights.stem, loaded.weights.parent.name) if s.isdigit()), None)


def file_sha256(path: Path) -> str:
    """The sha256 of a file, or of a folder's files in name order (their names included)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path)).encode() + b"\0" if path.is_dir() else b"")
        with open(file, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()
