"""Few-step models fine-tuned from a flow model: the math of Decoupled MeanFlow, improved MeanFlow and AlphaFlow.

Everything here is in sit's time (t = 0 noise, t = 1 data), where the average velocity from t to a
later r >= t is u(z_t, t, r) = (z_r - z_t) / (r - t) and a jump z_r = z_t + (r - t) u is exact
(``transport.meanflow``). The three papers write time the other way, tau = 1 - t with tau = 1
noise, and jump from tau_t down to tau_r < tau_t: their v and u are -v and -u here, their
tau_t - tau_r is r - t here, and du/dtau_t there is du/dt here (both signs flip). Each formula
below says what it is in the paper's time.

Time pairs (``draw_time_pairs``; DMF's ``DMFLoss.sample_times``, iMF's ``sample_tr``, AlphaFlow's
``sample_traj_params``). A share ``share`` of the rows jump (as ``MeanFlowLoss``'s share): they draw a
and b from two densities and take t = min(a, b), r = max(a, b); the others are flow-matching rows,
r = t with t from their own density
(the papers take tau_t = max, tau_r = min of their draws: the same pairs, since a density with
logit-mean m in their time has logit-mean -m in sit's).

Decoupled MeanFlow (Lee, Yu, Shin 2025, kyungmnlee/dmf ``loss.py``). The model is a flow SiT whose
last blocks see r instead of t (``SiT(dmf_depth=...)``); the loss is the mean-flow loss

    u_tgt = v_g + (r - t) sg(du/dt),  du/dt = jvp of u along (v_g, 1, 0),   loss = sg(w) |u - u_tgt|^2 / D

(paper: u_tgt = v - (tau_t - tau_r) du/dtau_t, the same equation) with DMF's model guidance (their
``g_type="mg"``): for a labelled example at t in the guidance interval,

    v_g = v_c + (1 - 1/omega) (v_theta(x_t, t | y) - v_theta(x_t, t | null)),   v_theta(z, t) = sg u_theta(z, t, t)

(``guided_velocity``), which the model fits when its conditional velocity is the classifier-free guided
omega v_cond + (1 - omega) v_uncond. omega here is that guidance scale, >= 1, as ``MeanFlowLoss``'s;
DMF writes the coefficient 1 - 1/omega as its omega (its 0.6 is a scale omega = 2.5). DMF's
weight is a learned log-variance, loss = log(mse / e^lv + eps) + lv; its gradient at lv = 0 is
that of sit's adaptive weight sg(1 / (mse + c)^p) mse with p = 1 and c = eps, the weight used here.
DMF's flow-matching half (a second batch at r = t) is the rows with r = t here (``share`` = 0.5).

Improved MeanFlow (Geng et al. 2025, Lyy-iiis/imeanflow ``imf.py`` ``iMeanFlow.forward``). The
loss lives in velocity space: the network's u is turned into the velocity it implies,

    V = u_theta(x_t, t, r) - (r - t) sg(du_theta/dt)                (``compound_velocity``; paper:
                                                                   V = u + (tau_t - tau_r) sg(du/dtau_t))

and V, not u, is regressed on the guided velocity v_g; the JVP's tangent is the model's own
velocity v_theta(x_t, t) (its auxiliary head, sg), not the noisy conditional velocity:

    loss = sg(w_V) |V - sg(v_g)|^2 / D  +  sg(w_v) |v_theta(x_t, t) - sg(v_g)|^2 / D,
    v_g  = v_c + (1 - 1/omega) (v_theta(x_t, t | y, omega) - v_theta(x_t, t | null, 1))   (``guided_velocity``)

the same guidance as DMF's, its fixed point omega v_cond + (1 - omega) v_uncond, but omega is
drawn per example with density proportional to omega^-beta on [1, omega_max] (``draw_omega``; iMF
draws 1 + s with s_max = 7 and beta = 1, log-uniform on [1, 8]) and fed to the model
(``SiT(omega_input=True)``). iMF's adaptive weight is loss / sg(loss + eps)^p on the *sum* over
the D dimensions; with the mean, as here, c = eps / D gives the same weight for p = 1.

AlphaFlow (Zhang et al. 2025, snap-research/alphaflow ``src/training/loss.py``, ``AlphaFlowLoss``):
a family of targets between trajectory flow matching (alpha = 1) and mean flows (alpha -> 0). With
delta = alpha (r - t) one Euler step of the (guided) velocity, then the model's own jump:

    u_tgt = (delta v_g + (r - t - delta) u_theta(x_t + delta v_g, t + delta, r)) / (r - t)
          = alpha v_g + (1 - alpha) sg u_theta(x_t + delta v_g, t + delta, r)           (``alphaflow_target``)

(paper: x_t - dt v, sigma = t - dt: the same step), u_tgt = v_g at alpha = 1 (no evaluation), and
at alpha = 0 the mean-flow JVP target above. For the exact u the error of this target is
O(alpha^2 (r - t)). alpha follows ``alphaflow_alpha``, a sigmoid from 1 to 0 over the run (their
``get_ratio`` with ``scheduler: sigmoid``). Rows with r != t and 0 < alpha < 1 weigh alpha.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from sitcli.transport.interpolants import expand_time


def draw_time_pairs(sample_fm: Callable[..., torch.Tensor], sample_a: Callable[..., torch.Tensor],
                    sample_b: Callable[..., torch.Tensor], batch: int, share: float, device=None,
                    dtype=torch.float32, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, r), each (batch,), t <= r: a share ``share`` of the rows (a random subset, drawn last) jumps,
    t = min(a, b), r = max(a, b), a from ``sample_a`` and b from ``sample_b``; the others have r = t from
    ``sample_fm``. Each sampler is called as ``sample(batch, device=, dtype=, generator=)``, as
    ``Transport.sample_time``."""
    kwargs = dict(device=device, dtype=dtype, generator=generator)
    fm, a, b = sample_fm(batch, **kwargs), sample_a(batch, **kwargs), sample_b(batch, **kwargs)
    jump = torch.rand(batch, device=device, generator=generator) < share
    return torch.where(jump, torch.minimum(a, b), fm), torch.where(jump, torch.maximum(a, b), fm)


def guided_velocity(v: torch.Tensor, v_cond: torch.Tensor, v_uncond: torch.Tensor,
                    omega: float | torch.Tensor) -> torch.Tensor:
    """The guided target v + (1 - 1/omega) (v_cond - v_uncond) of DMF and iMF, v_cond and v_uncond the model's
    own velocities, omega >= 1 a number or one per example (B,)."""
    coefficient = 1 - 1 / omega if isinstance(omega, (int, float)) else expand_time(1 - 1 / omega, v)
    return v + coefficient * (v_cond - v_uncond)


def draw_omega(batch: int, omega_max: float, beta: float = 1.0, device=None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Guidance scales (batch,) with density proportional to omega^-beta on [1, omega_max], by inversion of
    u ~ U[0, 1): omega = omega_max^u for beta = 1, else (1 + u (omega_max^(1 - beta) - 1))^(1 / (1 - beta))."""
    if omega_max < 1:
        raise ValueError(f"omega_max={omega_max}: guidance scales are >= 1")
    u = torch.rand(batch, device=device, dtype=torch.float64, generator=generator)
    if beta == 1:
        omega = torch.exp(u * math.log(omega_max))
    else:
        omega = (1 + u * (omega_max ** (1 - beta) - 1)) ** (1 / (1 - beta))
    return omega.float()


def compound_velocity(u: torch.Tensor, du_dt: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """iMF's V = u - (r - t) du/dt: the velocity at (z_t, t) that an average velocity u implies (exact for
    the exact u, by u = v + (r - t) du/dt); du_dt is expected without gradients."""
    return u - expand_time(r - t, u) * du_dt


def alphaflow_alpha(progress: float, start: float = 0.0, end: float = 1.0, gamma: float = 25.0,
                    clamp: float = 0.005) -> float:
    """AlphaFlow's alpha at ``progress`` = step / total steps: 1 before ``start``, 0 after ``end`` (fractions
    of the run), between them 1 - sigmoid(gamma (progress - (start + end) / 2) / (end - start)); a value
    within ``clamp`` of 0 or 1 is set to it, so the schedule starts at 1 (flow matching) and ends at 0
    (mean flows). Non-increasing in ``progress``."""
    if not 0 <= start < end:
        raise ValueError(f"alphaflow_alpha: need 0 <= start < end, got start={start}, end={end}")
    if progress <= start:
        alpha = 1.0
    elif progress >= end:
        alpha = 0.0
    else:
        alpha = 1 - 1 / (1 + math.exp(-gamma * (progress - (start + end) / 2) / (end - start)))
    return 0.0 if alpha < clamp else 1.0 if alpha > 1 - clamp else alpha


def alphaflow_target(v: torch.Tensor, u_next: torch.Tensor, alpha: float) -> torch.Tensor:
    """u_tgt = alpha v + (1 - alpha) u_next, u_next = u(z_t + alpha (r - t) v, t + alpha (r - t), r)."""
    return alpha * v + (1 - alpha) * u_next
