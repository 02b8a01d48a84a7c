"""Multistep exponential integrators in the log-SNR: DPM-Solver++ (2M, 3M) and UniPC, for any sit interpolant.

Notation (t = 0 noise, t = 1 data): x_t = alpha_t x1 + sigma_t eps and the log signal-to-noise ratio

    lambda_t = log(alpha_t / sigma_t),

which increases with t, from -inf where alpha_0 = 0 (linear, GVP) to +inf where sigma_1 = 0. The model's data
prediction D(x, t) = E[x1 | x_t = x] comes from its velocity through ``objectives.predicted_data``. Because
v = (sigma'_t / sigma_t) x + alpha_t lambda'_t D, the probability-flow ODE dx/dt = v integrates exactly to

    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda D(x_lambda) d lambda      (1)

(DPM-Solver++, Lu et al. 2022, eq. (9), in sit's direction of time). A multistep method replaces D on the step
by the polynomial in lambda through the data predictions already computed at the last k grid points and
integrates (1) exactly. With h = lambda_t - lambda_s and u = (lambda - lambda_s) / h,

    sigma_t int_{lambda_s}^{lambda_t} e^lambda u^j d lambda = alpha_t g_j(h),
    g_j(h) = int_0^h e^{-w} (1 - w / h)^j dw:   g_0 = 1 - e^{-h},   g_j = 1 - (j / h) g_{j-1}.

History: D_0 = D(x_s) at s = s_0, and D_1, D_2 at the earlier points s_1, s_2, with r_m = (lambda_{s_{m-1}} -
lambda_{s_m}) / h. Steps of order k use the last k points:

    order 1 (DDIM):  x_t = (sigma_t / sigma_s) x_s + alpha_t g_0 D_0
    2M:              x_t = (sigma_t / sigma_s) x_s + alpha_t g_0 (D_0 + Delta_0 / 2),   Delta_0 = (D_0 - D_1) / r_1
                     (the paper's form, diffusers' solver_type="midpoint"; the exact integral of the line
                     would weigh Delta_0 by g_1 = g_0 / 2 + O(h^2), the same order)
    3M:              x_t = (sigma_t / sigma_s) x_s + alpha_t (g_0 D_0 + g_1 d_1 + g_2 d_2),
                     d_2 = (Delta_0 - Delta_1) / (r_1 + r_2),  d_1 = Delta_0 + r_1 d_2,  Delta_1 = (D_1 - D_2) / r_2,
                     the exact integral of the quadratic D_0 + d_1 u + d_2 u^2 through the three points.

The published DPM-Solver++(3M) (LuChengTHU/dpm-solver's ``multistep_dpm_solver_third_update``, diffusers'
``DPMSolverMultistepScheduler``) weighs d_2 by g_2 / 2 instead of g_2 (its phi_3 term): its step is wrong at
O(h^3), so it is a second-order method (measured in ``tests/test_multistep.py``). ``published_3m=True``
reproduces it for comparison; the default is the third-order step above.

UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework", the B(h) variants of Alg. 2-3, data
prediction). With r'_m = (lambda_{s_m} - lambda_s) / h (negative), B(h) = h ("bh1") or 1 - e^{-h} ("bh2") and
b_i = g_i(h) / B(h):

    UniP-p:  x_t = (sigma_t / sigma_s) x_s + alpha_t g_0 D_0 + alpha_t B(h) sum_{m<p} rho_m (D_m - D_0) / r'_m,
             sum_m rho_m r'_m^(i-1) = b_i for i < p  (p = 2: rho = 1/2, the official code's choice; bh2 then
             is DPM-Solver++ 2M);
    UniC-p:  after the model is evaluated at the predicted x_t, giving D_t,
             x_t <- (sigma_t / sigma_s) x_s + alpha_t g_0 D_0
                    + alpha_t B(h) [sum_{m<p} rho_m (D_m - D_0) / r'_m + rho_p (D_t - D_0)],
             the same conditions for i <= p with r'_p = 1 (p = 1: rho = 1/2).

The corrected x_t carries on while D_t, evaluated at the predicted x_t, enters the history: the corrector costs
no evaluation, and raises the order from p to p + 1. The last step is not corrected (that would cost one more
evaluation), as in the official code and diffusers.

Lower orders, as the papers and diffusers do:
  - warm-up: step i (from 0) has order at most i + 1;
  - a point at lambda = -inf (alpha = 0: the pure-noise start of linear and GVP) starts the solve with a DDIM
    step, exact wherever D is constant in lambda, but enters no polynomial (its difference quotients are 0 or
    undefined) and no corrector, so the next step also has order 1;
  - a step ending at sigma = 0 (t = 1; lambda = +inf) has order 1: x_t = alpha_t D_0, the data prediction (for
    linear, the Euler step x + (1 - t) v). Higher orders divide by an infinite log-SNR step;
  - ``lower_order_final``: the last step has order 1 and the one before order <= 2, as diffusers does: for
    DPM-Solver++ only on grids of fewer than 15 steps, for UniPC always.

Each solver evaluates the velocity once per step (NFE = steps) and returns (x at the end of the grid, NFE). The
grid must increase (noise to data); ``velocity(t, x)`` takes t as a 0-dim tensor, as ``integrate``'s dynamics.
Coefficients are computed in float64 and applied in the dtype of x0.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from sitcli.errors import InputError
from sitcli.transport.interpolants import Interpolant
from sitcli.transport.objectives import predicted_data

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# diffusers' DPMSolverMultistepScheduler lowers the final orders only on grids shorter than this.
DPM_LOWER_ORDER_FINAL_BELOW = 15
UNIPC_VARIANTS = ("bh1", "bh2")


def log_snr_schedule(interpolant: Interpolant, grid: torch.Tensor) -> tuple[list[float], list[float], list[float]]:
    """(alpha_t, sigma_t, lambda_t) at the grid points, in float64. sigma_1 is set to 0 exactly (GVP's
    cos(pi / 2) rounds to 6e-17), so lambda is +inf there and -inf where alpha_t = 0."""
    t = grid.detach().to("cpu", torch.float64)
    alpha, sigma = interpolant.alpha(t).clone(), interpolant.sigma(t).clone()
    sigma[t == 1] = 0.0
    lam = torch.log(alpha) - torch.log(sigma)
    return alpha.tolist(), sigma.tolist(), lam.tolist()


def data_prediction(velocity: Velocity, interpolant: Interpolant, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """D(x, t) = E[x1 | x_t = x] from one velocity evaluation (``objectives.predicted_data``)."""
    return predicted_data(interpolant, "velocity", velocity(t, x), x, t.to(x.dtype).expand(x.shape[0]))


def g_coefficients(h: float, count: int) -> list[float]:
    """[g_0(h), ..., g_{count-1}(h)], g_j(h) = int_0^h e^{-w} (1 - w / h)^j dw (h may be +inf: all 1).

    For h < 1 the recursion g_j = 1 - (j / h) g_{j-1} cancels, so there the series
    g_j(h) = h j! sum_n (-h)^n / (n + j + 1)! is summed instead."""
    if h < 1:
        return [h * math.factorial(j) * sum((-h) ** n / math.factorial(n + j + 1) for n in range(30))
                for j in range(count)]
    g = [-math.expm1(-h)]
    for j in range(1, count):
        g.append(1 - j / h * g[-1])
    return g


def _check(grid: torch.Tensor, order: int, orders: tuple[int, ...]) -> None:
    if order not in orders:
        raise InputError(f"order={order} is invalid: choose {' or '.join(map(str, orders))}")
    if grid.dim() != 1 or len(grid) < 2 or not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError("the time grid must be at least two increasing times (noise to data)")


def _step_order(order: int, step: int, steps: int, lams: list[float], sigma_next: float, final: bool) -> int:
    """The order of step ``step``: at most ``order``, the number of points since any lambda = -inf (warm-up),
    1 into sigma = 0, and with the ``final`` rule at most the number of steps left."""
    usable = 0
    for lam in reversed(lams[: step + 1]):
        if lam == -math.inf:
            break
        usable += 1
    k = max(1, min(order, usable))
    if sigma_next == 0:
        k = 1
    if final:
        k = min(k, steps - step)
    return k


def dpm_solver_pp(
    velocity: Velocity,
    x0: torch.Tensor,
    grid: torch.Tensor,
    interpolant: Interpolant,
    order: int = 2,
    lower_order_final: bool = True,
    published_3m: bool = False,
) -> tuple[torch.Tensor, int]:
    """Multistep DPM-Solver++ of ``order`` 1, 2 (2M) or 3 (3M) on ``grid`` (module docstring); returns (x, nfe).

    Args:
        lower_order_final: lower the last two steps' orders on grids of fewer than 15 steps (diffusers).
        published_3m: weigh 3M's quadratic term as LuChengTHU/dpm-solver and diffusers do (second order).
    """
    _check(grid, order, (1, 2, 3))
    alpha, sigma, lam = log_snr_schedule(interpolant, grid)
    steps = len(grid) - 1
    final = lower_order_final and steps < DPM_LOWER_ORDER_FINAL_BELOW
    x, history = x0, []
    for i in range(steps):
        history = [data_prediction(velocity, interpolant, grid[i], x), *history][:order]
        k = _step_order(order, i, steps, lam, sigma[i + 1], final)
        h = lam[i + 1] - lam[i]
        g = g_coefficients(h, 3)
        update = g[0] * history[0]
        if k >= 2:
            r1 = (lam[i] - lam[i - 1]) / h
            delta0 = (history[0] - history[1]) / r1
            if k == 2:
                update = update + g[0] / 2 * delta0
            else:
                r2 = (lam[i - 1] - lam[i - 2]) / h
                d2 = (delta0 - (history[1] - history[2]) / r2) / (r1 + r2)
                d1 = delta0 + r1 * d2
                update = update + g[1] * d1 + (g[2] / 2 if published_3m else g[2]) * d2
        x = sigma[i + 1] / sigma[i] * x + alpha[i + 1] * update
    return x, steps


def _unipc_rhos(r: list[float], b: list[float], size: int) -> list[float]:
    """rho solving sum_m rho_m r_m^(i-1) = b_i for i = 1..size (the first ``size`` points of ``r``)."""
    matrix = torch.tensor([[rm ** i for rm in r[:size]] for i in range(size)], dtype=torch.float64)
    return torch.linalg.solve(matrix, torch.tensor(b[:size], dtype=torch.float64)).tolist()


def unipc(
    velocity: Velocity,
    x0: torch.Tensor,
    grid: torch.Tensor,
    interpolant: Interpolant,
    order: int = 2,
    variant: str = "bh2",
    lower_order_final: bool = True,
    corrector: bool = True,
) -> tuple[torch.Tensor, int]:
    """UniPC (UniP-``order`` predictor, UniC corrector) on ``grid`` (module docstring); returns (x, nfe).

    With the corrector the order is ``order`` + 1. diffusers' default is order 2 with bh2.

    Args:
        variant: "bh1" (B(h) = h) or "bh2" (B(h) = 1 - e^{-h}).
        lower_order_final: the last step has order 1 and the one before order <= 2 (diffusers, always).
        corrector: False runs the predictor alone (UniP; with order 2 and bh2 that is DPM-Solver++ 2M).
    """
    _check(grid, order, (1, 2, 3))
    if variant not in UNIPC_VARIANTS:
        raise InputError(f"unknown UniPC variant {variant!r}: choose {' or '.join(UNIPC_VARIANTS)}")
    alpha, sigma, lam = log_snr_schedule(interpolant, grid)
    steps = len(grid) - 1
    x, history, last = x0, [], None  # last: (order, start x) of the previous predictor step

    def base_and_coefficients(i: int, k: int, start: torch.Tensor):
        # The order-1 part of the step from grid[i] to grid[i + 1], B(h), b_1..b_k and r'_1..r'_(k-1).
        h = lam[i + 1] - lam[i]
        g = g_coefficients(h, k + 1)
        bh = h if variant == "bh1" else g[0]
        base = sigma[i + 1] / sigma[i] * start + alpha[i + 1] * g[0] * history[0]
        r = [(lam[i - m] - lam[i]) / h for m in range(1, k)]
        return base, bh, [gj / bh for gj in g[1:]], r

    for i in range(steps):
        d = data_prediction(velocity, interpolant, grid[i], x)
        if corrector and last is not None:
            # UniC at grid[i] for the step from grid[i - 1]; history still ends at grid[i - 1].
            p, start = last
            base, bh, b, r = base_and_coefficients(i - 1, p, start)
            rhos = [0.5] if p == 1 else _unipc_rhos([*r, 1.0], b, p)
            correction = sum(rho * (dm - history[0]) / rm for rho, dm, rm in zip(rhos, history[1:], r))
            x = base + alpha[i] * bh * (correction + rhos[-1] * (d - history[0]))
        history = [d, *history][:order]
        k = _step_order(order, i, steps, lam, sigma[i + 1], lower_order_final)
        base, bh, b, r = base_and_coefficients(i, k, x)
        if k >= 2:
            rhos = [0.5] if k == 2 else _unipc_rhos(r, b, k - 1)
            prediction = sum(rho * (dm - history[0]) / rm for rho, dm, rm in zip(rhos, history[1:], r))
            base = base + alpha[i + 1] * bh * prediction
        # A step from lambda = -inf (h infinite) has no corrector: its trapezoid weights would be meaningless.
        last = (k, x) if lam[i] > -math.inf else None
        x = base
    return x, steps
