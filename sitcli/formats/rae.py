"""RAE's released files (bytetriper/RAE, ``hf download nyu-visionx/RAE-collections``): DiT^DH stage-2
checkpoints and ViT decoders, read into sit's modules under their own parameter names.

    stage-2   models/DiTs/Dinov2/wReg_base/ImageNet256/DiTDH-XL/stage2_model.pt: a ``DiTwDDTHead``
              state dict, bare or under "ema" (RAE's ``instantiate_from_config`` loads "ema" with
              strict=True; a training checkpoint ep-*.pt holds "model", "ema", "optimizer", ...)
    decoder   models/decoders/dinov2/wReg_base/ViTXL_n08/model.pt: a ``GeneralDecoder`` state dict
              (written by ``extract_decoder.py``; RAE loads it with strict=False, sit with strict=True)
    stats     models/stats/dinov2/wReg_base/imagenet1k/stat.pt: {"mean", "var"} of shape (768, 16, 16)
              (``sitcli.autoencoder.files.load_normalization``)

Everything is read with ``torch.load(weights_only=True)``; "module." / "_orig_mod." prefixes (DDP,
torch.compile) are dropped. The architecture comes from the tensors' shapes (``ddt_architecture``):
the rotary tables give the heads, the block widths the trunk and head depths. The weights need no
conversion: ``sitcli.ddt.DiTwDDTHead`` runs RAE's network and presents it in sit's time.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from sitcli.autoencoder.rae_decoder import DecoderConfig, RAEDecoder, decoder_config_from_state_dict
from sitcli.ddt import DDT_SIZES, DiTwDDTHead
from sitcli.errors import InputError
from sitcli.formats import Checkpoint, strip_prefixes
from sitcli.formats.architecture import StateDict

HEADS_BY_WIDTH = {w: h for _, w, h, _, _, _ in DDT_SIZES.values()} | {
    w: h for _, _, _, _, w, h in DDT_SIZES.values()}


def read_state_dict(path: str | Path, prefer: str = "ema") -> StateDict:
    """The state dict in an RAE .pt file: ``prefer`` ("ema" or "model") of a training checkpoint, else the bare dict."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds on non-checkpoints
        raise InputError(f"{path} is not a readable checkpoint ({type(err).__name__}); RAE's files are .pt state "
                         "dicts") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a state dict")
    for key in (prefer, "ema", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    return strip_prefixes({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)})


def is_ddt(state_dict: StateDict) -> bool:
    """A DiT^DH state dict (its trunk's input embedder ``s_embedder`` is its mark)."""
    return "s_embedder.proj.weight" in state_dict


def ddt_architecture(state_dict: StateDict, num_heads: int | None = None, head_heads: int | None = None,
                     head_depth: int | None = None, where: str = "checkpoint") -> dict[str, Any]:
    """``DiTwDDTHead`` keyword arguments from a state dict's shapes (heads from the rotary tables, else
    the size table, else the arguments; the head depth from the block widths, or ``head_depth`` when the
    trunk and head are equally wide)."""
    def need(key: str) -> torch.Tensor:
        if key not in state_dict:
            raise InputError(f"{where} is not a DiT^DH (RAE stage-2) state dict: it has no {key!r}")
        return state_dict[key]

    head_width, channels, p, _ = need("x_embedder.proj.weight").shape
    hidden = need("s_embedder.proj.weight").shape[0]
    if p != 1:
        raise InputError(f"{where}: patch size {p}; DiT^DH takes patch size 1")
    widths = {}
    for key, value in state_dict.items():
        if m := re.fullmatch(r"blocks\.(\d+)\.adaLN_modulation\.1\.weight", key):
            widths[int(m.group(1))] = value.shape[1]
    if not widths or sorted(widths) != list(range(len(widths))):
        raise InputError(f"{where}: its blocks are not numbered 0..N-1")
    blocks = len(widths)
    if hidden != head_width:
        depth = sum(1 for i in range(blocks) if widths[i] == hidden)
        if any(widths[i] != (hidden if i < depth else head_width) for i in range(blocks)):
            raise InputError(f"{where}: the blocks are not {hidden}-wide trunk blocks followed by "
                             f"{head_width}-wide ones")
    elif head_depth is None:
        raise InputError(f"{where}: trunk and head are both {hidden} wide, so the head depth is not in the shapes: "
                         "pass --head-depth")
    else:
        depth = blocks - head_depth
    use_rope = "enc_feat_rope.freqs_cos" in state_dict
    if use_rope:
        grid_cells, enc_dim = state_dict["enc_feat_rope.freqs_cos"].shape
        num_heads = num_heads or hidden // enc_dim
        head_heads = head_heads or head_width // state_dict["dec_feat_rope.freqs_cos"].shape[1]
    else:
        grid_cells = None
    num_heads = num_heads or HEADS_BY_WIDTH.get(hidden)
    head_heads = head_heads or HEADS_BY_WIDTH.get(head_width)
    if num_heads is None or head_heads is None:
        width = hidden if num_heads is None else head_width
        raise InputError(f"{where}: the number of attention heads of width {width} is not in the shapes or the size "
                         "table: pass --num-heads / --head-heads")
    if "pos_embed" in state_dict:
        grid_cells = state_dict["pos_embed"].shape[1]
    if grid_cells is None or math.isqrt(grid_cells) ** 2 != grid_cells:
        raise InputError(f"{where}: neither pos_embed nor a rotary table gives a square token grid")
    swiglu = "blocks.0.mlp.w12.weight" in state_dict
    mlp_hidden = (state_dict["blocks.0.mlp.w12.weight"].shape[0] // 2 if swiglu
                  else need("blocks.0.mlp.fc1.weight").shape[0])
    mlp_ratio = 4.0 if mlp_hidden == (int(2 / 3 * int(hidden * 4.0)) if swiglu else hidden * 4) else (
        mlp_hidden / hidden if not swiglu else None)
    if mlp_ratio is None:
        raise InputError(f"{where}: a SwiGLU width of {mlp_hidden} is not RAE's int(2/3 * 4 * {hidden})")
    arch = dict(
        input_size=math.isqrt(grid_cells), patch_size=1, in_channels=channels, hidden_size=hidden, depth=depth,
        num_heads=num_heads, head_width=head_width, head_depth=blocks - depth, head_heads=head_heads,
        mlp_ratio=mlp_ratio, num_classes=need("y_embedder.embedding_table.weight").shape[0] - 1,
        use_qknorm="blocks.0.attn.q_norm.weight" in state_dict, use_swiglu=swiglu, use_rope=use_rope,
        use_rmsnorm="blocks.0.norm1.weight" in state_dict,
        wo_shift=state_dict["blocks.0.adaLN_modulation.1.weight"].shape[0] == 4 * hidden,
        use_pos_embed="pos_embed" in state_dict,
    )
    return arch


def build_ddt(arch: dict[str, Any], state_dict: StateDict, where: str = "checkpoint") -> DiTwDDTHead:
    """A ``DiTwDDTHead`` holding exactly these tensors (strict: every key and shape must match)."""
    with torch.device("meta"):
        model = DiTwDDTHead(**arch)
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as err:
        raise InputError(f"{where} does not fit the DiT^DH layout: {str(err).splitlines()[1:3]}") from None
    return model.eval()


def load_ddt(path: str | Path, prefer: str = "ema", **heads) -> DiTwDDTHead:
    """The DiT^DH in an RAE stage-2 file (EMA weights when it holds both)."""
    state = read_state_dict(path, prefer)
    return build_ddt(ddt_architecture(state, where=str(path), **heads), state, str(path))


def rae_checkpoint(obj: dict, path: str | Path, num_heads: int | None = None) -> Checkpoint:
    """A loaded RAE stage-2 file as a ``Checkpoint``: its "ema" and "model" weights (or the bare state dict
    as "ema"), the architecture from the shapes, RAE's transport (linear, velocity) and its time shift,
    sqrt(C H W / 4096) ("dimension", which every RAE config sets)."""
    weights = {k: strip_prefixes(v) for k in ("ema", "model") if isinstance(v := obj.get(k), dict) and v}
    if not weights:
        weights = {"ema": strip_prefixes({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)})}
    weights = {k: {n: t for n, t in v.items() if isinstance(t, torch.Tensor)} for k, v in weights.items()}
    first = next(iter(weights.values()))
    arch = ddt_architecture(first, num_heads=num_heads, where=str(path))
    for name, state in weights.items():
        if set(state) != set(first):
            raise InputError(f"{path}: its {name!r} weights have different keys from its other weights")
    return Checkpoint(weights, arch, "sit", {"interpolant": "linear", "prediction": "velocity"},
                      source=f"{path} (RAE stage-2 DiT^DH)", format="rae", extra={"time_shift": "dimension"})


def write_rae(ckpt: Checkpoint, path: Path) -> None:
    """An RAE stage-2 file: {"ema": ..., "model": ...} (RAE's loader takes "ema", strictly)."""
    ema = ckpt.state_dict(ema=True)
    out = {"ema": {k: v.detach().contiguous() for k, v in ema.items()}}
    if "model" in ckpt.weights:
        out["model"] = {k: v.detach().contiguous() for k, v in ckpt.weights["model"].items()}
    torch.save(out, path)


def load_decoder(path: str | Path, num_heads: int | None = None) -> RAEDecoder:
    """An RAE decoder file (``model.pt``), its shape read from the tensors, loaded strictly."""
    return build_decoder(read_state_dict(path), str(path), num_heads=num_heads)


def build_decoder(state: StateDict, where: str = "decoder", config: DecoderConfig | None = None,
                  num_heads: int | None = None) -> RAEDecoder:
    """An ``RAEDecoder`` holding exactly these tensors (strict), its shape ``config`` or read from them."""
    config = config or decoder_config_from_state_dict(state, num_heads)
    with torch.device("meta"):
        decoder = RAEDecoder(config)
    try:
        decoder.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise InputError(f"{where} does not fit RAE's decoder layout: {str(err).splitlines()[1:3]}") from None
    return decoder.eval()
