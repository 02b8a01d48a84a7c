"""The training loss as named terms.

One training step draws times and noise, builds x_t, and calls the model once (asking it for the
tokens of any blocks a term needs). Everything it computed is a ``StepBatch``; each ``LossTerm``
turns that into a per-sample loss, and the total is the weighted sum of the terms' batch means:

    loss = sum_k  weight_k * mean_b term_k(batch)_b

The first term is the objective: the interpolant's own regression loss (``RegressionLoss``), or
with ``objective="meanflow"`` the mean-flow loss (``MeanFlowLoss``), or a few-step objective fine-tuning a flow
SiT (``dmf``, ``imf``, ``alphaflow``: ``training.fewstep_losses``). The objective also draws the
step's inputs (``LossTerm.inputs``: times, noise, labels and extra model arguments), so a mean-flow
step draws its second time r and calls the model at (x_t, t, r). A new term adds a ``LossTerm``
subclass (``training.terms``) and appends it in ``loss_terms``; ``AlignmentLoss`` (REPA) is the second when
the config names encoders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from sitcli.config import TrainConfig
from sitcli.encoders import Encoder, match_grid
from sitcli.training.fewstep_losses import AlphaFlowLoss, DecoupledMeanFlowLoss, ImprovedMeanFlowLoss
from sitcli.training.terms import LossTerm, StepBatch, StepInputs
from sitcli.transport import Transport, meanflow


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


class MeanFlowLoss(LossTerm):
    """The mean-flow objective (``transport.meanflow``, sit's time): per sample

        sg(w) |u_theta(x_t, t, r) - sg(v_g + (r - t) du_theta/dt)|^2 / D,    w = 1 / (that mse + c)^p,

    du/dt from one ``torch.func.jvp`` through ``model`` with tangents (v_g, 1, 0), without gradients
    (it is under the stop-gradient), so the step's forward with gradients is the ordinary one,
    through DDP and torch.compile like any other. The labels are dropped (classifier-free dropout)
    once, in ``inputs``, so that the forward, the JVP and the folded guidance see the same ones.
    """

    name = "meanflow"

    def __init__(self, model: torch.nn.Module, transport: Transport, share: float, p: float, c: float, omega: float):
        self.model, self.transport = model, transport
        self.share, self.p, self.c, self.omega = share, p, c, omega

    def inputs(self, transport: Transport, x1: torch.Tensor, y: torch.Tensor | None,
               generator: torch.Generator | None) -> StepInputs:
        """t <= r from the time density (r = t on a share 1 - ``share``), eps, then the label dropout."""
        t, r = meanflow.draw_times(transport.sample_time, x1.shape[0], self.share, x1.device, x1.dtype, generator)
        _, noise = transport.draw_time_and_noise(x1, generator, t=t)
        embedder = getattr(self.model, "y_embedder", None) if y is not None else None
        if embedder is not None and self.model.training and embedder.dropout_prob > 0:
            y = embedder.token_drop(y)  # the global RNG, as the model's own dropout
        return StepInputs(t, noise, y, r, {"r": r, "drop_labels": False})

    def __call__(self, batch: StepBatch) -> torch.Tensor:
        model, t, r = self.model, batch.t, batch.r
        v = self.transport.interpolant.conditional_velocity(batch.x1, batch.noise, t)
        if self.omega != 1 and batch.y is not None:
            null = torch.full_like(batch.y, model.num_classes)
            with torch.no_grad():
                unconditional = model(batch.x_t, t, y=null, drop_labels=False).to(v.dtype)
            guided = self.omega * v + (1 - self.omega) * unconditional
            v = torch.where((batch.y != null).reshape(-1, *[1] * (v.dim() - 1)), guided, v)

        def u(z: torch.Tensor, tt: torch.Tensor, rr: torch.Tensor) -> torch.Tensor:
            return model(z, tt, y=batch.y, r=rr, drop_labels=False)

        _, du_dt = meanflow.total_derivative(u, batch.x_t, t, r, v.to(batch.x_t.dtype))
        target = meanflow.meanflow_target(v.float(), du_dt.float(), t.float(), r.float())
        error = batch.output.float() - target
        return meanflow.adaptive_weight(error, self.p, self.c) * error.pow(2).flatten(1).mean(1)


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
    shared = dict(share=cfg.meanflow_share, p=cfg.meanflow_p, c=cfg.meanflow_c)
    if cfg.objective == "meanflow":
        objective: LossTerm = MeanFlowLoss(model, transport, cfg.meanflow_share, cfg.meanflow_p, cfg.meanflow_c,
                                           cfg.meanflow_omega)
    elif cfg.objective == "dmf":
        objective = DecoupledMeanFlowLoss(model, transport, **shared, omega=cfg.meanflow_omega,
                                          guidance_interval=cfg.dmf_guidance_interval)
    elif cfg.objective == "imf":
        objective = ImprovedMeanFlowLoss(model, transport, **shared, omega_max=cfg.imf_omega_max,
                                         omega_beta=cfg.imf_omega_beta)
    elif cfg.objective == "alphaflow":
        # The schedule in steps (recorded in config.json), not in fractions of --steps: a resume with more steps
        # keeps it. alphaflow_alpha's sigmoid is the same function of step / end for any unit.
        end = cfg.alphaflow_end
        objective = AlphaFlowLoss(model, transport, **shared, omega=cfg.meanflow_omega,
                                  start=cfg.alphaflow_start / end, end=1.0, gamma=cfg.alphaflow_gamma, total=end)
    else:
        objective = RegressionLoss(transport)
    terms: list[LossTerm] = [objective]
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
    drawn = terms[0].inputs(transport, x1, y, generator)
    t, noise, y = drawn.t, drawn.noise, drawn.y
    x_t = transport.interpolant.interpolate(x1, noise, t)
    depths = sorted({d for term in terms for d in term.token_depths})
    if depths:
        output, tokens = net(x_t, t, y=y, return_tokens=depths, **drawn.model_kwargs)
    else:
        output, tokens = net(x_t, t, y=y, **drawn.model_kwargs), {}
    batch = StepBatch(x1, noise, t, x_t, y, output, tokens, images, r=drawn.r, features=features,
                      model_kwargs=drawn.model_kwargs)
    parts = {term.name: term(batch).mean() for term in terms}
    total = None
    for term in terms:
        part = parts[term.name] if term.weight == 1 else term.weight * parts[term.name]
        total = part if total is None else total + part
    return total, parts
