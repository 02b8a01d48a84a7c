"""RAE's pixel decoder: a ViT (MAE's decoder layout) from encoder tokens to image patches.

The network of RAE's ``stage1/decoders/decoder.py`` (``GeneralDecoder``), with its parameter
names, so its released decoders (``models/decoders/.../model.pt``) load with ``strict=True``:

    h = decoder_embed(tokens)                                  (B, N, D_enc) -> (B, N, D)
    h = [trainable_cls_token, h] + decoder_pos_embed           (B, 1 + N, D), fixed 2D sin-cos, zero for the class
    h = h + Attn(LN_before(h));  h = h + W_out gelu(W_in LN_after(h))      per layer (ViT-MAE's pre-norm layer)
    logits = decoder_pred(decoder_norm(h))[:, 1:]              (B, N, p * p * channels)

The logits are image patches in the encoder's normalised pixel space ((x - mean) / std of images in
[0, 1]); ``unpatchify`` lays them out as (B, channels, H, W), patches row by row. GELU is the exact
(erf) one and LayerNorm eps is 1e-12 (``hidden_act`` "gelu", ``layer_norm_eps`` of RAE's decoder
configs); attention runs through PyTorch's SDPA (the same function as their eager softmax, to rounding).

Sizes (RAE's ``configs/decoder/ViT*/config.json``; width, layers, heads, MLP width): ViT-B 768, 12, 12,
3072; ViT-L 1024, 24, 16, 4096; ViT-XL 1152, 28, 16, 4096 (RAE's released decoders). The input width
is the encoder's (768 for DINOv2-B) and the patch 16 pixels, so 16 x 16 tokens make a 256 image.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sitcli.errors import InputError
from sitcli.models import get_2d_sincos_pos_embed


@dataclass(frozen=True)
class DecoderConfig:
    """The shape of an RAE decoder, in the names of RAE's (ViT-MAE) config.json."""

    hidden_size: int = 768  # the encoder's token width (RAE sets it from the encoder)
    decoder_hidden_size: int = 1152
    decoder_num_hidden_layers: int = 28
    decoder_num_attention_heads: int = 16
    decoder_intermediate_size: int = 4096
    patch_size: int = 16
    num_patches: int = 256  # tokens of one image: (encoder_input_size / encoder_patch)^2
    num_channels: int = 3
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True

    @property
    def grid(self) -> int:
        return math.isqrt(self.num_patches)

    @property
    def image_size(self) -> int:
        return self.grid * self.patch_size


# name -> (decoder_hidden_size, decoder_num_hidden_layers, decoder_num_attention_heads, decoder_intermediate_size)
DECODER_SIZES: dict[str, tuple[int, int, int, int]] = {
    "ViT-XL": (1152, 28, 16, 4096),
    "ViT-L": (1024, 24, 16, 4096),
    "ViT-B": (768, 12, 12, 3072),
    # Not RAE's: a tiny decoder for CPU runs and tests.
    "ViT-Ti": (64, 2, 4, 128),
}


def decoder_config(size: str, hidden_size: int, num_patches: int, patch_size: int = 16,
                   num_channels: int = 3) -> DecoderConfig:
    """The config of a decoder of the table for an encoder of width ``hidden_size`` giving ``num_patches`` tokens."""
    if size not in DECODER_SIZES:
        raise InputError(f"unknown decoder size {size!r}: choose one of {', '.join(DECODER_SIZES)}")
    width, layers, heads, mlp = DECODER_SIZES[size]
    return DecoderConfig(hidden_size, width, layers, heads, mlp, patch_size, num_patches, num_channels)


def read_decoder_config(path: str | Path, hidden_size: int, num_patches: int, patch_size: int = 16) -> DecoderConfig:
    """An RAE decoder config.json (``configs/decoder/ViTXL/config.json``) for this encoder: RAE overrides
    its hidden_size, patch_size and image size from the encoder, and so does this."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{file} is not a readable decoder config.json ({err})") from None
    names = ("decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads",
             "decoder_intermediate_size", "num_channels", "layer_norm_eps", "qkv_bias")
    fields = {k: raw[k] for k in names if k in raw}
    if raw.get("hidden_act", "gelu") != "gelu":
        raise InputError(f"{file}: hidden_act {raw['hidden_act']!r} is not supported (RAE's decoders use 'gelu')")
    return DecoderConfig(hidden_size=hidden_size, patch_size=patch_size, num_patches=num_patches, **fields)


#################################################################################
#                                 ViT-MAE layer                                 #
#################################################################################


class _Dense(nn.Module):
    """A linear map under the attribute name ``dense`` (ViT-MAE's parameter names)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)


class _SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, bias: bool):
        super().__init__()
        if width % heads:
            raise ValueError(f"decoder width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.query = nn.Linear(width, width, bias=bias)
        self.key = nn.Linear(width, width, bias=bias)
        self.value = nn.Linear(width, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = (proj(x).view(B, N, self.heads, D // self.heads).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, bias: bool):
        super().__init__()
        self.attention = _SelfAttention(width, heads, bias)
        self.output = _Dense(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output.dense(self.attention(x))


class DecoderLayer(nn.Module):
    """x = x + Attn(LN_before(x)); x = x + W_out gelu(W_in LN_after(x))."""

    def __init__(self, width: int, heads: int, mlp_width: int, eps: float, bias: bool = True):
        super().__init__()
        self.attention = _Attention(width, heads, bias)
        self.intermediate = _Dense(width, mlp_width)
        self.output = _Dense(mlp_width, width)
        self.layernorm_before = nn.LayerNorm(width, eps=eps)
        self.layernorm_after = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output.dense(F.gelu(self.intermediate.dense(self.layernorm_after(x))))


#################################################################################
#                                   The decoder                                 #
#################################################################################


class RAEDecoder(nn.Module):
    """Tokens (B, N, hidden_size) -> image-patch logits (B, N, p * p * channels); see the module."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        if config.grid**2 != config.num_patches:
            raise ValueError(f"num_patches {config.num_patches} is not a square grid")
        self.config = config
        width = config.decoder_hidden_size
        self.decoder_embed = nn.Linear(config.hidden_size, width)
        # Fixed (not trained); a parameter because RAE's checkpoints store it as one.
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, width), requires_grad=False)
        self.decoder_layers = nn.ModuleList([
            DecoderLayer(width, config.decoder_num_attention_heads, config.decoder_intermediate_size,
                         config.layer_norm_eps, config.qkv_bias)
            for _ in range(config.decoder_num_hidden_layers)
        ])
        self.decoder_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(width, config.patch_size**2 * config.num_channels)
        self.trainable_cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """RAE's choices: torch's default Linear / LayerNorm init, a zero class token, and the 2D sin-cos
        position embedding (zero for the class token)."""
        pos = get_2d_sincos_pos_embed(self.decoder_pos_embed.shape[-1], self.config.grid)
        self.decoder_pos_embed.data.copy_(torch.cat([torch.zeros(1, pos.shape[1]), pos]).unsqueeze(0))
        nn.init.zeros_(self.trainable_cls_token)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] != self.config.num_patches:
            raise ValueError(f"the decoder takes {self.config.num_patches} tokens, got {tokens.shape[1]}")
        x = self.decoder_embed(tokens)
        x = torch.cat([self.trainable_cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.decoder_pos_embed.to(x.dtype)
        for layer in self.decoder_layers:
            x = layer(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def unpatchify(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, N, p * p * C) -> (B, C, H, W), patches row by row, each patch (p, p, C) row-major."""
        p, c, g = self.config.patch_size, self.config.num_channels, self.config.grid
        x = logits.reshape(logits.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(logits.shape[0], c, g * p, g * p)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """The inverse of ``unpatchify``."""
        p, c, g = self.config.patch_size, self.config.num_channels, self.config.grid
        x = images.reshape(images.shape[0], c, g, p, g, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(images.shape[0], g * g, p * p * c)


def decoder_config_from_state_dict(state_dict: dict[str, torch.Tensor], num_heads: int | None = None,
                                   layer_norm_eps: float = 1e-12) -> DecoderConfig:
    """The config of a decoder state dict in RAE's names, from its tensors' shapes (heads from the
    size table by width unless given)."""
    try:
        width, hidden = state_dict["decoder_embed.weight"].shape
        positions = state_dict["decoder_pos_embed"].shape[1] - 1
        out = state_dict["decoder_pred.weight"].shape[0]
        mlp = state_dict["decoder_layers.0.intermediate.dense.weight"].shape[0]
    except KeyError as err:
        raise InputError(f"not an RAE decoder state dict: it has no {err.args[0]!r}") from None
    layers = len({k.split(".")[1] for k in state_dict if k.startswith("decoder_layers.")})
    if num_heads is None:
        by_width = {w: h for w, _, h, _ in DECODER_SIZES.values()}
        if width not in by_width:
            raise InputError(f"decoder width {width} is not in the size table: pass the number of heads")
        num_heads = by_width[width]
    channels = 3 if out % 3 == 0 and math.isqrt(out // 3) ** 2 == out // 3 else 1
    patch = math.isqrt(out // channels)
    if patch * patch * channels != out:
        raise InputError(f"decoder_pred has {out} outputs, not p * p * 3 or p * p")
    return DecoderConfig(hidden, width, layers, num_heads, mlp, patch, positions, channels, layer_norm_eps,
                         "decoder_layers.0.attention.attention.query.bias" in state_dict)


def config_dict(config: DecoderConfig) -> dict:
    """The config as JSON-ready fields (what a sit decoder run records)."""
    return asdict(config)
