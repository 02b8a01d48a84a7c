"""Frozen feature encoders read from local files, never downloaded (alignment losses, feature metrics).

    from sitcli.encoders import load_encoder
    enc = load_encoder("weights/dinov2-base")            # a Hugging Face folder (transformers)
    enc = load_encoder("weights/dinov2_vitb14_pretrain.pth")  # the torch-hub DINOv2 file (timm)
    tokens = enc.features(images, grid=16)                # images in [-1, 1] -> (B, 256, 768) float32

Two sources, each read by the library that owns its layout (no key is re-mapped here):
    * a folder ``transformers.AutoModel`` loads (``config.json`` + weights): DINOv2 with or without
      registers, and other ViTs whose output is [prefix tokens, patch tokens row by row];
    * a torch-hub DINOv2 checkpoint ``dinov2_vit{s,b,l,g}14[_reg]_pretrain.pth`` (or the same
      weights in timm's layout): built as timm's ``vit_*_patch14[_reg4]_dinov2`` and converted by
      timm's own ``checkpoint_filter_fn``; widths and depth come from the tensors' shapes.

Patch tokens are the final (layer-normed) tokens without the class and register tokens.
DINOv2 accepts any multiple of its patch size (its position embedding is interpolated), so it is
fed ``grid * patch`` pixels to give the token grid asked for (REPA's choice: 224 pixels, 16x16
tokens, for SiT-XL/2 on 256 images). Other ViTs run at their own ``image_size``; a caller that
needs another grid resizes the tokens with ``match_grid``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sitcli.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_RESOLUTION = 224  # DINOv2's input when no token grid is asked for
HUB_FILE = re.compile(r"dinov2_vit([sblg])14(_reg\d*)?_pretrain\.pth$")
TIMM_SIZES = {"s": "small", "b": "base", "l": "large", "g": "giant"}
WHERE_TO_GET = (
    "download a DINOv2 model and put it there: a Hugging Face folder (e.g. `hf download facebook/dinov2-base "
    "--local-dir PATH`) or torch hub's file (e.g. https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/"
    "dinov2_vitb14_pretrain.pth)"
)


class Encoder:
    """A frozen image encoder: ``features(images in [-1, 1]) -> (B, N, D)`` patch tokens, float32.

    Attributes:
        source: the file or folder it was read from.
        patch_size: pixels per token side.
        width: feature width D.
        resolution: the fixed input side in pixels, or None when any multiple of ``patch_size`` works.
        mean, std: the per-channel input normalisation of images in [0, 1].
    """

    def __init__(
        self,
        module: nn.Module,
        source: str,
        patch_size: int,
        width: int,
        resolution: int | None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        channels: int = 3,
    ):
        self.module = module.eval().requires_grad_(False)
        self.source, self.patch_size, self.width, self.resolution = source, patch_size, width, resolution
        self.mean, self.std, self.channels = tuple(mean), tuple(std), channels

    def to(self, device: torch.device | str) -> "Encoder":
        self.module.to(device)
        return self

    def input_size(self, grid: int | None = None) -> int:
        """The pixel side fed to the network: its fixed size, else ``grid`` tokens of ``patch_size``."""
        if self.resolution is not None:
            return self.resolution
        return grid * self.patch_size if grid else DEFAULT_RESOLUTION

    def token_grid(self, grid: int | None = None) -> int:
        """The side of the token grid that ``features(images, grid)`` returns."""
        return self.input_size(grid) // self.patch_size

    def preprocess(self, images: torch.Tensor, grid: int | None = None) -> torch.Tensor:
        """[-1, 1] images (B, C, H, W) -> the network's input: [0, 1], resized (bicubic), normalised.
        One-channel images are repeated to the encoder's channels."""
        x = (images.float() + 1) / 2
        if x.shape[1] == 1 and self.channels != 1:
            x = x.expand(-1, self.channels, -1, -1)
        size = self.input_size(grid)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=size < x.shape[-1])
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def features(self, images: torch.Tensor, grid: int | None = None) -> torch.Tensor:
        """Patch tokens (B, token_grid(grid)**2, width), float32, row by row; no gradient."""
        x = self.preprocess(images, grid)
        tokens = self._tokens(x)
        patches = (x.shape[-2] // self.patch_size) * (x.shape[-1] // self.patch_size)
        return tokens[:, tokens.shape[1] - patches :].float()

    @torch.no_grad()
    def embedding(self, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """The final (layer-normed) class token (B, width), float32, of images at ``size`` pixels
        (default: ``input_size()``), e.g. for feature-space metrics (FD-DINOv2)."""
        grid = size // self.patch_size if size and self.resolution is None else None
        return self._tokens(self.preprocess(images, grid))[:, 0].float()

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Every final token (prefix tokens first, then patches row by row) of an input already
        ``preprocess``-ed, in the network's dtype; gradients as the caller's mode has them."""
        return self._tokens(x)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TransformersEncoder(Encoder):
    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(pixel_values=x.to(self.module.dtype)).last_hidden_state


class TimmEncoder(Encoder):
    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.forward_features(x)


def load_encoder(path: str | Path) -> Encoder:
    """The encoder stored at ``path`` (a transformers folder, or a DINOv2 .pth / .safetensors file)."""
    path = _existing(path)
    if path.is_dir():
        return _load_transformers(path)
    return _load_timm(path)


def encoder_identity(path: str | Path) -> str:
    """The sha256 of an encoder's files (a folder's files in name order, names included): what a
    latent cache records, so that cached features are matched to the same weights under any path."""
    path = _existing(path)
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0" if path.is_dir() else b"")
        with open(file, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def match_grid(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize a square token grid (B, n*n, D) to (B, grid*grid, D), bilinearly (unchanged if n == grid)."""
    side = math.isqrt(tokens.shape[1])
    if side * side != tokens.shape[1]:
        raise ValueError(f"{tokens.shape[1]} tokens are not a square grid")
    if side == grid:
        return tokens
    x = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
    x = F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False, antialias=grid < side)
    return x.flatten(2).transpose(1, 2)


def _existing(path: str | Path) -> Path:
    """``path``, refused when it does not exist (with a hint when it reads as a comma list of paths)."""
    path = Path(path)
    if not path.exists():
        parts = str(path).split(",")
        if len(parts) > 1 and all(Path(p).exists() for p in parts):
            raise InputError(
                f"encoder {path} does not exist; for several encoders repeat --repa-encoder, one path "
                "each (a comma is read as part of a path)"
            )
        raise InputError(f"encoder {path} does not exist: {WHERE_TO_GET}")
    return path


def _load_transformers(folder: Path) -> Encoder:
    if not (folder / "config.json").is_file():
        raise InputError(f"encoder {folder} is a folder without config.json, not a transformers model: {WHERE_TO_GET}")
    try:
        from transformers import AutoModel
        from transformers.utils import logging as transformers_logging
    except ImportError:
        raise InputError("encoders from Hugging Face folders need transformers: pip install 'sit[repa]'") from None
    transformers_logging.disable_progress_bar()  # one bar per encoder at every start says nothing
    try:
        module = AutoModel.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged weights file raises safetensors' or torch's own kinds
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise InputError(f"encoder {folder}: transformers cannot load it ({reason}); check that its weights file "
                         "is complete") from None
    config = module.config
    patch = getattr(config, "patch_size", None)
    width = getattr(config, "hidden_size", None)
    if not isinstance(patch, int) or not isinstance(width, int):
        raise InputError(
            f"encoder {folder} ({config.model_type}) has no patch tokens (no integer patch_size and "
            f"hidden_size in its config): pass a ViT such as DINOv2"
        )
    variable = config.model_type.startswith("dinov2")
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    processor = folder / "preprocessor_config.json"
    if processor.is_file():
        settings = json.loads(processor.read_text())
        mean, std = settings.get("image_mean", mean), settings.get("image_std", std)
    return TransformersEncoder(
        module,
        str(folder),
        patch,
        width,
        None if variable else int(config.image_size),
        mean,
        std,
        int(getattr(config, "num_channels", 3)),
    )


def _load_timm(path: Path) -> Encoder:
    try:
        import timm
        from timm.models.vision_transformer import checkpoint_filter_fn
    except ImportError:
        raise InputError("DINOv2 checkpoint files are read through timm: pip install 'sit[repa]'") from None
    state = _read_state_dict(path)
    embed = state.get("cls_token")
    if embed is None or "pos_embed" not in state:
        raise InputError(f"encoder {path} is not a DINOv2 checkpoint (no cls_token / pos_embed): {WHERE_TO_GET}")
    width = embed.shape[-1]
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    registers = state.get("register_tokens", state.get("reg_token"))
    giant = any(".mlp.w12." in k for k in state) or width == 1536
    match = HUB_FILE.search(path.name)
    size = TIMM_SIZES[match.group(1)] if match else ("giant" if giant else "small")
    name = f"vit_{size}_patch14_{'reg4_' if registers is not None else ''}dinov2"
    pos = state["pos_embed"].shape[1]
    grid = math.isqrt(pos) if math.isqrt(pos) ** 2 == pos else math.isqrt(pos - 1)
    kwargs = dict(embed_dim=width, depth=depth, num_heads=max(1, width // 64), img_size=grid * 14)
    if registers is not None:
        kwargs["reg_tokens"] = registers.shape[1]
    module = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, **kwargs)
    try:
        module.load_state_dict(checkpoint_filter_fn(state, module))
    except RuntimeError as err:
        raise InputError(f"encoder {path} does not fit timm's {name}: {str(err).splitlines()[1:2]}") from None
    mean, std = module.pretrained_cfg.get("mean", IMAGENET_MEAN), module.pretrained_cfg.get("std", IMAGENET_STD)
    return TimmEncoder(module, str(path), 14, width, None, mean, std)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds on non-checkpoints
        raise InputError(
            f"encoder {path} is not a readable checkpoint ({type(err).__name__}): {WHERE_TO_GET}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model", state.get("state_dict")), dict):
        state = state.get("model", state.get("state_dict"))
    if not isinstance(state, dict):
        raise InputError(f"encoder {path} holds no state dict: {WHERE_TO_GET}")
    return state
