"""Training objectives that fine-tune a flow SiT into a few-step model, as ``LossTerm``s.

    DecoupledMeanFlowLoss   Decoupled MeanFlow (DMF): the mean-flow target through a ``SiT(dmf_depth=...)``
    ImprovedMeanFlowLoss    improved MeanFlow (iMF): the loss in velocity space, an auxiliary velocity head,
                            the guidance scale omega drawn per example and fed to the model
    AlphaFlowLoss           AlphaFlow's curriculum: targets annealed from trajectory flow matching to mean flows

Their equations, in sit's time and against each paper's, are in ``sitcli.transport.fewstep``. Like
``MeanFlowLoss`` each draws its own step inputs (times t <= r, eps, the label dropout, omega) and runs
its JVP without gradients (it is under the stop-gradient), so the step's forward with gradients is the
ordinary one. The model is any callable with SiT's keywords (``r``, ``y``, ``drop_labels``, and for iMF
``omega`` and ``with_velocity``), so the terms also train small exact-testable networks. Every step's
time samplers default to the transport's (``Transport.sample_time``); ``sample_times`` = (flow-matching
rows, first draw, second draw) sets them apart, as DMF does.
"""

from __future__ import annotations

from typing import Callable

import torch

from sitcli.training.terms import LossTerm, StepBatch, StepInputs
from sitcli.transport import Transport, fewstep, meanflow
from sitcli.transport.interpolants import expand_time


def drop_labels(model: torch.nn.Module, y: torch.Tensor | None) -> torch.Tensor | None:
    """The classifier-free dropout of the model's own label embedder, done once per step by the objective
    (the global RNG, as the model's own dropout), so that every evaluation of the step sees the same labels."""
    embedder = getattr(model, "y_embedder", None) if y is not None else None
    if embedder is not None and model.training and embedder.dropout_prob > 0:
        return embedder.token_drop(y)
    return y


def _labelled(model: torch.nn.Module, y: torch.Tensor | None) -> torch.Tensor | None:
    """(B,) bool: the rows whose label is a class (not the null class), or None without labels."""
    return None if y is None else y != model.num_classes


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1, *[1] * (like.dim() - 1))


class _PairObjective(LossTerm):
    """What the three objectives share: (t, r) pairs from ``fewstep.draw_time_pairs``, then eps, then the labels."""

    share: float
    model: torch.nn.Module

    def _pairs(self, transport: Transport, x1: torch.Tensor, y: torch.Tensor | None,
               generator: torch.Generator | None) -> tuple[torch.Tensor, ...]:
        """(t, r, eps, the labels after dropout)."""
        samplers = getattr(self, "sample_times", None) or (transport.sample_time,) * 3
        t, r = fewstep.draw_time_pairs(*samplers, x1.shape[0], self.share, x1.device, x1.dtype, generator)
        _, noise = transport.draw_time_and_noise(x1, generator, t=t)
        return t, r, noise, drop_labels(self.model, y)


class DecoupledMeanFlowLoss(_PairObjective):
    """Decoupled MeanFlow (``transport.fewstep``): per example

        sg(w) |u_theta(x_t, t, r) - sg(v_g + (r - t) du_theta/dt)|^2 / D,    w = 1 / (that mse + c)^p,

    du/dt one JVP with tangents (v_g, 1, 0); v_g = v_c + (1 - 1/omega) (v_theta(. | y) - v_theta(. | null)) on
    labelled rows with t in ``guidance_interval`` (sit's time; DMF's (0, 0.7) in its time is (0.3, 1) here), else
    v_c; omega >= 1 is the guidance scale the model learns (DMF's 0.6 is omega = 2.5; 1: none). ``share``: the
    rows with r != t. Defaults are DMF's: half the rows jump, p = 1, c = 0.01; no guidance.
    """

    name = "dmf"

    def __init__(self, model: torch.nn.Module, transport: Transport, share: float = 0.5, p: float = 1.0,
                 c: float = 0.01, omega: float = 1.0, guidance_interval: tuple[float, float] = (0.0, 1.0),
                 sample_times: tuple[Callable, Callable, Callable] | None = None):
        self.model, self.transport, self.sample_times = model, transport, sample_times
        self.share, self.p, self.c, self.omega, self.guidance_interval = share, p, c, omega, guidance_interval

    def inputs(self, transport: Transport, x1: torch.Tensor, y: torch.Tensor | None,
               generator: torch.Generator | None) -> StepInputs:
        t, r, noise, y = self._pairs(transport, x1, y, generator)
        return StepInputs(t, noise, y, r, {"r": r, "drop_labels": False})

    @torch.no_grad()
    def guided_velocity(self, batch: StepBatch) -> torch.Tensor:
        """v_g (float32, no gradients): DMF's model guidance on the labelled rows inside the interval."""
        v = self.transport.interpolant.conditional_velocity(batch.x1, batch.noise, batch.t).float()
        labelled = _labelled(self.model, batch.y)
        if self.omega == 1 or labelled is None:
            return v
        lo, hi = self.guidance_interval
        guided_rows = labelled & (batch.t >= lo) & (batch.t <= hi)
        if not guided_rows.any():
            return v
        null = torch.full_like(batch.y, self.model.num_classes)
        both = self.model(torch.cat([batch.x_t, batch.x_t]), torch.cat([batch.t, batch.t]),
                          y=torch.cat([batch.y, null]), drop_labels=False).float()
        v_cond, v_uncond = both.chunk(2)
        return torch.where(_rows(guided_rows, v), fewstep.guided_velocity(v, v_cond, v_uncond, self.omega), v)

    def target(self, batch: StepBatch) -> torch.Tensor:
        """u_tgt = v_g + (r - t) du/dt (float32, no gradients)."""
        v = self.guided_velocity(batch)

        def u(z: torch.Tensor, tt: torch.Tensor, rr: torch.Tensor) -> torch.Tensor:
            return self.model(z, tt, y=batch.y, r=rr, drop_labels=False)

        _, du_dt = meanflow.total_derivative(u, batch.x_t, batch.t, batch.r, v.to(batch.x_t.dtype))
        return meanflow.meanflow_target(v, du_dt.float(), batch.t.float(), batch.r.float())

    def __call__(self, batch: StepBatch) -> torch.Tensor:
        error = batch.output.float() - self.target(batch)
        return meanflow.adaptive_weight(error, self.p, self.c) * error.pow(2).flatten(1).mean(1)


class ImprovedMeanFlowLoss(_PairObjective):
    """Improved MeanFlow (``transport.fewstep``): per example, with V = u_theta - (r - t) sg(du_theta/dt),

        sg(w_V) |V - sg(v_g)|^2 / D  +  sg(w_v) |v_theta(x_t, t) - sg(v_g)|^2 / D,   w = 1 / (mse + c)^p,

    du/dt one JVP with tangents (v_theta(x_t, t | y, omega), 1, 0), the model's own velocity; the second
    term only for a model with a velocity head (``SiT(velocity_head_depth=k)``, whose output with
    ``with_velocity=True`` is [u, v]); without one the model's own velocity is u_theta(x_t, t, t).
    v_g = v_c + (1 - 1/omega) (v_theta(. | y, omega) - v_theta(. | null, 1)) on labelled rows, v_c on the
    others, omega per example from ``fewstep.draw_omega(omega_max, omega_beta)`` and fed to the model
    (it needs ``omega_input``); ``omega_max=1`` is no guidance and no omega. ``share``: the rows with r != t.
    Defaults: iMF's half of the rows jump, p = 1; iMF guides with omega_max = 8 (its s_max = 7) and beta = 1.
    """

    name = "imf"

    def __init__(self, model: torch.nn.Module, transport: Transport, share: float = 0.5, p: float = 1.0,
                 c: float = 1e-3, omega_max: float = 1.0, omega_beta: float = 1.0,
                 sample_times: tuple[Callable, Callable, Callable] | None = None):
        if omega_max > 1 and not getattr(model, "omega_input", False):
            raise ValueError("omega_max > 1 feeds omega to the model: it needs an omega input (SiT(omega_input=True))")
        self.model, self.transport, self.sample_times = model, transport, sample_times
        self.share, self.p, self.c, self.omega_max, self.omega_beta = share, p, c, omega_max, omega_beta
        self.head = bool(getattr(model, "velocity_head_depth", 0))

    def inputs(self, transport: Transport, x1: torch.Tensor, y: torch.Tensor | None,
               generator: torch.Generator | None) -> StepInputs:
        t, r, noise, y = self._pairs(transport, x1, y, generator)
        kwargs: dict = {"r": r, "drop_labels": False}
        if self.omega_max > 1 and y is not None:
            kwargs["omega"] = fewstep.draw_omega(x1.shape[0], self.omega_max, self.omega_beta, x1.device, generator)
        if self.head:
            kwargs["with_velocity"] = True
        return StepInputs(t, noise, y, r, kwargs)

    def _velocity(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
                  omega: torch.Tensor | None) -> torch.Tensor:
        """The model's own instantaneous velocity at (z, t): its velocity head, else u(z, t, t)."""
        kwargs = {} if omega is None else {"omega": omega}
        if self.head:
            return self.model(z, t, y=y, drop_labels=False, with_velocity=True, **kwargs)[:, z.shape[1]:]
        return self.model(z, t, y=y, drop_labels=False, **kwargs)

    @torch.no_grad()
    def targets(self, batch: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(v_g, du/dt), float32, without gradients."""
        v = self.transport.interpolant.conditional_velocity(batch.x1, batch.noise, batch.t).float()
        omega = batch.model_kwargs.get("omega")
        labelled = _labelled(self.model, batch.y)
        if omega is not None and labelled is not None and labelled.any():
            null = torch.full_like(batch.y, self.model.num_classes)
            both = self._velocity(torch.cat([batch.x_t, batch.x_t]), torch.cat([batch.t, batch.t]),
                                  torch.cat([batch.y, null]), torch.cat([omega, torch.ones_like(omega)]))
            tangent, v_uncond = both.chunk(2)  # tangent: v_theta(x_t, t | the row's label, omega)
            guided = fewstep.guided_velocity(v, tangent.float(), v_uncond.float(), omega)
            v_g = torch.where(_rows(labelled, v), guided, v)
        else:
            tangent, v_g = self._velocity(batch.x_t, batch.t, batch.y, omega), v
        kwargs = {} if omega is None else {"omega": omega}

        def u(z: torch.Tensor, tt: torch.Tensor, rr: torch.Tensor) -> torch.Tensor:
            return self.model(z, tt, y=batch.y, r=rr, drop_labels=False, **kwargs)

        _, du_dt = meanflow.total_derivative(u, batch.x_t, batch.t, batch.r, tangent.to(batch.x_t.dtype))
        return v_g, du_dt.float()

    def __call__(self, batch: StepBatch) -> torch.Tensor:
        v_g, du_dt = self.targets(batch)
        channels = batch.x1.shape[1]
        u = batch.output[:, :channels].float()
        compound = fewstep.compound_velocity(u, du_dt, batch.t.float(), batch.r.float())
        error = compound - v_g
        loss = meanflow.adaptive_weight(error, self.p, self.c) * error.pow(2).flatten(1).mean(1)
        if self.head:
            error = batch.output[:, channels:].float() - v_g
            loss = loss + meanflow.adaptive_weight(error, self.p, self.c) * error.pow(2).flatten(1).mean(1)
        return loss


class AlphaFlowLoss(_PairObjective):
    """AlphaFlow's curriculum (``transport.fewstep``): per example

        weight sg(w) |u_theta(x_t, t, r) - sg(u_tgt)|^2 / D,
        u_tgt = alpha v_g + (1 - alpha) u_theta(x_t + delta v_g, t + delta, r),

    delta = alpha (r - t); u_tgt = v_g at alpha = 1 and the mean-flow JVP target at alpha = 0, and v_g on
    the rows with r = t; weight = alpha on the rows with r != t while 0 < alpha, else 1 (AlphaFlow's).
    alpha = ``fewstep.alphaflow_alpha(step / total, start, end, gamma, clamp)``, set by ``at_step`` (1 until
    the first call); ``total``: the steps that ``start`` and ``end`` are fractions of (None: the total that
    ``at_step`` is told, the run's length), so that a fixed schedule survives a resume with more steps. The
    guidance is MeanFlow's folded one (``MeanFlowLoss``, AlphaFlow's kappa = 0):
    v_g = omega v_c + (1 - omega) sg u_theta(x_t, t, t | null) on labelled rows. ``clamp_target``: AlphaFlow's
    clamp_utgt, a bound on |u_tgt| of the rows with 0 < alpha < 1 (None: none). Works with any mean-flow
    model: ``SiT(mean_flow=True)`` or ``SiT(dmf_depth=...)``. ``share``: the rows with r != t (AlphaFlow's
    1 - ratio_fm).
    """

    name = "alphaflow"

    def __init__(self, model: torch.nn.Module, transport: Transport, share: float = 0.5, p: float = 1.0,
                 c: float = 1e-3, omega: float = 1.0, start: float = 0.0, end: float = 1.0, gamma: float = 25.0,
                 clamp: float = 0.005, clamp_target: float | None = None,
                 sample_times: tuple[Callable, Callable, Callable] | None = None, total: int | None = None):
        self.model, self.transport, self.sample_times, self.total = model, transport, sample_times, total
        self.share, self.p, self.c, self.omega, self.clamp_target = share, p, c, omega, clamp_target
        self.schedule = dict(start=start, end=end, gamma=gamma, clamp=clamp)
        self.alpha = fewstep.alphaflow_alpha(0.0, **self.schedule)

    def at_step(self, step: int, total: int) -> None:
        self.alpha = fewstep.alphaflow_alpha(step / (self.total or total), **self.schedule)

    def inputs(self, transport: Transport, x1: torch.Tensor, y: torch.Tensor | None,
               generator: torch.Generator | None) -> StepInputs:
        t, r, noise, y = self._pairs(transport, x1, y, generator)
        return StepInputs(t, noise, y, r, {"r": r, "drop_labels": False})

    @torch.no_grad()
    def targets(self, batch: StepBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(u_tgt, the per-example weight before the adaptive one), float32, without gradients."""
        model, t, r, alpha = self.model, batch.t, batch.r, self.alpha
        v = self.transport.interpolant.conditional_velocity(batch.x1, batch.noise, t).float()
        labelled = _labelled(model, batch.y)
        if self.omega != 1 and labelled is not None and labelled.any():
            null = torch.full_like(batch.y, model.num_classes)
            unconditional = model(batch.x_t, t, y=null, drop_labels=False).float()
            v = torch.where(_rows(labelled, v), self.omega * v + (1 - self.omega) * unconditional, v)
        jump = r != t
        weight = torch.where(jump, alpha, 1.0) if 0 < alpha < 1 else torch.ones_like(t, dtype=torch.float32)
        if alpha == 1:
            return v, weight.float()
        if alpha == 0:
            def u(z: torch.Tensor, tt: torch.Tensor, rr: torch.Tensor) -> torch.Tensor:
                return model(z, tt, y=batch.y, r=rr, drop_labels=False)

            _, du_dt = meanflow.total_derivative(u, batch.x_t, t, r, v.to(batch.x_t.dtype))
            return meanflow.meanflow_target(v, du_dt.float(), t.float(), r.float()), weight.float()
        delta = alpha * (r - t)
        z = batch.x_t + expand_time(delta, batch.x_t) * v.to(batch.x_t.dtype)
        u_next = model(z, t + delta, y=batch.y, r=r, drop_labels=False).float()
        target = fewstep.alphaflow_target(v, u_next, alpha)
        if self.clamp_target is not None:
            target = target.clamp(-self.clamp_target, self.clamp_target)
        return torch.where(_rows(jump, v), target, v), weight.float()

    def __call__(self, batch: StepBatch) -> torch.Tensor:
        target, weight = self.targets(batch)
        error = batch.output.float() - target
        return weight * meanflow.adaptive_weight(error, self.p, self.c) * error.pow(2).flatten(1).mean(1)
