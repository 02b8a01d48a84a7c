"""A diffusers AutoencoderKL read from a local folder, as the functions sit has always called and as
an ``Autoencoder`` (``base``) with a latent normalization.

The functions (``load_vae``, ``encode``, ``decode``, ``latent_scale``, ``latent_shape``) keep the
SD-VAE convention z = s * E(x) with E the encoder's posterior sample and s the scaling factor from
the VAE's config (0.18215, Stable Diffusion's, when the config has none); images are D(z / s).

``KLAutoencoder`` adds the statistics: by default n = (z - shift) * s from the config's
``scaling_factor`` and ``shift_factor`` (SD3 and FLUX VAEs have a shift; SD's has none, so its
latents are bit for bit those of ``encode``), or per-channel / per-element statistics computed over
a data set (``statistics``), e.g. for f16c32 VAEs whose channels differ in scale.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sitcli.autoencoder.base import Autoencoder
from sitcli.autoencoder.normalization import LatentNormalization, scale_only
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


def latent_shift(vae) -> float | None:
    """The config's ``shift_factor`` (SD3, FLUX), or None."""
    return getattr(vae.config, "shift_factor", None)


def latent_shape(vae, image_size: int) -> tuple[int, int]:
    """(channels, side) of the latents of an image_size x image_size image."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if image_size % factor:
        raise InputError(f"--image-size {image_size} is not divisible by the VAE's downsampling factor {factor}")
    return vae.config.latent_channels, image_size // factor


def posterior_sample(vae, x: torch.Tensor, generator: torch.Generator | None = None,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
    """Images in [-1, 1] -> unscaled latents mu + sigma n, float32, with n the given ``noise``
    (latent-shaped, standard normal) or drawn from ``generator``."""
    with torch.no_grad():
        dist = vae.encode(x.to(vae.dtype)).latent_dist
        z = dist.sample(generator=generator) if noise is None else dist.mean + dist.std * noise.to(dist.mean.dtype)
    return z.float()


@torch.no_grad()
def encode(
    vae, x: torch.Tensor, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Images in [-1, 1] -> scaled latents: a sample mu + sigma n of the encoder's posterior, with
    n the given ``noise`` (latent-shaped, standard normal) or drawn from ``generator``."""
    return posterior_sample(vae, x, generator, noise) * latent_scale(vae)


@torch.no_grad()
def decode(vae, z: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1] (not clamped)."""
    return vae.decode(z.to(vae.dtype) / latent_scale(vae)).sample.float()


def config_normalization(vae, source: str = "") -> LatentNormalization:
    """n = (z - shift_factor) * scaling_factor, from the VAE's config (0.18215 and no shift when absent)."""
    return scale_only(latent_scale(vae), latent_shift(vae), source=source or "the VAE's config")


class KLAutoencoder(Autoencoder):
    """A diffusers AutoencoderKL with a latent normalization (the config's scale by default).

    Example:
        >>> ae = KLAutoencoder.load("weights/sd-vae-ft-ema")
        >>> n = ae.encode(images, noise=eps)       # == encode(ae.vae, images, noise=eps) for SD's VAE
    """

    kind = "kl"

    def __init__(self, vae, normalization: LatentNormalization | None = None, source: str = ""):
        super().__init__(normalization or config_normalization(vae), source)
        self.vae = vae

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu",
             normalization: LatentNormalization | None = None) -> "KLAutoencoder":
        return cls(load_vae(path, device), normalization, str(Path(path).resolve()))

    def encode_raw(self, images: torch.Tensor, noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        return posterior_sample(self.vae, images, generator, noise)

    @torch.no_grad()
    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z.to(self.vae.dtype)).sample.float()

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        channels, side = latent_shape(self.vae, image_size)
        return channels, side, side

    def to(self, device: torch.device | str) -> "KLAutoencoder":
        self.vae.to(device)
        return self

    def identity(self) -> dict:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return {**super().identity(), "latent_channels": int(self.vae.config.latent_channels), "downsampling": factor}
