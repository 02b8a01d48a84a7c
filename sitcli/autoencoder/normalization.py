"""How an autoencoder's raw latents z become the model's latents n, and back (math only, no files).

    n = (z - mean) / std * scale,        z = n / scale * std + mean

with ``mean`` and ``std`` tensors that broadcast against one latent (C, H, W), or absent (0 and 1):

    scale      no statistics, n = z * scale (+ an optional scalar ``mean``, diffusers' ``shift_factor``):
               Stable Diffusion's VAE, scale 0.18215; SD3 / FLUX VAEs, n = (z - shift) * scale
    channel    mean and std of shape (C, 1, 1), one pair per channel (LightningDiT's VA-VAE latents,
               ``latents_stats.pt``: torch's unbiased std over images and positions, no eps)
    element    mean and std of shape (C, H, W), one pair per latent element (RAE's ``stat.pt``, which
               holds the variance: std = sqrt(var + eps), eps = 1e-5 as RAE's encoder adds it)

The operations are the ones those codes run, in the same order, so that a latent normalized here
is bit for bit theirs: SD's z * 0.18215 and z / 0.18215, RAE's (z - mean) / sqrt(var + eps) and
n * sqrt(var + eps) + mean (its std is computed once, in float32, as RAE computes it each call).
A multiplication or division by scale = 1 changes nothing in IEEE arithmetic, so RAE's formula is
the ``scale=1`` case exactly (LightningDiT's too; with a multiplier other than 1 it divides in
another order, equal to rounding). ``denormalize(normalize(z))`` equals z only to float rounding.

The statistics live beside a latent cache in a file (``files.save_normalization``); this module
turns them to and from a dict of tensors plus string metadata, safetensors' two parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sitcli.errors import InputError

KINDS = ("scale", "channel", "element")
RAE_EPS = 1e-5  # RAE adds it to the variance before the square root (stage1/rae.py)


@dataclass(frozen=True)
class LatentNormalization:
    """n = (z - mean) / std * scale; see the module.

    Attributes:
        mean: None, a scalar tensor, or a tensor of shape (C, 1, 1) or (C, H, W), float32.
        std: None or a tensor of the same shape as mean (positive), float32.
        scale: a multiplier applied last (SD's 0.18215; LightningDiT's latent_multiplier; 1 for RAE).
        eps: what was added to the variance to give std (recorded, not applied again).
        source: a free-form note of where the numbers came from (a file, a command).
    """

    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    scale: float = 1.0
    eps: float = 0.0
    source: str = ""

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a tensor or None, got {type(value).__name__}")
        if self.std is not None:
            if self.mean is not None and self.mean.shape != self.std.shape:
                raise ValueError(f"mean {tuple(self.mean.shape)} and std {tuple(self.std.shape)} differ in shape")
            if not bool((self.std > 0).all()) or not bool(torch.isfinite(self.std).all()):
                raise InputError("latent statistics hold a std that is not positive and finite: recompute them")
        if not (math.isfinite(self.scale) and self.scale != 0):
            raise InputError(f"latent scale {self.scale} must be finite and nonzero")

    @property
    def kind(self) -> str:
        """"scale" without per-channel or per-element statistics, else "channel" or "element"."""
        if self.std is None and (self.mean is None or self.mean.dim() == 0):
            return "scale"
        shape = (self.std if self.std is not None else self.mean).shape
        if len(shape) == 3 and shape[1:] == (1, 1):
            return "channel"
        return "element"

    # ---------------------------------------------------------------- the maps

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents (B, C, H, W) -> the model's latents, float32 (or wider, if z is)."""
        n = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
        if self.mean is not None:
            n = n - self.mean.to(n.device)
        if self.std is not None:
            n = n / self.std.to(n.device)
        return n * self.scale

    def denormalize(self, n: torch.Tensor) -> torch.Tensor:
        """The model's latents -> raw latents, float32 (or wider, if n is)."""
        z = n.float() if n.dtype in (torch.float16, torch.bfloat16) else n
        z = z / self.scale
        if self.std is not None:
            z = z * self.std.to(z.device)
        if self.mean is not None:
            z = z + self.mean.to(z.device)
        return z

    def check_shape(self, latent_shape: tuple[int, int, int], where: str = "latent statistics") -> None:
        """Refuse statistics that do not broadcast to one latent of ``latent_shape`` (C, H, W)."""
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is None or value.dim() == 0:
                continue
            c, h, w = value.shape if value.dim() == 3 else (None, None, None)
            fits = value.dim() == 3 and c == latent_shape[0] and h in (1, latent_shape[1]) and w in (1, latent_shape[2])
            if not fits:
                raise InputError(f"{where}: {name} has shape {tuple(value.shape)}, which does not fit latents of shape "
                                 f"{tuple(latent_shape)}; compute statistics for this autoencoder and image size")

    # ---------------------------------------------------------------- (de)serialisation

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """(tensors, metadata): what safetensors stores. Tensors are contiguous float32 copies."""
        tensors = {k: v.detach().float().contiguous().clone() for k, v in (("mean", self.mean), ("std", self.std))
                   if v is not None}
        metadata = {"format": "sit-latent-normalization", "version": "1", "kind": self.kind,
                    "scale": repr(float(self.scale)), "eps": repr(float(self.eps)), "source": self.source}
        return tensors, metadata

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> "LatentNormalization":
        """The inverse of ``to_state`` (the numbers are kept bit for bit)."""
        if metadata.get("format") != "sit-latent-normalization":
            raise InputError("not a sit latent-normalization file (its metadata names no format "
                             "'sit-latent-normalization')")
        unknown = sorted(set(tensors) - {"mean", "std"})
        if unknown:
            raise InputError(f"latent normalization holds unknown tensors {unknown}")
        norm = cls(tensors.get("mean"), tensors.get("std"), float(metadata["scale"]), float(metadata.get("eps", 0)),
                   metadata.get("source", ""))
        if metadata.get("kind") not in (None, norm.kind):
            raise InputError(f"latent normalization says kind {metadata['kind']!r} but its tensors make it "
                             f"{norm.kind!r}")
        return norm

    def describe(self) -> str:
        """One line, e.g. "element statistics (768, 16, 16), eps 1e-05, scale 1"."""
        if self.kind == "scale":
            shift = f" after subtracting {float(self.mean):g}" if self.mean is not None else ""
            return f"scale {self.scale:g}{shift}"
        shape = tuple((self.std if self.std is not None else self.mean).shape)
        return f"{self.kind} statistics {shape}, eps {self.eps:g}, scale {self.scale:g}"


def scale_only(scale: float, shift: float | None = None, source: str = "") -> LatentNormalization:
    """n = (z - shift) * scale: an SD-style VAE's scaling_factor (and shift_factor, when it has one)."""
    mean = None if not shift else torch.tensor(float(shift), dtype=torch.float32)
    return LatentNormalization(mean=mean, scale=float(scale), source=source)


def from_mean_var(mean: torch.Tensor | None, var: torch.Tensor | None, eps: float = RAE_EPS, source: str = "",
                  scale: float = 1.0) -> LatentNormalization:
    """RAE's statistics: n = (z - mean) / sqrt(var + eps) (a missing mean is 0, a missing var is 1, as
    RAE reads them). A leading batch axis of 1 is dropped. std is computed in the tensors' float32."""
    mean = _drop_batch_axis(mean)
    var = _drop_batch_axis(var)
    std = None if var is None else torch.sqrt(var.float() + eps)
    mean = None if mean is None else mean.float()
    return LatentNormalization(mean=mean, std=std, scale=scale, eps=eps, source=source)


def from_mean_std(mean: torch.Tensor, std: torch.Tensor, scale: float = 1.0, source: str = "") -> LatentNormalization:
    """LightningDiT's statistics: n = (z - mean) / std * latent_multiplier (shape (1, C, 1, 1) there)."""
    return LatentNormalization(mean=_drop_batch_axis(mean).float(), std=_drop_batch_axis(std).float(), scale=scale,
                               source=source)


def _drop_batch_axis(x: torch.Tensor | None) -> torch.Tensor | None:
    if x is None:
        return None
    if not isinstance(x, torch.Tensor):
        raise InputError(f"latent statistics must be tensors, got {type(x).__name__}")
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() == 1:  # one number per channel
        x = x[:, None, None]
    if x.dim() != 3:
        raise InputError(f"latent statistics of shape {tuple(x.shape)}: expected (C, H, W), (C, 1, 1) or (1, C, H, W)")
    return x
