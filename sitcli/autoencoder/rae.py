"""A representation autoencoder (RAE; Zheng et al. 2025, code bytetriper/RAE): a frozen DINOv2 with
registers as the encoder and a trained ViT decoder (``rae_decoder``) back to pixels.

Encoder (RAE's ``Dinov2withNorm`` of ``stage1/encoders/dinov2.py`` and ``RAE.encode``), images x in [-1, 1]:

    u = (x + 1) / 2, resized (bicubic, no antialiasing, as RAE) to ``encoder_input_size`` = grid * 14
    z = LN(DINOv2((u - mean) / std))[patch tokens]        LN the final LayerNorm *without* its affine
                                                          weights; class and register tokens dropped
    z -> (B, C, grid, grid)                               tokens row by row, channels first

with mean / std the encoder's image normalisation (ImageNet's). DINOv2-B at 224 pixels gives
16 x 16 x 768 latents. The decoder maps the (B, grid^2, C) tokens to patches of ``decoder_patch``
pixels, so a 256 image is 16 x 16 tokens of 16 pixels: ``encoder_input_size = image_size /
decoder_patch * 14`` (RAE's 224 for 256 and 448 for 512). Decoded images come back from the
encoder's normalised pixel space: x = 2 (logits * std + mean) - 1.

The encoder is read by ``sitcli.encoders.load_encoder`` (a transformers folder such as
facebook/dinov2-with-registers-base, or torch hub's dinov2_vitb14_reg4_pretrain.pth through timm),
its final LayerNorm replaced by one without affine weights and the same eps. RAE's released
decoders and statistics were made with the transformers model; timm resamples the position
embedding to 16 x 16 in its own way, so a hub file gives slightly different latents.

One-channel images (the digits) are fed as grey RGB and decoded as the mean of the three channels.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sitcli.autoencoder.base import Autoencoder
from sitcli.autoencoder.normalization import LatentNormalization
from sitcli.autoencoder.rae_decoder import RAEDecoder
from sitcli.encoders import Encoder, TimmEncoder, TransformersEncoder, encoder_identity, load_encoder
from sitcli.errors import InputError

DECODER_PATCH = 16  # RAE's decoder_patch_size


class RAEEncoder:
    """A frozen DINOv2 whose patch tokens, final-LayerNormed without affine, are the latents.

    Args:
        encoder: a loaded ``sitcli.encoders.Encoder`` (its module is changed: a copy is taken).
        input_size: the side in pixels fed to the network (a multiple of its patch).
    """

    def __init__(self, encoder: Encoder, input_size: int):
        if input_size % encoder.patch_size:
            raise InputError(f"the RAE encoder input {input_size} is not a multiple of its patch {encoder.patch_size}")
        self.encoder = copy.copy(encoder)
        self.encoder.module = _without_final_affine(encoder)
        self.input_size = input_size
        self.grid = input_size // encoder.patch_size
        self.width = encoder.width

    def to(self, device: torch.device | str) -> "RAEEncoder":
        self.encoder.to(device)
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> the network's input: [0, 1], grey repeated to RGB, bicubic resize without
        antialiasing (RAE's ``F.interpolate``), (u - mean) / std."""
        x = (images.float() + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, self.encoder.channels, -1, -1)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False)
        mean = torch.tensor(self.encoder.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.encoder.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Latents (B, width, grid, grid), float32."""
        tokens = self.encoder.tokens(self.preprocess(images))
        patches = tokens[:, tokens.shape[1] - self.grid * self.grid:].float()
        return patches.transpose(1, 2).reshape(images.shape[0], self.width, self.grid, self.grid)


def _without_final_affine(encoder: Encoder) -> nn.Module:
    """A shallow copy of the encoder's module whose final LayerNorm has no weight and bias (RAE's
    ``normalize=True``): the blocks are shared, only the norm attribute differs."""
    module = copy.copy(encoder.module)
    module._modules = dict(module._modules)  # a new attribute table; submodules stay shared
    names = {TransformersEncoder: "layernorm", TimmEncoder: "norm"}  # the final norm's attribute in each library
    name = next((n for cls, n in names.items() if isinstance(encoder, cls)), None)
    old = getattr(module, name, None) if name else None
    if not isinstance(old, nn.LayerNorm):
        raise InputError(f"encoder {encoder.source} has no final LayerNorm to use as RAE's: pass a DINOv2 (with "
                         "registers), e.g. facebook/dinov2-with-registers-base")
    setattr(module, name, nn.LayerNorm(old.normalized_shape, eps=old.eps, elementwise_affine=False))
    return module


def load_rae_encoder(path: str | Path, image_size: int = 256, decoder_patch: int = DECODER_PATCH) -> RAEEncoder:
    """The RAE encoder at ``path`` for images of ``image_size`` decoded with ``decoder_patch``-pixel patches."""
    if image_size % decoder_patch:
        raise InputError(f"--image-size {image_size} is not a multiple of the RAE decoder's patch {decoder_patch}")
    encoder = load_encoder(path)
    return RAEEncoder(encoder, image_size // decoder_patch * encoder.patch_size)


class RAE(Autoencoder):
    """Encoder + decoder + latent normalization (none by default: RAE's statistics are passed in).

    Args:
        encoder: the frozen ``RAEEncoder``.
        decoder: an ``RAEDecoder`` whose token count and width are the encoder's, or None (encoding only).
        normalization: raw latents -> the model's latents (RAE's stat.pt: ``files.load_normalization``).
        image_channels: 3, or 1 to decode grey images (the mean of the decoder's three channels).
    """

    kind = "rae"

    def __init__(self, encoder: RAEEncoder, decoder: RAEDecoder | None = None,
                 normalization: LatentNormalization | None = None, image_channels: int = 3, source: str = ""):
        super().__init__(normalization or LatentNormalization(source="none"), source or encoder.encoder.source)
        if decoder is not None:
            cfg = decoder.config
            if (cfg.hidden_size, cfg.num_patches) != (encoder.width, encoder.grid**2):
                raise InputError(f"the decoder takes {cfg.num_patches} tokens of width {cfg.hidden_size}, the encoder "
                                 f"gives {encoder.grid ** 2} of width {encoder.width}")
            if cfg.num_channels != 3:
                raise InputError(f"an RAE decoder predicts RGB patches; this one has {cfg.num_channels} channels")
        if image_channels not in (1, 3):
            raise InputError(f"image_channels must be 1 or 3, got {image_channels}")
        self.encoder, self.decoder, self.image_channels = encoder, decoder, image_channels

    def encode_raw(self, images: torch.Tensor, noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        if noise is not None:
            raise ValueError("an RAE encoder is deterministic: it takes no posterior noise")
        return self.encoder.features(images)

    def decode_raw(self, z: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """Raw latents (B, C, grid, grid) -> images in [-1, 1]; ``grad`` keeps the graph (decoder training)."""
        if self.decoder is None:
            raise InputError("this RAE has no decoder: pass RAE decoder weights to decode latents")
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            logits = self.decoder(z.flatten(2).transpose(1, 2).to(self.decoder.decoder_embed.weight.dtype))
            x = self.decoder.unpatchify(logits).float()
        mean = torch.tensor(self.encoder.encoder.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.encoder.encoder.std, device=x.device).view(1, 3, 1, 1)
        x = x * std + mean
        if self.image_channels == 1:
            x = x.mean(dim=1, keepdim=True)
        return 2 * x - 1

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        if self.decoder is not None and image_size != self.decoder.config.image_size:
            cfg = self.decoder.config
            raise InputError(f"--image-size {image_size}: this RAE decodes {cfg.image_size}-pixel images "
                             f"({cfg.grid}x{cfg.grid} tokens of {cfg.patch_size} pixels)")
        return self.encoder.width, self.encoder.grid, self.encoder.grid

    def to(self, device: torch.device | str) -> "RAE":
        self.encoder.to(device)
        if self.decoder is not None:
            self.decoder.to(device)
        return self

    def identity(self) -> dict:
        return {**super().identity(), "encoder_sha256": encoder_identity(self.encoder.encoder.source),
                "encoder_input_size": self.encoder.input_size, "latent_shape": [self.encoder.width, self.encoder.grid,
                                                                                self.encoder.grid]}
