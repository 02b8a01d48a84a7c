"""The one interface every latent space goes through: images in [-1, 1] <-> the model's latents.

    latents = ae.encode(images)          # normalize(encode_raw(images)), (B, C, H, W) float32
    images = ae.decode(latents)          # decode_raw(denormalize(latents)), [-1, 1], not clamped
    c, h, w = ae.latent_shape(256)

``encode_raw`` / ``decode_raw`` are the network's own latents (a VAE posterior sample; RAE's
normalised DINOv2 tokens); ``normalization`` (``normalization.LatentNormalization``) maps them to
the space a SiT is trained in. A latent cache (``sitcli.data.latent_cache``) stores the raw latents
times the VAE's scaling factor (1 for an RAE), as SD-VAE caches always have, with its statistics in
a file beside them; ``sitcli.latent_space.identity`` is what a cache manifest and a run record so
that training can refuse latents of another autoencoder.
"""

from __future__ import annotations

import torch

from sitcli.autoencoder.normalization import LatentNormalization


class Autoencoder:
    """An image autoencoder with a latent normalization. Subclasses define the raw maps.

    Attributes:
        kind: "kl" (a diffusers AutoencoderKL) or "rae" (a representation autoencoder).
        normalization: raw latents -> the model's latents.
        source: the file or folder it was read from.
    """

    kind = ""

    def __init__(self, normalization: LatentNormalization, source: str = ""):
        self.normalization = normalization
        self.source = source

    # ---------------------------------------------------------------- the raw maps (per kind)

    def encode_raw(self, images: torch.Tensor, noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, 3, S, S) in [-1, 1] -> raw latents (B, C, H, W), float32, no gradient."""
        raise NotImplementedError

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents -> images in [-1, 1] (not clamped), float32."""
        raise NotImplementedError

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """(C, H, W) of the latents of an image_size x image_size image (InputError if it cannot be)."""
        raise NotImplementedError

    def to(self, device: torch.device | str) -> "Autoencoder":
        raise NotImplementedError

    def identity(self) -> dict:
        """What a latent cache records about the autoencoder (kind, source, sizes; no statistics)."""
        return {"kind": self.kind, "source": self.source}

    # ---------------------------------------------------------------- shared

    def encode(self, images: torch.Tensor, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> the model's latents: normalization.normalize(encode_raw(images))."""
        return self.normalization.normalize(self.encode_raw(images, noise=noise, generator=generator))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The model's latents -> images in [-1, 1]: decode_raw(normalization.denormalize(latents))."""
        return self.decode_raw(self.normalization.denormalize(latents))

    def with_normalization(self, normalization: LatentNormalization) -> "Autoencoder":
        """The same networks with other statistics (a shallow copy; the modules are shared)."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.normalization = normalization
        return other
