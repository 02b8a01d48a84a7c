"""Mean flows (Geng, Deng, Bai, Kolter, He 2025) in sit's time: one-step generation from an average velocity.

Time. The paper runs time the other way (tau = 0 data, tau = 1 noise, z_tau = (1 - tau) x + tau eps).
With sit's t = 1 - tau every velocity flips sign, v_sit = dz/dt = -dz/dtau, and the paper's jump from
tau_t down to tau_r < tau_t is sit's jump from t up to r = 1 - tau_r > t. Here the average velocity
of the flow dz/ds = v(z, s) from time t to a later time r >= t is

    u(z_t, t, r) = 1 / (r - t) * integral_t^r v(z_s, s) ds = (z_r - z_t) / (r - t),    u(z, t, t) = v(z, t),

(the paper's u(z, tau_r, tau_t) is -u(z, t, r)), and a jump along it is exact:

    z_r = z_t + (r - t) u(z_t, t, r).

Identity. For fixed r, z_r is the same point for every z_t on one trajectory, so differentiating
(r - t) u(z_t, t, r) = z_r - z_t along the flow in t gives -u + (r - t) du/dt = -v, i.e.

    u(z_t, t, r) = v(z_t, t) + (r - t) du/dt,    du/dt = v . grad_z u + d_t u
    (the paper: u = v - (tau_t - tau_r) du/dtau)

and du/dt is one forward-mode Jacobian-vector product of (z, t, r) -> u with tangents (v, 1, 0).

Training (``meanflow_target``, ``adaptive_weight``): with x_t = alpha_t x1 + sigma_t eps and its
conditional velocity v_c (``Interpolant.conditional_velocity``) in place of v, the regression target is

    u_tgt = v_c + (r - t) sg(du_theta/dt),    loss = sg(w) |u_theta(x_t, t, r) - sg(u_tgt)|^2,
    w = 1 / (|u_theta - u_tgt|^2 / D + c)^p                                        (the paper's adaptive weight)

(D the number of dimensions: the paper's norm of the whole error divided by D, so that c means the
same for every image size; p = 0 is the plain squared error). Pairs (t, r): two draws from the time
density, t the smaller; a share 1 - ``share`` of them has r = t, where the target is v_c (flow matching).

Guidance folded into the target (the paper's CFG training, scale omega): for a labelled example the
velocity of the tangent and the target is

    v_g = omega v_c + (1 - omega) u_theta(x_t, t, t | no class)      (sg, the model's own unconditional velocity)

and v_c for an example whose label was dropped; the model then samples guided with one evaluation.

Sampling (``sample_meanflow``): k jumps on a uniform grid t_0 < ... < t_k, z_{i+1} = z_i + (t_{i+1} - t_i)
u(z_i, t_i, t_{i+1}); NFE = k.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from sitcli.transport.interpolants import expand_time


def draw_times(
    sample_time: Callable[..., torch.Tensor],
    batch: int,
    share: float,
    device=None,
    dtype=torch.float32,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, r), each (batch,): two draws of ``sample_time(batch, device, dtype, generator)``, sorted so that
    t <= r; then r = t except on a share ``share`` of the rows (drawn from ``generator`` after the times)."""
    a = sample_time(batch, device=device, dtype=dtype, generator=generator)
    b = sample_time(batch, device=device, dtype=dtype, generator=generator)
    t, r = torch.minimum(a, b), torch.maximum(a, b)
    keep = torch.rand(batch, device=device, generator=generator) < share
    return t, torch.where(keep, r, t)


def jvp_math_attention():
    """The context under which a forward-mode JVP runs through SiT: the math kernel of
    scaled_dot_product_attention, the one with a forward-mode derivative on every device
    (torch's CPU flash kernel raises NotImplementedError under ``torch.func.jvp``)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def total_derivative(
    u: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    t: torch.Tensor,
    r: torch.Tensor,
    v: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(u(z, t, r), du/dt along the flow) by one ``torch.func.jvp`` with tangents (v, 1, 0), no gradients."""
    with torch.no_grad(), jvp_math_attention():
        return torch.func.jvp(u, (z, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))


def meanflow_target(v: torch.Tensor, du_dt: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """u_tgt = v + (r - t) du/dt (sit's time, r >= t; see the module docstring)."""
    return v + expand_time(r - t, v) * du_dt


def adaptive_weight(error: torch.Tensor, p: float, c: float) -> torch.Tensor:
    """Per-sample sg(1 / (mean squared error + c)^p), shape (B,), from the error u_theta - u_tgt (B, ...)."""
    mse = error.detach().float().pow(2).flatten(1).mean(1)
    return 1.0 / (mse + c) ** p if p else torch.ones_like(mse)


def meanflow_time_grid(steps: int = 1, interval: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """The ``steps`` + 1 uniform times of the mean-flow jumps over ``interval`` (float64)."""
    if steps < 1:
        raise ValueError(f"steps={steps}: a mean-flow sampler needs at least one step")
    return torch.linspace(interval[0], interval[1], steps + 1, dtype=torch.float64)


def sample_meanflow(
    model: Callable,
    x0: torch.Tensor,
    steps: int = 1,
    model_kwargs: dict | None = None,
    interval: tuple[float, float] = (0.0, 1.0),
    time_grid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Mean-flow jumps z_r = z_t + (r - t) u(z_t, t, r) over ``time_grid`` (None: ``steps`` uniform jumps from
    noise x0 at interval[0] to data at interval[1]): (samples, nfe).

    ``model(x, t, r=r, **model_kwargs)`` returns the average velocity from t to r (a mean-flow SiT,
    or any callable, e.g. an exact one for tests).
    """
    grid = (meanflow_time_grid(steps, interval) if time_grid is None else time_grid).tolist()
    x, kwargs = x0, model_kwargs or {}
    with contextlib.nullcontext() if x0.requires_grad else torch.no_grad():
        for t, r in zip(grid[:-1], grid[1:]):
            tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
            rr = torch.full((x.shape[0],), r, dtype=x.dtype, device=x.device)
            x = x + (r - t) * model(x, tt, r=rr, **kwargs).to(x.dtype)
    return x, len(grid) - 1
