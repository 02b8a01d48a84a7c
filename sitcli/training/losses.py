"""The training loss as named terms.

One training step draws times and noise, builds x_t, and calls the model once (asking it for the
tokens of any blocks a term needs). Everything it computed is a ``StepBatch``; each ``LossTerm``
turns that into a per-sample loss, and the total is the weighted sum of the terms' batch means:

    loss = sum_k  weight_k * mean_b term_k(batch)_b

The interpolant's own regression loss (``RegressionLoss``) is always the first term; a new
objective adds a ``LossTerm`` subclass and appends it in ``loss_terms``. ``AlignmentLoss`` (REPA)
is the second when the config names encoders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from sitcli.config import TrainConfig
from sitcli.encoders import Encoder, match_grid
from sitcli.transport import Transport


@dataclass
class StepBatch:
    """What one training step computed, handed to every loss term."""

    x1: torch.Tensor  # data (B, C, H, W)
    noise: torch.Tensor  # eps ~ N(0, I), shaped like x1
    t: torch.Tensor  # training times (B,)
    x_t: torch.Tensor  # alpha_t x1 + sigma_t eps
    y: torch.Tensor | None  # class labels (B,)
    output: torch.Tensor  # the model's prediction at (x_t, t)
    tokens: dict[int, torch.Tensor] = field(default_factory=dict)  # block depth -> tokens (B, N, hidden)
    images: torch.Tensor | None = None  # the batch in pixel space, [-1, 1] (x1 itself unless x1 is latent)
    features: list[torch.Tensor] | None = None  # each encoder's patch tokens of the batch, read from a latent cache


class LossTerm:
    """One named part of the training loss: ``term(batch)`` -> per-sample loss (B,).

    ``token_depths`` names the blocks whose tokens the term reads from ``batch.tokens``.
    """

    name: str = "term"
    weight: float = 1.0
    token_depths: tuple[int, ...] = ()

    def __call__(self, batch: StepBatch) -> torch.Tensor:
        raise NotImplementedError


class RegressionLoss(LossTerm):
    """The interpolant's loss: lambda_t |model output - target|^2 (``Transport.regression_loss``)."""

    name = "regression"

    def __init__(self, transport: Transport):
        self.transport = transport

    def __call__(self, batch: StepBatch) -> torch.Tensor:
        return self.transport.regression_loss(batch.output, batch.x1, batch.noise, batch.t)


class AlignmentLoss(LossTerm):
    """Representation alignment (REPA, Yu et al. 2025): SiT's tokens h after block ``depth``, through
    a projector per encoder, against that frozen encoder's patch tokens f of the clean images:

        term_b = -(1 / (K N)) sum_k sum_n  <g_k(h_bn) / |g_k(h_bn)|,  f_kbn / |f_kbn|>

    (K encoders, N tokens; both sides L2-normalised in float32, so that bf16 cannot overflow the
    norms). An encoder whose token grid differs from SiT's is resized to it (``encoders.match_grid``).
    f is computed from ``batch.images`` (or x1), or read from ``batch.features`` when a latent
    cache holds it (``CachedEncoder``: ``sit cache-latents --repa-encoder``).
    """

    name = "alignment"

    def __init__(self, encoders: list[Encoder], projectors: torch.nn.ModuleList, depth: int, weight: float, grid: int):
        self.encoders, self.projectors, self.grid = encoders, projectors, grid
        self.token_depths, self.weight = (depth,), weight

    def notes(self) -> list[str]:
        """One line per encoder whose token grid is interpolated to SiT's."""
        return [f"note: encoder {e.source} gives a {n}x{n} token grid at {e.input_size(self.grid)} pixels; SiT's is "
                f"{self.grid}x{self.grid}, so its tokens are interpolated (bilinear) to it"
                + (getattr(e, "rebuild", lambda grid: "")(self.grid))
                for e in self.encoders if (n := e.token_grid(self.grid)) != self.grid]

    def __call__(self, batch: StepBatch) -> torch.Tensor:
        tokens = batch.tokens[self.token_depths[0]]
        images = batch.x1 if batch.images is None else batch.images
        if batch.features is None:
            targets = [encoder.features(images, self.grid) for encoder in self.encoders]
        else:
            targets = batch.features
        total = 0
        for features, projector in zip(targets, self.projectors):
            target = match_grid(features, self.grid)
            z = torch.nn.functional.normalize(projector(tokens).float(), dim=-1)
            total = total - (z * torch.nn.functional.normalize(target.float(), dim=-1)).sum(-1).mean(-1)
        return total / len(self.encoders)


@dataclass
class CachedEncoder:
    """An encoder whose patch tokens a latent cache holds (its manifest entry): nothing is run."""

    source: str
    width: int
    grid: int  # side of the stored token grid
    resolution: int  # pixels it was fed
    fixed_resolution: bool  # True: its grid does not depend on the grid asked for

    def token_grid(self, grid: int | None = None) -> int:
        return self.grid

    def input_size(self, grid: int | None = None) -> int:
        return self.resolution

    def rebuild(self, grid: int) -> str:
        """How to get the features on-the-fly training would compute, when they differ."""
        return "" if self.fixed_resolution else (f" (on the fly it would be fed {grid}x{grid} tokens' worth of pixels: "
                                                 f"rebuild the cache with --repa-grid {grid} for that)")


def loss_terms(cfg: TrainConfig, transport: Transport, model: torch.nn.Module | None = None,
               encoders: list[Encoder] = ()) -> list[LossTerm]:
    """The terms a config asks for, the regression loss first; ``model`` holds the projectors
    (``model.projectors``) for the ``encoders`` when ``cfg.repa_encoder`` names any."""
    terms: list[LossTerm] = [RegressionLoss(transport)]
    if encoders:
        grid = cfg.input_size // model.patch_size
        terms.append(AlignmentLoss(list(encoders), model.projectors, cfg.repa_depth, cfg.repa_weight, grid))
    return terms


def step_losses(
    net: Callable, transport: Transport, terms: list[LossTerm], x1: torch.Tensor, y: torch.Tensor | None,
    generator: torch.Generator | None = None, images: torch.Tensor | None = None,
    features: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total loss, {term name: its batch mean}) of one forward pass on the batch (x1, y);
    ``images``: the same batch in pixel space when x1 is latent; ``features``: the encoders'
    patch tokens of the batch when a latent cache holds them."""
    t, noise = transport.draw_time_and_noise(x1, generator)
    x_t = transport.interpolant.interpolate(x1, noise, t)
    depths = sorted({d for term in terms for d in term.token_depths})
    if depths:
        output, tokens = net(x_t, t, y=y, return_tokens=depths)
    else:
        output, tokens = net(x_t, t, y=y), {}
    batch = StepBatch(x1, noise, t, x_t, y, output, tokens, images, features)
    parts = {term.name: term(batch).mean() for term in terms}
    total = None
    for term in terms:
        part = parts[term.name] if term.weight == 1 else term.weight * parts[term.name]
        total = part if total is None else total + part
    return total, parts
