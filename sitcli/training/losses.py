"""The training loss as named terms.

One training step draws times and noise, builds x_t, and calls the model once (asking it for the
tokens of any blocks a term needs). Everything it computed is a ``StepBatch``; each ``LossTerm``
turns that into a per-sample loss, and the total is the weighted sum of the terms' batch means:

    loss = sum_k  weight_k * mean_b term_k(batch)_b

The interpolant's own regression loss (``RegressionLoss``) is always the first term; a new
objective adds a ``LossTerm`` subclass and appends it in ``loss_terms``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from sitcli.config import TrainConfig
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


def loss_terms(cfg: TrainConfig, transport: Transport) -> list[LossTerm]:
    """The terms a config asks for, the regression loss first."""
    return [RegressionLoss(transport)]


def step_losses(
    net: Callable, transport: Transport, terms: list[LossTerm], x1: torch.Tensor, y: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total loss, {term name: its batch mean}) of one forward pass on the batch (x1, y)."""
    t, noise = transport.draw_time_and_noise(x1, generator)
    x_t = transport.interpolant.interpolate(x1, noise, t)
    depths = sorted({d for term in terms for d in term.token_depths})
    if depths:
        output, tokens = net(x_t, t, y=y, return_tokens=depths)
    else:
        output, tokens = net(x_t, t, y=y), {}
    batch = StepBatch(x1, noise, t, x_t, y, output, tokens)
    parts = {term.name: term(batch).mean() for term in terms}
    total = None
    for term in terms:
        part = parts[term.name] if term.weight == 1 else term.weight * parts[term.name]
        total = part if total is None else total + part
    return total, parts
