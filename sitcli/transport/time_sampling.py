"""Training-time sampling: the density from which each training example's time t is drawn.

In continuous time t = t0 + (t1 - t0) u, with u on [0, 1] drawn from a named density, written in
sit's time (u = 0 noise, u = 1 data) with z ~ N(0, 1) and r ~ U[0, 1):

    uniform        u = r                                                  F(u) = u
    logit-normal   u = sigmoid(m + s z)     (logit_mean m, logit_std s)   F(u) = Phi((logit u - m) / s)
    mode           u = r + c (cos^2(pi r / 2) - 1 + r)   (mode_scale c)   F = the inverse of that map
    cosmap         u = sin(pi r / 2) / (sin(pi r / 2) + cos(pi r / 2))    F(u) = 2 / pi atan(u / (1 - u))

These are the densities of Esser et al. 2024 (SD3), whose time runs the other way (t_SD3 = 1 - u,
t_SD3 = 1 noise): its logit-normal with mean m is sit's with mean -m (the same std; REPA's and
LightningDiT's "lognormal" weighting is logit-normal(0, 1), symmetric, the same in both). The mode
and cosmap densities are symmetric about 1/2, so they are the same law in both conventions; mode
needs -1 <= c <= 2 / (pi - 2) for its map to increase (c = 0 is uniform; SD3 uses 1.29).

In discrete time (``num_timesteps=T``) t is one of the T evenly spaced points t_k = t0 + (t1 - t0)
u_k, u_k = k / (T - 1), of [t0, t1] (``time_grids.training_grid``), point k drawn with probability
proportional to the density at u_k: pdf(u_k) / sum_j pdf(u_j). For uniform that is one in T (drawn
by ``randint``, as before these densities); logit-normal gives the two end points weight 0.

A time shift s (``time_shift``, ``time_grids.shift_time``: t -> t / (s + (1 - s) t), s > 1 towards
noise) maps each continuous draw t to phi_s(t), as RAE shifts its training times after drawing them
(it then trains on the density of phi_s(t), on the same interval when t0 = 0 and t1 = 1).

A new density is one more entry in ``TIME_DENSITIES``: its parameters with their defaults, a draw
(batch, params, device, dtype, generator) -> u, its cdf and pdf (params, float64 u) -> float64,
and a check of the parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from sitcli.errors import InputError
from sitcli.transport.time_grids import shift_time, training_grid


@dataclass(frozen=True)
class TimeDensity:
    """One training-time density on u in [0, 1] (sit's time: 0 noise, 1 data)."""

    name: str
    params: dict[str, float]  # parameter name -> default
    draw: Callable[..., torch.Tensor]
    cdf: Callable[[dict, torch.Tensor], torch.Tensor]
    pdf: Callable[[dict, torch.Tensor], torch.Tensor]
    check: Callable[[dict], str | None] = lambda p: None  # a message for bad parameters, else None


def _uniform_draw(batch, p, device=None, dtype=torch.float32, generator=None):
    return torch.rand(batch, device=device, dtype=dtype, generator=generator)


def _logit_normal_draw(batch, p, device=None, dtype=torch.float32, generator=None):
    z = torch.randn(batch, device=device, dtype=dtype, generator=generator)
    return torch.sigmoid(p["logit_mean"] + p["logit_std"] * z)


def _logit_normal_cdf(p, u):
    return 0.5 * torch.erfc(-(torch.logit(u) - p["logit_mean"]) / (p["logit_std"] * math.sqrt(2)))


def _logit_normal_pdf(p, u):
    z = (torch.logit(u) - p["logit_mean"]) / p["logit_std"]
    pdf = torch.exp(-0.5 * z**2) / (p["logit_std"] * math.sqrt(2 * math.pi) * u * (1 - u))
    return torch.where((u > 0) & (u < 1), pdf, torch.zeros_like(u))


def _mode_map(c, r):
    return r + c * (torch.cos(math.pi / 2 * r) ** 2 - 1 + r)


def _mode_draw(batch, p, device=None, dtype=torch.float32, generator=None):
    return _mode_map(p["mode_scale"], torch.rand(batch, device=device, dtype=dtype, generator=generator))


def _mode_cdf(p, u):
    # The inverse of the increasing map r -> u, by bisection to float64 round-off.
    lo, hi = torch.zeros_like(u), torch.ones_like(u)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = _mode_map(p["mode_scale"], mid) < u
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


def _mode_pdf(p, u):
    r = _mode_cdf(p, u)
    return 1 / (1 + p["mode_scale"] * (1 - math.pi / 2 * torch.sin(math.pi * r)))


def _mode_check(p):
    c = p["mode_scale"]
    if not -1 <= c <= 2 / (math.pi - 2):
        return (f"mode_scale={c} makes the mode density's map decrease: pass -1 <= mode_scale <= "
                f"{2 / (math.pi - 2):.4f} (SD3: 1.29)")
    return None


def _cosmap_draw(batch, p, device=None, dtype=torch.float32, generator=None):
    r = torch.rand(batch, device=device, dtype=dtype, generator=generator)
    sin, cos = torch.sin(math.pi / 2 * r), torch.cos(math.pi / 2 * r)
    return sin / (sin + cos)


def _cosmap_cdf(p, u):
    return 2 / math.pi * torch.atan2(u, 1 - u)


def _cosmap_pdf(p, u):
    return 2 / math.pi / (u**2 + (1 - u) ** 2)


TIME_DENSITIES: dict[str, TimeDensity] = {
    d.name: d
    for d in (
        TimeDensity("uniform", {}, _uniform_draw, lambda p, u: u.clamp(0, 1), lambda p, u: torch.ones_like(u)),
        TimeDensity(
            "logit-normal",
            {"logit_mean": 0.0, "logit_std": 1.0},
            _logit_normal_draw,
            _logit_normal_cdf,
            _logit_normal_pdf,
            lambda p: None if p["logit_std"] > 0 else f"logit_std={p['logit_std']} must be positive, e.g. 1",
        ),
        TimeDensity("mode", {"mode_scale": 1.29}, _mode_draw, _mode_cdf, _mode_pdf, _mode_check),
        TimeDensity("cosmap", {}, _cosmap_draw, _cosmap_cdf, _cosmap_pdf),
    )
}

# Every density parameter, as the config field and the flag (--logit-mean, ...) call it.
DENSITY_PARAMS: tuple[str, ...] = tuple(dict.fromkeys(k for d in TIME_DENSITIES.values() for k in d.params))


def time_density(name: str, params: dict | None = None) -> tuple[TimeDensity, dict[str, float]]:
    """The density ``name`` and its full parameters (the given ones over the defaults); InputError for
    an unknown name, a parameter the density does not take, or a bad value."""
    if name not in TIME_DENSITIES:
        raise InputError(f"unknown time density {name!r}: choose one of {', '.join(TIME_DENSITIES)}")
    density = TIME_DENSITIES[name]
    given = {k: v for k, v in (params or {}).items() if v is not None}
    foreign = sorted(set(given) - set(density.params))
    if foreign:
        owners = {k: n for n, d in TIME_DENSITIES.items() for k in d.params}
        fixes = ", ".join(f"{k} belongs to time density {owners.get(k, '(none)')}" for k in foreign)
        raise InputError(f"time density {name} takes no {', '.join(foreign)} ({fixes}): drop it or change the density")
    full = {**density.params, **{k: float(v) for k, v in given.items()}}
    message = density.check(full)
    if message:
        raise InputError(message)
    return density, full


def discrete_weights(name: str, params: dict | None, num_timesteps: int) -> torch.Tensor:
    """P(point k), k = 0 .. T - 1, of the T-point training grid (float64): the density at u_k, normalised."""
    density, full = time_density(name, params)
    pdf = density.pdf(full, torch.linspace(0, 1, num_timesteps, dtype=torch.float64))
    return pdf / pdf.sum()


def sample_training_time(
    batch: int,
    interval: tuple[float, float],
    num_timesteps: int | None = None,
    device=None,
    dtype=torch.float32,
    generator: torch.Generator | None = None,
    density: str = "uniform",
    params: dict | None = None,
    time_shift: float = 1.0,
) -> torch.Tensor:
    """Training times, shape (batch,): t0 + (t1 - t0) u with u from ``density`` (with ``params``),
    or a point of the ``num_timesteps``-point grid on [t0, t1] in discrete time (see the module);
    continuous times are then shifted by ``time_shift`` (1: none)."""
    chosen, full = time_density(density, params)
    t0, t1 = interval
    if time_shift != 1 and num_timesteps is not None:
        raise InputError("a time shift of the training times needs continuous time: drop --num-timesteps or the shift")
    if num_timesteps is not None:
        if density == "uniform":
            index = torch.randint(0, num_timesteps, (batch,), device=device, generator=generator)
        else:
            weights = discrete_weights(density, full, num_timesteps).to(device)
            index = torch.multinomial(weights, batch, replacement=True, generator=generator)
        return training_grid(t0, t1, num_timesteps, device=device, dtype=dtype)[index]
    t = t0 + (t1 - t0) * chosen.draw(batch, full, device=device, dtype=dtype, generator=generator)
    return t if time_shift == 1 else shift_time(t, time_shift).to(dtype)  # the same draws, shifted (in float64)
