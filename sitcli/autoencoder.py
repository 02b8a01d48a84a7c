"""Optional latent space: a diffusers AutoencoderKL loaded from a local folder (``sitcli.latent_cache``
encodes an image folder with it once).

Latents are z = s * E(x) with E the VAE encoder's posterior sample and s the scaling factor from
the VAE's config (0.18215, Stable Diffusion's, when the config has none); images are D(z / s).
"""

from __future__ import annotations

from pathlib import Path

import torch

from sitcli.errors import InputError

DEFAULT_LATENT_SCALE = 0.18215


def load_vae(path: str | Path, device: torch.device | str = "cpu"):
    """A diffusers AutoencoderKL from a local folder (``config.json`` + weights); never downloads."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise InputError(
            f"no VAE at {folder}: --vae needs a local diffusers AutoencoderKL folder (config.json and "
            "diffusion_pytorch_model.safetensors), e.g. a copy of stabilityai/sd-vae-ft-ema"
        )
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise InputError(
            f"could not load the VAE in {folder} ({err}); check that its weights file is complete"
        ) from None
    return vae.to(device).eval().requires_grad_(False)


def latent_scale(vae) -> float:
    return float(getattr(vae.config, "scaling_factor", None) or DEFAULT_LATENT_SCALE)


def latent_shape(vae, image_size: int) -> tuple[int, int]:
    """(channels, side) of the latents of an image_size x image_size image."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if image_size % factor:
        raise InputError(f"--image-size {image_size} is not divisible by the VAE's downsampling factor {factor}")
    return vae.config.latent_channels, image_size // factor


@torch.no_grad()
def encode(
    vae, x: torch.Tensor, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Images in [-1, 1] -> scaled latents: a sample mu + sigma n of the encoder's posterior, with
    n the given ``noise`` (latent-shaped, standard normal) or drawn from ``generator``."""
    dist = vae.encode(x.to(vae.dtype)).latent_dist
    z = dist.sample(generator=generator) if noise is None else dist.mean + dist.std * noise.to(dist.mean.dtype)
    return z.float() * latent_scale(vae)


@torch.no_grad()
def decode(vae, z: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1] (not clamped)."""
    return vae.decode(z.to(vae.dtype) / latent_scale(vae)).sample.float()
