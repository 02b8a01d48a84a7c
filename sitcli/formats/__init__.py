"""Checkpoint formats that `sit convert` reads and writes, around one in-memory form.

Every reader returns a ``Checkpoint``: state dicts under the official SiT/DiT parameter names (which
are also sit's), the architecture as ``SiT`` constructor arguments, and what the network was trained
for (``kind``: "sit" for an interpolant transport, "dit" for the discrete DDPM chain). Writers take
one back. The modules here do file I/O only; ``sitcli.convert`` chooses and checks.

    official.py   .pt files of the official SiT and DiT code (raw weights or training checkpoints)
    sitrun.py     sit run folders and checkpoint folders (config.json + safetensors)
    diffusers.py  diffusers folders: diffusers' own DiTTransformer2DModel and sitcli's SiT class
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import torch

from sitcli.errors import InputError
from sitcli.models import SIZES, SiT

StateDict = dict[str, torch.Tensor]

# hidden size -> heads, from the configuration table: the one number the shapes do not carry.
HEADS_BY_HIDDEN = {hidden: heads for _, hidden, heads in SIZES.values()}

DIT_TRANSPORT: dict[str, Any] = {
    "interpolant": "ddpm",
    "prediction": "noise",
    "num_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
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
    """

    weights: dict[str, StateDict]
    arch: dict[str, Any]
    kind: str
    transport: dict[str, Any]
    source: str = ""
    format: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def state_dict(self, use: str = "ema") -> StateDict:
        """The weights to convert: ``use`` ("ema" or "model") when present, else the only set there is."""
        if use not in ("ema", "model"):
            raise InputError(f"--use {use!r} is not a weight set: choose ema or model")
        if use in self.weights:
            return self.weights[use]
        if len(self.weights) == 1:
            return next(iter(self.weights.values()))
        raise InputError(f"{self.source} has no {use!r} weights (it has {', '.join(self.weights)})")

    def used(self, use: str = "ema") -> str:
        """Which weight set ``state_dict(use)`` returns."""
        return use if use in self.weights else next(iter(self.weights))


def strip_prefixes(state_dict: StateDict) -> StateDict:
    """Drop the "module." (DDP) and "_orig_mod." (torch.compile) prefixes some saved state dicts carry."""
    out = {}
    for key, value in state_dict.items():
        out[re.sub(r"^(module\.|_orig_mod\.)+", "", key)] = value
    return out


def heads_from_model_name(name: str | None) -> int | None:
    """Heads of an official model name such as "SiT-XL/2" or "DiT-B/4" (None when not one)."""
    match = re.fullmatch(r"(?:SiT|DiT)-(XL|L|B|S)/\d+", str(name or ""))
    return SIZES[match.group(1)][2] if match else None


def infer_architecture(
    state_dict: StateDict, num_heads: int | None = None, where: str = "checkpoint"
) -> dict[str, Any]:
    """SiT constructor arguments from the shapes of an official-names state dict.

    hidden size, patch size and input channels come from ``x_embedder.proj.weight`` (D, C, p, p);
    the input size from the N = (input_size / p)^2 rows of ``pos_embed``; depth from the block
    count; mlp ratio from ``fc1``; classes from the label table (its last row is the null class);
    learn_sigma from the output layer (p^2 C or p^2 2C rows). Heads are not in any shape: they
    come from ``num_heads``, else from the configuration table by hidden size. Anything that does
    not fit the SiT layout exactly is refused with the reason.
    """
    def need(key: str, ndim: int) -> torch.Tensor:
        if key not in state_dict:
            found = _some_keys(state_dict)
            raise InputError(f"{where} is not a SiT/DiT state dict: it has no {key!r} (found e.g. {found})")
        value = state_dict[key]
        if not isinstance(value, torch.Tensor) or value.dim() != ndim:
            raise InputError(f"{where}: {key!r} should be a {ndim}-d tensor, got {_describe(value)}")
        return value

    proj = need("x_embedder.proj.weight", 4)
    hidden, in_channels, patch, patch_w = proj.shape
    if patch != patch_w:
        raise InputError(f"{where}: patches must be square, x_embedder.proj.weight is {tuple(proj.shape)}")
    pos = need("pos_embed", 3)
    grid = math.isqrt(pos.shape[1])
    if grid * grid != pos.shape[1] or pos.shape[2] != hidden:
        raise InputError(f"{where}: pos_embed {tuple(pos.shape)} is not a square grid of {hidden}-d embeddings")
    depth = len({int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))})
    if depth == 0:
        raise InputError(f"{where} has no transformer blocks ('blocks.N.*')")
    mlp_ratio = need("blocks.0.mlp.fc1.weight", 2).shape[0] / hidden
    num_classes = need("y_embedder.embedding_table.weight", 2).shape[0] - 1
    out = need("final_layer.linear.weight", 2).shape[0]
    if out == patch * patch * in_channels * 2:
        learn_sigma = True
    elif out == patch * patch * in_channels:
        learn_sigma = False
    else:
        raise InputError(
            f"{where}: final_layer.linear has {out} outputs, neither p*p*C = {patch * patch * in_channels} "
            f"nor twice that (learned sigma)"
        )
    if num_heads is None:
        num_heads = HEADS_BY_HIDDEN.get(hidden)
        if num_heads is None:
            table = ", ".join(f"{h} -> {n}" for h, n in HEADS_BY_HIDDEN.items())
            raise InputError(
                f"{where}: hidden size {hidden} is not in the configuration table ({table}), so the number of "
                f"attention heads is unknown: pass --num-heads"
            )
    if hidden % num_heads:
        raise InputError(f"{where}: hidden size {hidden} is not divisible by {num_heads} heads: check --num-heads")
    arch = dict(
        input_size=grid * patch, patch_size=patch, in_channels=in_channels, hidden_size=hidden, depth=depth,
        num_heads=num_heads, mlp_ratio=mlp_ratio, num_classes=num_classes, learn_sigma=learn_sigma,
    )
    check_layout(state_dict, arch, where)
    return arch


def check_layout(state_dict: StateDict, arch: dict[str, Any], where: str = "checkpoint") -> None:
    """Refuse a state dict whose keys or shapes differ from those of ``SiT(**arch)``."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in SiT(**arch).state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else ""]
        raise InputError(f"{where} does not fit the SiT layout: {'; '.join(p for p in parts if p)}")
    for key, shape in expected.items():
        if tuple(state_dict[key].shape) != shape:
            raise InputError(f"{where}: {key} has shape {tuple(state_dict[key].shape)}, expected {shape}")


def build_model(arch: dict[str, Any], state_dict: StateDict) -> SiT:
    """A ``SiT`` holding exactly these tensors (no random initialisation is computed first)."""
    with torch.device("meta"):
        model = SiT(**arch)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


def _some_keys(state_dict: dict) -> str:
    keys = [str(k) for k in list(state_dict)[:3]]
    return ", ".join(keys) if keys else "nothing"


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__
