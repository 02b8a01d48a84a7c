"""diffusers folders: diffusers' own ``DiTTransformer2DModel`` and sitcli's ``SiTTransformer2DModel``.

DiT weights map onto ``DiTTransformer2DModel`` by the mapping of diffusers' own conversion script
(``scripts/convert_dit_to_diffusers.py``), official name -> diffusers name:

    x_embedder.proj.*                 pos_embed.proj.*
    t_embedder.mlp.0.* / mlp.2.*      transformer_blocks.N.norm1.emb.timestep_embedder.linear_1.* / linear_2.*
    y_embedder.embedding_table.*      transformer_blocks.N.norm1.emb.class_embedder.embedding_table.*
                                      (both embedders copied into every block N)
    blocks.N.adaLN_modulation.1.*     transformer_blocks.N.norm1.linear.*
    blocks.N.attn.qkv.*               transformer_blocks.N.attn1.to_q.* / to_k.* / to_v.*  (split in 3 rows)
    blocks.N.attn.proj.*              transformer_blocks.N.attn1.to_out.0.*
    blocks.N.mlp.fc1.* / fc2.*        transformer_blocks.N.ff.net.0.proj.* / ff.net.2.*
    final_layer.adaLN_modulation.1.*  proj_out_1.*
    final_layer.linear.*              proj_out_2.*
    pos_embed                         (not stored: diffusers recomputes the same sin-cos table)

with ``norm_eps=1e-6`` (DiT's LayerNorm eps; the script leaves diffusers' 1e-5 default on the
pre-MLP norm). What diffusers still does differently is its timestep embedding: frequencies
exp(-ln(1e4) i / 127) (``downscale_freq_shift=1``) where DiT and SiT use i / 128, so the same
weights give different outputs; ``measure_deviation`` reports by how much. SiT weights go by
default into ``SiTTransformer2DModel`` (``sitcli.formats.diffusers_sit``), which reproduces sit exactly.

sit's own record of a folder (kind and transport) is written under ``"_sit"`` in ``config.json``,
a key diffusers ignores (it skips keys starting with "_").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from sitcli.errors import InputError
from sitcli.formats import DIT_TRANSPORT, SIT_DEFAULT_TRANSPORT, Checkpoint, StateDict
from sitcli.formats.architecture import check_layout
from sitcli.models import get_2d_sincos_pos_embed

DIT_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")
SIT_CLASS = "SiTTransformer2DModel"
WEIGHTS = "diffusion_pytorch_model"

_SHARED = {  # official name -> name inside each block's norm1.emb
    "t_embedder.mlp.0": "timestep_embedder.linear_1",
    "t_embedder.mlp.2": "timestep_embedder.linear_2",
    "y_embedder.embedding_table": "class_embedder.embedding_table",
}
_PER_BLOCK = {  # official blocks.N.<a> -> transformer_blocks.N.<b>
    "adaLN_modulation.1": "norm1.linear",
    "attn.proj": "attn1.to_out.0",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
}
_TOP = {
    "x_embedder.proj": "pos_embed.proj",
    "final_layer.adaLN_modulation.1": "proj_out_1",
    "final_layer.linear": "proj_out_2",
}


#################################################################################
#                       DiT weights <-> DiTTransformer2DModel                   #
#################################################################################


def dit_config(arch: dict[str, Any]) -> dict[str, Any]:
    """``DiTTransformer2DModel`` arguments for a SiT/DiT architecture (refused where it has no equivalent)."""
    if arch["mlp_ratio"] != 4:
        raise InputError(
            f"DiTTransformer2DModel has a fixed MLP ratio of 4, this model has {arch['mlp_ratio']}: "
            f"use --diffusers-class sit"
        )
    return dict(
        num_attention_heads=arch["num_heads"],
        attention_head_dim=arch["hidden_size"] // arch["num_heads"],
        in_channels=arch["in_channels"],
        out_channels=arch["in_channels"] * (2 if arch["learn_sigma"] else 1),
        num_layers=arch["depth"],
        sample_size=arch["input_size"],
        patch_size=arch["patch_size"],
        num_embeds_ada_norm=arch["num_classes"],
        attention_bias=True,
        activation_fn="gelu-approximate",
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )


def to_dit_state_dict(state_dict: StateDict, depth: int) -> StateDict:
    """Official names -> ``DiTTransformer2DModel`` names (table in the module docstring)."""
    out = {}
    for a, b in _TOP.items():
        for p in ("weight", "bias"):
            out[f"{b}.{p}"] = state_dict[f"{a}.{p}"]
    for n in range(depth):
        block = f"transformer_blocks.{n}"
        for a, b in _SHARED.items():
            for key in state_dict:
                if key.startswith(a + "."):
                    out[f"{block}.norm1.emb.{b}.{key[len(a) + 1:]}"] = state_dict[key]
        for a, b in _PER_BLOCK.items():
            for p in ("weight", "bias"):
                out[f"{block}.{b}.{p}"] = state_dict[f"blocks.{n}.{a}.{p}"]
        for p in ("weight", "bias"):
            for name, part in zip(("to_q", "to_k", "to_v"), state_dict[f"blocks.{n}.attn.qkv.{p}"].chunk(3, dim=0)):
                out[f"{block}.attn1.{name}.{p}"] = part.clone()
    return out


def from_dit_state_dict(state_dict: StateDict, arch: dict[str, Any], where: str) -> StateDict:
    """``DiTTransformer2DModel`` names -> official names; the per-block embedder copies must agree."""
    try:
        out = {}
        for a, b in _TOP.items():
            for p in ("weight", "bias"):
                out[f"{a}.{p}"] = state_dict[f"{b}.{p}"]
        for a, b in _SHARED.items():
            for p in ("weight", "bias") if "mlp" in a else ("weight",):
                copies = [state_dict[f"transformer_blocks.{n}.norm1.emb.{b}.{p}"] for n in range(arch["depth"])]
                for n, copy in enumerate(copies[1:], start=1):
                    if not torch.equal(copy, copies[0]):
                        diff = (copy.float() - copies[0].float()).abs().max().item()
                        raise InputError(
                            f"{where}: block {n}'s copy of the {a.split('.')[0]} differs from block 0's "
                            f"(max {diff:.3g}); "
                            f"SiT/DiT share one embedder, so this model has no SiT/DiT equivalent"
                        )
                out[f"{a}.{p}"] = copies[0]
        for n in range(arch["depth"]):
            block = f"transformer_blocks.{n}"
            for a, b in _PER_BLOCK.items():
                for p in ("weight", "bias"):
                    out[f"blocks.{n}.{a}.{p}"] = state_dict[f"{block}.{b}.{p}"]
            for p in ("weight", "bias"):
                parts = [state_dict[f"{block}.attn1.{name}.{p}"] for name in ("to_q", "to_k", "to_v")]
                out[f"blocks.{n}.attn.qkv.{p}"] = torch.cat(parts, dim=0)
    except KeyError as err:
        raise InputError(
            f"{where}: the weights have no {err.args[0]!r}; it is not a DiTTransformer2DModel of its config"
        ) from None
    dtype = out["x_embedder.proj.weight"].dtype
    grid = arch["input_size"] // arch["patch_size"]
    out["pos_embed"] = get_2d_sincos_pos_embed(arch["hidden_size"], grid).unsqueeze(0).to(dtype)
    return out


def arch_from_dit_config(config: dict[str, Any], where: str) -> dict[str, Any]:
    """SiT arguments for a ``DiTTransformer2DModel`` config; refuses settings SiT/DiT do not have."""
    fixed = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate", "attention_bias": True,
             "norm_elementwise_affine": False}
    for key, value in fixed.items():
        if config.get(key, value) != value:
            raise InputError(f"{where}: {key}={config[key]!r} is not DiT's ({value!r}): no SiT/DiT equivalent")
    if config.get("patch_size") is None or config.get("num_embeds_ada_norm") is None:
        raise InputError(f"{where}: a Transformer2DModel without patch_size/num_embeds_ada_norm is not a DiT")
    heads, head_dim = config.get("num_attention_heads", 16), config.get("attention_head_dim", 72)
    in_channels = config.get("in_channels", 4)
    out_channels = config.get("out_channels") or in_channels
    if out_channels not in (in_channels, 2 * in_channels):
        raise InputError(f"{where}: out_channels={out_channels} is neither in_channels nor twice it (learned sigma)")
    return dict(
        input_size=config.get("sample_size", 32), patch_size=config["patch_size"], in_channels=in_channels,
        hidden_size=heads * head_dim, depth=config.get("num_layers", 28), num_heads=heads, mlp_ratio=4.0,
        num_classes=config["num_embeds_ada_norm"], learn_sigma=out_channels == 2 * in_channels,
    )


#################################################################################
#                                 Folders                                       #
#################################################################################


def model_folder(path: Path) -> Path | None:
    """The model folder of a diffusers model or pipeline folder (its ``transformer/``), else None."""
    for folder in (path, path / "transformer"):
        config = folder / "config.json"
        if config.is_file():
            try:
                if json.loads(config.read_text()).get("_class_name") in (*DIT_CLASSES, SIT_CLASS):
                    return folder
            except (json.JSONDecodeError, AttributeError):
                return None
    return None


def read_diffusers(path: Path) -> Checkpoint:
    """A diffusers DiT or SiT model folder (or a pipeline folder holding one in ``transformer/``)."""
    folder = model_folder(path)
    if folder is None:
        raise InputError(f"{path} is not a diffusers folder of a DiT or SiT transformer (no config.json naming one)")
    config = json.loads((folder / "config.json").read_text())
    state_dict = _read_weights(folder)
    record = config.get("_sit", {})
    if config["_class_name"] == SIT_CLASS:
        keys = ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio",
                "num_classes", "learn_sigma", "class_dropout_prob")
        arch = {k: config[k] for k in keys if k in config}
        check_layout(state_dict, arch, str(folder))
        kind = record.get("kind", "sit")
    else:
        arch = arch_from_dit_config(config, str(folder))
        state_dict = from_dit_state_dict(state_dict, arch, str(folder))
        check_layout(state_dict, arch, str(folder))
        kind = record.get("kind", "dit")  # diffusers' DiT class holds DiT weights unless sit wrote otherwise
    transport = record.get("transport") or dict(DIT_TRANSPORT if kind == "dit" else SIT_DEFAULT_TRANSPORT)
    source = f"{folder} (diffusers {config['_class_name']})"
    return Checkpoint({"ema": state_dict}, arch, kind, transport, source=source,
                      format="diffusers", extra=record.get("extra", {}),
                      transport_assumed=kind == "sit" and not record.get("transport"))


def write_diffusers(ckpt: Checkpoint, path: Path, ema: bool, diffusers_class: str) -> None:
    """``save_pretrained`` into ``path`` (a fresh path: the caller stages and renames it), then record
    sit's metadata under ``"_sit"`` in its config.json."""
    build_diffusers_model(ckpt, ema, diffusers_class).save_pretrained(path, safe_serialization=True)
    config_path = path / "config.json"
    config = json.loads(config_path.read_text())
    config["_sit"] = {"kind": ckpt.kind, "transport": ckpt.transport, "extra": ckpt.extra,
                      "weights": ckpt.used(ema), "converted_from": ckpt.source}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def build_diffusers_model(ckpt: Checkpoint, ema: bool, diffusers_class: str) -> torch.nn.Module:
    """The diffusers model holding the chosen weights, in their dtype."""
    state_dict = ckpt.state_dict(ema)
    dtype = state_dict["x_embedder.proj.weight"].dtype
    if diffusers_class == "dit":
        from diffusers import DiTTransformer2DModel

        model = DiTTransformer2DModel(**dit_config(ckpt.arch))
        model.load_state_dict(to_dit_state_dict(state_dict, ckpt.arch["depth"]), strict=True)
    else:
        from sitcli.formats.diffusers_sit import SiTTransformer2DModel

        model = SiTTransformer2DModel(**ckpt.arch)
        model.load_state_dict(state_dict, strict=True)
    # The parameters are float32: half-precision values pass through them exactly and are cast back.
    return (model if dtype == torch.float32 else model.to(dtype)).eval()


def load_diffusers_model(path: Path) -> torch.nn.Module:
    """The saved folder through diffusers' own ``from_pretrained``, as a user would load it."""
    folder = model_folder(path) or path
    name = json.loads((folder / "config.json").read_text())["_class_name"]
    if name == SIT_CLASS:
        from sitcli.formats.diffusers_sit import SiTTransformer2DModel as cls
    else:
        from diffusers import DiTTransformer2DModel as cls
    return cls.from_pretrained(folder, low_cpu_mem_usage=False).eval()


def _read_weights(folder: Path) -> StateDict:
    single, index = folder / f"{WEIGHTS}.safetensors", folder / f"{WEIGHTS}.safetensors.index.json"
    pickled = folder / f"{WEIGHTS}.bin"
    try:
        if single.is_file():
            return load_file(single)
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            out = {}
            for shard in shards:
                out.update(load_file(folder / shard))
            return out
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors / json errors
        raise InputError(f"{folder}: its weights cannot be read ({err})") from None
    if pickled.is_file():
        from sitcli.formats.official import safe_load

        obj = safe_load(pickled)
        if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        raise InputError(f"{pickled} does not hold a state dict")
    found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise InputError(f"{folder} has no {WEIGHTS}.safetensors (found: {found})")
