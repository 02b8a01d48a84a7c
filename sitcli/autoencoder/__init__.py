"""Latent spaces: one ``Autoencoder`` interface (``base``) over a diffusers AutoencoderKL (``kl``)
and a representation autoencoder (``rae``: a frozen DINOv2 and a ViT decoder), each with a latent
normalization (``normalization``; statistics from ``statistics``, on disk through ``files``).

The functions sit has always imported from here (``load_vae``, ``encode``, ``decode``,
``latent_scale``, ``latent_shape``, ``DEFAULT_LATENT_SCALE``) are the SD-VAE road of ``kl``.
"""

from sitcli.autoencoder.base import Autoencoder
from sitcli.autoencoder.kl import (
    DEFAULT_LATENT_SCALE, KLAutoencoder, decode, encode, latent_scale, latent_shape, load_vae,
)
from sitcli.autoencoder.normalization import LatentNormalization

__all__ = ["DEFAULT_LATENT_SCALE", "Autoencoder", "KLAutoencoder", "LatentNormalization", "decode", "encode",
           "latent_scale", "latent_shape", "load_vae"]
