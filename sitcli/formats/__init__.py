"""Checkpoint formats that `sit convert` reads and writes, around one in-memory form.

Every reader returns a ``Checkpoint``: state dicts under the official SiT/DiT parameter names (which
are also sit's), the architecture as ``SiT`` constructor arguments, and what the network was trained
for (``kind``: "sit" for an interpolant transport, "dit" for the discrete DDPM chain). Writers take
one back. ``sitcli.loading`` and ``sitcli.convert`` choose the reader and check the result.

    architecture.py  the SiT architecture from tensor shapes (the one place it is inferred)
    official.py   .pt files of the official SiT and DiT code (raw weights or training checkpoints)
    repa.py       REPA's .pt files: the same layout plus projectors, with time reversed (read only)
    dmf.py        Decoupled MeanFlow's .pt files: REPA's time, a loss-weight head, DMF's form (read only)
    sitrun.py     sit run folders and checkpoint folders (config.json + safetensors)
    diffusers.py  diffusers folders: diffusers' own DiTTransformer2DModel and sitcli's SiT class
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from sitcli.errors import InputError
from sitcli.formats.architecture import StateDict
from sitcli.transport.ddpm import DIT_BETA_END, DIT_BETA_START, DIT_NUM_TIMESTEPS

# How a DiT checkpoint is recorded: the DDPM chain it was trained on (``sitcli.transport.ddpm``).
DIT_TRANSPORT: dict[str, Any] = {
    "interpolant": "ddpm",
    "prediction": "noise",
    "num_timesteps": DIT_NUM_TIMESTEPS,
    "beta_start": DIT_BETA_START,
    "beta_end": DIT_BETA_END,
}
SIT_DEFAULT_TRANSPORT: dict[str, Any] = {"interpolant": "linear", "prediction": "velocity"}


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint in memory, whatever file it came from.

    Attributes:
        weights: "ema" and/or "model" -> state dict with official names.
        arch: ``SiT`` keyword arguments (input_size, patch_size, in_channels, hidden_size, depth,
            num_heads, mlp_ratio, num_classes, learn_sigma).
        kind: "sit" (continuous-time interpolant) or "dit" (DDPM chain, integer timesteps).
        transport: ``Transport`` settings (for "dit", the DDPM schedule, see ``DIT_TRANSPORT``).
        source: a human-readable description of where it came from.
        format: the format it was read from ("sit", "official", "dit", "diffusers").
        extra: run settings worth carrying along (image_size, vae, latent_scale) when known.
        transport_assumed: the file does not record its transport; ``transport`` is the default
            (linear, velocity), and a caller may say otherwise.
        run_config: the ``config.json`` of the sit run it was read from (None for other sources).
        files: weight set -> the file it was read from, where one file holds one set.
    """

    weights: dict[str, StateDict]
    arch: dict[str, Any]
    kind: str
    transport: dict[str, Any]
    source: str = ""
    format: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    transport_assumed: bool = False
    run_config: dict[str, Any] | None = None
    files: dict[str, str] = dataclasses.field(default_factory=dict)

    def state_dict(self, ema: bool = True) -> StateDict:
        """The EMA weights (``ema``) or the raw ones when present, else the only set there is."""
        use = "ema" if ema else "model"
        if use in self.weights:
            return self.weights[use]
        if len(self.weights) == 1:
            return next(iter(self.weights.values()))
        raise InputError(f"{self.source} has no {use!r} weights (it has {', '.join(self.weights)})")

    def used(self, ema: bool = True) -> str:
        """Which weight set ``state_dict(ema)`` returns: "ema" or "model"."""
        use = "ema" if ema else "model"
        return use if use in self.weights else next(iter(self.weights))


def nonfinite_tensors(state_dict: StateDict) -> list[str]:
    """The names of the floating-point tensors that hold a NaN or an infinity."""
    return [k for k, v in state_dict.items() if v.is_floating_point() and not bool(v.isfinite().all())]


def strip_prefixes(state_dict: StateDict) -> StateDict:
    """Drop the "module." (DDP) and "_orig_mod." (torch.compile) prefixes some saved state dicts carry."""
    out = {}
    for key, value in state_dict.items():
        out[re.sub(r"^(module\.|_orig_mod\.)+", "", key)] = value
    return out
