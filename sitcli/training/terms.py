"""What a training step hands its loss terms, and the interface every term implements.

``StepInputs`` is what the objective draws for a step (times, noise, labels, extra model arguments),
``StepBatch`` everything the step computed, and ``LossTerm`` turns a batch into a per-sample loss. The
terms themselves live in ``training.losses`` (the regression, alignment and mean-flow terms, and
``loss_terms``, which builds a config's list) and ``training.fewstep_losses``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
    r: torch.Tensor | None = None  # a mean-flow step's second time (B,), r >= t
    features: list[torch.Tensor] | None = None  # each encoder's patch tokens of the batch, read from a latent cache
    model_kwargs: dict = field(default_factory=dict)  # the objective's extra model arguments (r, omega, ...)


@dataclass
class StepInputs:
    """What an objective draws for one step: times, noise, the labels the model sees and its extra arguments."""

    t: torch.Tensor
    noise: torch.Tensor
    y: torch.Tensor | None
    r: torch.Tensor | None = None
    model_kwargs: dict = field(default_factory=dict)


class LossTerm:
    """One named part of the training loss: ``term(batch)`` -> per-sample loss (B,).

    ``token_depths`` names the blocks whose tokens the term reads from ``batch.tokens``.
    """

    name: str = "term"
    weight: float = 1.0
    token_depths: tuple[int, ...] = ()

    def __call__(self, batch: StepBatch) -> torch.Tensor:
        raise NotImplementedError

    def inputs(self, transport: Transport, x1: torch.Tensor, y: torch.Tensor | None,
               generator: torch.Generator | None) -> StepInputs:
        """The step's draws when this term is the objective: t, then eps, from ``generator``."""
        t, noise = transport.draw_time_and_noise(x1, generator)
        return StepInputs(t, noise, y)

    def at_step(self, step: int, total: int) -> None:
        """Told before each step which one it is (0-based) of ``total``; a term with a schedule follows it."""
