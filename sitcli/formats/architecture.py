"""A checkpoint's architecture from the shapes of its tensors, in one place.

Every reader (official .pt, sit runs, diffusers folders) hands its state dict, in the official
parameter names, to ``infer_architecture``; the result is the keyword arguments of ``SiT`` and
``model_with_weights`` turns it and the tensors into a network. ``registry_name`` names an architecture
by its row of the size table (``SiT-XL/2``), and ``assumed_latent_space`` holds the one rule for
checkpoints that do not say what space they work in.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from sitcli.autoencoder import DEFAULT_LATENT_SCALE
from sitcli.ddt import DDT_SIZES
from sitcli.errors import InputError
from sitcli.models import PATCH_SIZES, SIZES, SiT, model_name

StateDict = dict[str, torch.Tensor]

# hidden size -> heads, from the configuration table: the one number the shapes do not carry.
HEADS_BY_HIDDEN = {hidden: heads for _, hidden, heads in SIZES.values()}

# Heads used only by a training loss (REPA's alignment projectors): not part of the network that samples.
TRAINING_ONLY_PREFIXES = ("projectors.",)


def backbone(state_dict: StateDict) -> StateDict:
    """The state dict without training-only heads (``projectors.*``), which sampling never uses."""
    return {k: v for k, v in state_dict.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}


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
    learn_sigma from the output layer (p^2 C or p^2 2C rows); a mean-flow model (``mean_flow=True``,
    only then in the result) from its second time embedder, ``r_embedder.*``; improved MeanFlow's parts from
    ``omega_embedder.*`` (``omega_input=True``) and ``velocity_blocks.N.*`` (``velocity_head_depth``, their
    count). DMF's form (``dmf_depth``) adds no tensor: the caller adds it from what the file records. Heads are
    not in any shape: they come from ``num_heads``, else from the configuration table by hidden size. Anything
    that does not fit the SiT layout exactly is refused with the reason.
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
    head = len({int(m.group(1)) for k in state_dict if (m := re.match(r"velocity_blocks\.(\d+)\.", k))})
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
    if any(k.startswith("r_embedder.") for k in state_dict):
        arch["mean_flow"] = True
    if any(k.startswith("omega_embedder.") for k in state_dict):
        arch["omega_input"] = True
    if head:
        arch["velocity_head_depth"] = head
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


def model_with_weights(arch: dict[str, Any], state_dict: StateDict) -> SiT:
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


def registry_name(arch: dict[str, Any]) -> str | None:
    """The ``SiT_models`` key of an architecture, or None when the table has no such model; for a DiT^DH
    (``sitcli.ddt``) the ``DDT_models`` key of its trunk (its head may differ: ``ddt_head``)."""
    if "head_width" in arch:
        for size, (depth, hidden, heads, *_) in DDT_SIZES.items():
            if (arch["depth"], arch["hidden_size"], arch["num_heads"]) == (depth, hidden, heads):
                return f"DiTDH-{size}"
        return None
    for size, (depth, hidden, heads) in SIZES.items():
        if (arch["depth"], arch["hidden_size"], arch["num_heads"]) == (depth, hidden, heads) and arch["mlp_ratio"] == 4:
            if arch["patch_size"] in PATCH_SIZES:
                return model_name(size, arch["patch_size"])
    return None


def ddt_head(arch: dict[str, Any]) -> dict[str, int]:
    """A DiT^DH's head_width / head_depth where they differ from its size's (what a run config records)."""
    name = registry_name(arch)
    _, _, _, depth, width, _ = DDT_SIZES[name.removeprefix("DiTDH-")]
    return {k: arch[k] for k, v in (("head_width", width), ("head_depth", depth)) if arch[k] != v}


def describe(arch: dict[str, Any]) -> str:
    """One line naming an architecture, e.g. "SiT-XL/2 layout: 28 blocks, hidden 1152, 16 heads, ..."."""
    name = registry_name(arch) or "custom"
    if "head_width" in arch:
        return (f"{name} (DiT^DH) layout: trunk {arch['depth']} blocks, hidden {arch['hidden_size']}, "
                f"{arch['num_heads']} heads; head {arch['head_depth']} blocks, width {arch['head_width']}, "
                f"{arch['head_heads']} heads; input {arch['in_channels']}x{arch['input_size']}x{arch['input_size']}, "
                f"{arch['num_classes']} classes")
    return (f"{name} layout: {arch['depth']} blocks, hidden {arch['hidden_size']}, {arch['num_heads']} heads, patch "
            f"{arch['patch_size']}, input {arch['in_channels']}x{arch['input_size']}x{arch['input_size']}, "
            f"{arch['num_classes']} classes, learn_sigma={arch['learn_sigma']}"
            + "".join(f", {part}" for part in fewstep_parts(arch)))


def fewstep_parts(arch: dict[str, Any]) -> list[str]:
    """The few-step parts of an architecture in words (none for a flow SiT)."""
    parts = ["mean flow (second time r)"] if arch.get("mean_flow") else []
    if arch.get("dmf_depth") is not None:
        parts.append(f"Decoupled MeanFlow (the first {arch['dmf_depth']} blocks see t, the rest r)")
    if arch.get("omega_input"):
        parts.append("omega input")
    if arch.get("velocity_head_depth"):
        parts.append(f"a {arch['velocity_head_depth']}-block velocity head")
    return parts


FEWSTEP_KEYS = ("mean_flow", "dmf_depth", "omega_input", "velocity_head_depth")  # the few-step options of SiT


def is_fewstep(arch: dict[str, Any]) -> bool:
    """A few-step model: a mean-flow, DMF or iMF form (``models.SiT``), which only sit's formats hold."""
    return bool(arch.get("mean_flow") or arch.get("omega_input") or arch.get("velocity_head_depth")
                or arch.get("dmf_depth") is not None)


def assumed_latent_space(in_channels: int, input_size: int) -> tuple[int | None, float | None]:
    """(image_size, latent_scale) of a checkpoint that does not record them.

    4 input channels are taken as the official checkpoints' SD-VAE latents (8x downsampling,
    scaling factor 0.18215); 1 or 3 channels as pixels (no latent scale). Any other count (an f16
    VAE's 32, an RAE's 768) is not assumed: (None, None), and sampling asks for the autoencoder.
    """
    if in_channels == 4:
        return input_size * 8, DEFAULT_LATENT_SCALE
    if in_channels in (1, 3):
        return input_size, None
    return None, None
