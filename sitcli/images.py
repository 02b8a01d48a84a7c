"""Images shared by training previews and sampling: model outputs to uint8, PNGs, grids, VAE decoding."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from sitcli.data import to_uint8
from sitcli.errors import InputError


def make_grid(images: np.ndarray, ncol: int | None = None, pad: int = 2, min_cell: int = 32):
    """uint8 (N, H, W, C) -> a PIL image of the images in rows of ``ncol``, upscaled (nearest) so
    each cell is at least ``min_cell`` pixels."""
    from PIL import Image

    n, h, w, c = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    scale = max(1, math.ceil(min_cell / h))
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, ncol)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = images[k]
    return Image.fromarray(grid[..., 0] if c == 1 else grid)


def to_pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def to_images(x: torch.Tensor, vae=None) -> np.ndarray:
    """Model-space samples -> uint8 (B, H, W, C), decoding latents with ``vae`` when given (an
    ``autoencoder.Autoencoder``, or a diffusers AutoencoderKL on SD-VAE's road)."""
    from sitcli.autoencoder import Autoencoder, decode

    if isinstance(vae, Autoencoder):
        x = vae.decode(x)
    elif vae is not None:
        x = decode(vae, x)
    return to_uint8(x).numpy()


def open_vae(latent_scale: float | None, path: str | None, device: torch.device | str = "cpu"):
    """The VAE a latent model's images are decoded with (None for a pixel model, ``latent_scale`` None)."""
    if latent_scale is None:
        return None
    from sitcli.autoencoder import load_vae

    if path is None:
        raise InputError(
            "this model works in a VAE latent space; pass --vae with a local diffusers AutoencoderKL folder"
        )
    return load_vae(path, device)


def read_png(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        return image.copy()
