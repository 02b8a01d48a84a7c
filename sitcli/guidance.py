"""Guidance as wrappers around a model callable: classifier-free guidance and autoguidance.

Classifier-free guidance (``ClassifierFreeGuidance``):

    out = u + scale * (c - u),    c = model(x, t, y),  u = model(x, t, null class)

on the guided channels, for times inside ``interval``; outside it (and on unguided channels) the
conditional output c is returned. The conditional and unconditional passes run as one forward on a
doubled batch, and a guided call counts as one model evaluation. Guidance is linear in the model
output, so it means the same for velocity, score and noise models.

Autoguidance (``AutoGuidance``) puts a weaker model (an earlier checkpoint, a smaller model) in the
place of the unconditional pass; it runs two networks per call and counts two evaluations.
"""

from __future__ import annotations

from typing import Callable

import torch

from sitcli.errors import InputError


class ClassifierFreeGuidance:
    """A model callable ``(x, t, y, **kwargs)`` that applies classifier-free guidance.

    Args:
        model: the conditional model, called as ``model(x, t, y=labels, **kwargs)``.
        scale: guidance scale; 1 is the conditional model, 0 the unconditional one.
        null_class: the label of the "no class" embedding (``model.num_classes`` for SiT).
        channels: "all", or k to guide only the first k channels; 3 reproduces the published
            numbers of the official DiT/SiT checkpoints, which guided 3 of 4 latent channels.
        interval: (t_lo, t_hi); guidance is on for t_lo <= t <= t_hi (t = 0 noise, t = 1 data).

    Example:
        >>> guided = ClassifierFreeGuidance(model, scale=1.5, null_class=model.num_classes)
        >>> x, nfe = sample_sde(transport, guided, x0, model_kwargs={"y": y})
    """

    def __init__(
        self,
        model: Callable,
        scale: float,
        null_class: int,
        channels: str | int = "all",
        interval: tuple[float, float] = (0.0, 1.0),
    ):
        if channels != "all" and not (isinstance(channels, int) and channels > 0):
            raise InputError(f"cfg channels={channels!r} is invalid: pass 'all' or a positive number such as 3")
        lo, hi = interval
        if not 0 <= lo <= hi <= 1:
            raise InputError(f"cfg interval ({lo}, {hi}) is invalid: pass 0 <= t_lo <= t_hi <= 1")
        self.model = model
        self.scale = float(scale)
        self.null_class = int(null_class)
        self.channels = channels
        self.interval = (float(lo), float(hi))

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
        lo, hi = self.interval
        inside = (t >= lo) & (t <= hi)
        if self.scale == 1.0 or not bool(inside.any()):
            return self.model(x, t, y=y, **kwargs)
        null = torch.full_like(y, self.null_class)
        # per-example arguments (a mean-flow model's r, an omega per example) go with both halves of the batch
        kwargs = {k: torch.cat([v, v]) if torch.is_tensor(v) and v.shape[:1] == x.shape[:1] else v
                  for k, v in kwargs.items()}
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, null]), **kwargs)
        cond, uncond = both.chunk(2)
        guided = uncond + self.scale * (cond - uncond)
        if self.channels != "all":
            guided = torch.cat([guided[:, : self.channels], cond[:, self.channels :]], dim=1)
        return torch.where(inside.reshape(-1, *([1] * (x.dim() - 1))), guided, cond)


class AutoGuidance:
    """Autoguidance (Karras et al. 2024): a model guided by a weaker version of itself,

        out = weak + scale * (strong - weak),    strong = model(x, t, y),  weak = guide(x, t, y),

    for times inside ``interval``; outside it the model's own output. Both networks must share the
    interpolant and the prediction type: then every quantity a sampler reads (velocity, score, noise,
    the denoiser D = E[x1 | x]) is a(t) x + b(t) output, affine in the output with the same a and b
    for both, and the weights (1 - scale) + scale sum to one, so combining the raw outputs is the
    same as combining the denoisers, D = D_weak + w (D_strong - D_weak), or the velocities. Label y
    goes to both (a guide of an unconditional model gets none). A call inside the interval runs two
    networks and counts two evaluations (``evaluations``).

    Args:
        model: the main ("strong") model, called as ``model(x, t, y=labels, **kwargs)``.
        guide: the weak model, called the same way.
        scale: w; 1 is the main model alone, 0 the guide alone.
        interval: (t_lo, t_hi); guidance is on for t_lo <= t <= t_hi (t = 0 noise, t = 1 data).
    """

    def __init__(self, model: Callable, guide: Callable, scale: float, interval: tuple[float, float] = (0.0, 1.0)):
        lo, hi = interval
        if not 0 <= lo <= hi <= 1:
            raise InputError(f"guidance interval ({lo}, {hi}) is invalid: pass 0 <= t_lo <= t_hi <= 1")
        self.model = model
        self.guide = guide
        self.scale = float(scale)
        self.interval = (float(lo), float(hi))

    def _inside(self, t: torch.Tensor) -> torch.Tensor:
        return (t >= self.interval[0]) & (t <= self.interval[1])

    def evaluations(self, t: torch.Tensor) -> int:
        """Networks run by a call at times t: 2 when any row is guided, else 1."""
        return 2 if self.scale != 1.0 and bool(self._inside(t).any()) else 1

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        strong = self.model(x, t, y=y, **kwargs)
        if self.evaluations(t) == 1:
            return strong
        weak = self.guide(x, t, y=y, **kwargs).to(strong.dtype)
        guided = weak + self.scale * (strong - weak)
        return torch.where(self._inside(t).reshape(-1, *([1] * (x.dim() - 1))), guided, strong)
