"""One road from any checkpoint to a model ready for inference: ``load_model``.

    from sitcli.loading import load_model
    loaded = load_model("runs/digits")                 # newest checkpoint, EMA weights
    x, nfe = sample_ode(loaded.transport, loaded.model, x0, model_kwargs={"y": y})

Accepted (``src_format`` names the format where it cannot be detected):
    sit        a run folder (its newest complete checkpoint), a checkpoint folder, a .safetensors file
    official   the official SiT code's .pt (raw state dict, or training checkpoint {model, ema, opt, args});
               REPA's .pt (the same plus ``projectors.*``), detected and mapped to sit's time (``formats.repa``);
               Decoupled MeanFlow's .pt (``formats.dmf``), which needs ``dmf_depth`` where it does not record it
    dit        the DiT code's .pt: the same layout, trained as a DDPM (``sitcli.transport.ddpm``)
    diffusers  a diffusers folder of diffusers' ``DiTTransformer2DModel`` or sitcli's ``SiTTransformer2DModel``
    rae        RAE's stage-2 .pt (a DiT^DH, ``sitcli.ddt``; bare or {"ema", "model", ...}), detected by its keys

The architecture always comes from the tensors' shapes (``formats.architecture``); the transport
and data settings from what the file records (a run's config.json, the official training args,
sit's record in a diffusers config), else the defaults, which ``transport`` overrides may replace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from sitcli.config import EXTERNAL, TrainConfig
from sitcli.errors import InputError
from sitcli.formats import Checkpoint
from sitcli.formats.architecture import assumed_latent_space, model_with_weights, registry_name
from sitcli.formats.diffusers import model_folder, read_diffusers
from sitcli.formats.official import read_official
from sitcli.formats.rae import build_ddt
from sitcli.formats.sitrun import TRANSPORT_KEYS, is_sit_source, read_sit, run_config
from sitcli.transport import Transport
from sitcli.transport.ddpm import DIT_NUM_TIMESTEPS, dit_transport, timestep_from_time

FORMATS = ("sit", "official", "dit", "diffusers", "rae")


@dataclass
class Loaded:
    """A model ready for inference and what sampling needs to know about it."""

    model: nn.Module  # called as model(x, t, y) in sit's time (t = 0 noise, 1 data); eval, no gradients
    transport: Transport
    config: TrainConfig  # the settings it was trained with (``data="external"`` when not a sit run)
    weights: Path  # the file the weights came from (or the file / folder given, when it holds one set)
    checkpoint: Checkpoint  # the tensors as read, with architecture, kind and source


def read_checkpoint(path: str | Path, src_format: str | None = None, num_heads: int | None = None,
                    dmf_depth: int | None = None) -> Checkpoint:
    """Any supported checkpoint as a ``Checkpoint``; ``src_format=None`` detects the format. ``dmf_depth``: the
    blocks that see t of a Decoupled MeanFlow model whose file does not record it (a sit run records it)."""
    checkpoint = _read_checkpoint(Path(path), src_format, num_heads)
    arch, recorded = checkpoint.arch, checkpoint.arch.get("dmf_depth")
    if dmf_depth is None:
        if checkpoint.format == "dmf" and recorded is None:
            raise InputError(f"{path} is a Decoupled MeanFlow model whose file does not say how many blocks see t: "
                             f"pass --dmf-depth N (DMF-XL/2: 20)")
        return checkpoint
    if recorded is not None and recorded != dmf_depth:
        raise InputError(f"{path} records dmf_depth={recorded}: drop --dmf-depth {dmf_depth}")
    if arch.get("mean_flow") or not 0 <= dmf_depth <= arch["depth"]:
        raise InputError(f"--dmf-depth {dmf_depth}: {path} has {arch['depth']} blocks"
                         + (" and a mean-flow r embedder (another form of the second time)" if arch.get("mean_flow")
                            else f"; pass 0..{arch['depth']}"))
    arch["dmf_depth"] = dmf_depth
    return checkpoint


def _read_checkpoint(path: Path, src_format: str | None, num_heads: int | None) -> Checkpoint:
    if src_format is not None and src_format not in FORMATS:
        raise InputError(f"--from {src_format!r} is not a format: choose one of {', '.join(FORMATS)}")
    if not path.exists():
        raise InputError(
            f"{path} does not exist: pass a run folder, a checkpoint folder or file, or a diffusers folder"
        )
    if path.is_dir():
        if src_format in ("official", "dit", "rae"):
            raise InputError(f"--from {src_format} expects a .pt file, but {path} is a folder")
        if src_format in (None, "diffusers") and model_folder(path) is not None:
            return read_diffusers(path)
        if src_format in (None, "sit") and is_sit_source(path):
            return read_sit(path, num_heads)
        wanted = {"diffusers": "a diffusers model folder", "sit": "a sit run or checkpoint folder"}
        raise InputError(f"{path} is not {wanted.get(src_format, 'a sit run, checkpoint or diffusers folder')}")
    if src_format == "diffusers":
        raise InputError(f"--from diffusers expects a folder, but {path} is a file")
    if path.suffix == ".safetensors":
        if src_format not in (None, "sit"):
            raise InputError(f"{path} is a safetensors file, not an official .pt: drop --from or pass --from sit")
        return read_sit(path, num_heads)
    if src_format == "sit":
        raise InputError(f"--from sit expects a run folder, checkpoint folder or .safetensors file, not {path.name}")
    kind = {"official": "sit", "dit": "dit"}.get(src_format or "")
    checkpoint = read_official(path, kind, num_heads)
    if src_format == "rae" and checkpoint.format != "rae":
        raise InputError(f"--from rae: {path} holds no DiT^DH (RAE stage-2) weights; drop --from")
    if src_format in ("official", "dit") and checkpoint.format == "rae":
        raise InputError(f"--from {src_format}: {path} holds RAE's DiT^DH weights; pass --from rae or drop --from")
    return checkpoint


def load_model(
    ckpt: str | Path,
    ema: bool = True,
    src_format: str | None = None,
    model: str | None = None,
    num_heads: int | None = None,
    dmf_depth: int | None = None,
    **transport: Any,
) -> Loaded:
    """Load ``ckpt`` for inference (EMA weights unless ``ema=False``).

    Args:
        model: a size-table name (``SiT-XL/2``) to check the architecture against; never needed.
        num_heads: attention heads, for a hidden size outside the size table (shapes do not tell).
        dmf_depth: the blocks that see t of a Decoupled MeanFlow file that does not record it.
        transport: ``interpolant``, ``prediction``, ``sample_eps`` for a checkpoint that does not
            record its transport; one that does refuses a different value.
    """
    checkpoint = read_checkpoint(ckpt, src_format, num_heads, dmf_depth)
    transport = {k: v for k, v in transport.items() if v is not None}
    config = _config(checkpoint, str(ckpt))
    if model is not None and model != config.model:
        found = config.model or "custom architecture (not in the size table)"
        raise InputError(f"{ckpt} holds a {found}, not a {model}; drop --model")
    settings = _transport_settings(checkpoint, config, transport, str(ckpt))
    net: nn.Module = build_network(checkpoint.arch, checkpoint.state_dict(ema)).requires_grad_(False)
    if checkpoint.kind == "dit":
        net = DiscreteTimestepModel(net, settings["num_timesteps"])
        tr = dit_transport(
            settings["num_timesteps"],
            settings["beta_start"],
            settings["beta_end"],
            sample_eps=settings.get("sample_eps"),
        )
    else:
        tr = Transport(**{k: v for k, v in settings.items() if k in TRANSPORT_KEYS})
    weights = Path(checkpoint.files.get(checkpoint.used(ema), ckpt))
    return Loaded(net.eval(), tr, config, weights, checkpoint)


def build_network(arch: dict, state_dict: dict) -> nn.Module:
    """The network of ``arch`` holding exactly these tensors: a DiT^DH (``sitcli.ddt``, RAE's names) or a SiT."""
    return build_ddt(arch, state_dict) if "head_width" in arch else model_with_weights(arch, state_dict)


def _config(checkpoint: Checkpoint, source: str) -> TrainConfig:
    """The training settings: a sit run's own, else what a converted run of it would record."""
    if checkpoint.run_config is not None:
        return TrainConfig.from_dict(checkpoint.run_config, source=f"{source} (config.json)")
    if registry_name(checkpoint.arch) is not None:
        return TrainConfig.from_dict(run_config(checkpoint, source), source=source)
    arch = checkpoint.arch  # outside the size table: only the shapes matter for sampling
    image_size, latent_scale = assumed_latent_space(arch["in_channels"], arch["input_size"])
    return TrainConfig(
        data=EXTERNAL,
        model=None,
        learn_sigma=arch.get("learn_sigma", False),
        in_channels=arch["in_channels"],
        input_size=arch["input_size"],
        num_classes=arch["num_classes"],
        image_size=checkpoint.extra.get("image_size") or image_size,
        latent_scale=checkpoint.extra.get("latent_scale") or latent_scale,
        vae=checkpoint.extra.get("vae"),
        time_shift=checkpoint.extra.get("time_shift", 1.0),
    )


def _transport_settings(checkpoint: Checkpoint, config: TrainConfig, given: dict, source: str) -> dict:
    settings = dict(checkpoint.transport)
    for name, value in given.items():
        recorded = getattr(config, name) if checkpoint.run_config is not None else settings.get(name)
        # sample_eps is a sampling choice wherever the file does not fix it (a run's config.json does).
        free = name == "sample_eps" and (checkpoint.run_config is None or checkpoint.kind == "dit")
        if checkpoint.transport_assumed or free:
            settings[name] = value
        elif value != recorded:
            raise InputError(f"{source} was trained with {name}={recorded}; drop --{name.replace('_', '-')} {value}")
    return settings


class DiscreteTimestepModel(nn.Module):
    """Calls a DiT-style network with sit's time: ``model(x, s(t), **kwargs)[:, :C]``.

    s(t) = N (1 - t) - 1 is DiT's timestep (``transport.ddpm``); the output keeps the first
    C = x.shape[1] channels, dropping a learned-sigma half when the network returns one. ``model``
    is any callable; when it is an ``nn.Module`` it becomes a submodule (moves with ``.to``).
    """

    def __init__(self, model: Callable, num_timesteps: int = DIT_NUM_TIMESTEPS):
        super().__init__()
        self.model = model
        self.num_timesteps = int(num_timesteps)

    def forward(self, x: torch.Tensor, t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.model(x, timestep_from_time(t, self.num_timesteps), *args, **kwargs)
        return out[:, : x.shape[1]]
