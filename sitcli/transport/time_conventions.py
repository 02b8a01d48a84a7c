"""Other papers' time axes, mapped exactly onto sit's time t (t = 0 noise, t = 1 data).

Two kinds of convention. A *time* convention is the model's own time written another way, whatever
the interpolant; a *noise-level* convention is a monotone function of the noise-to-signal ratio of
sit's interpolant,

    r(t) = sigma_t / alpha_t        (infinite at t = 0 when alpha_0 = 0, zero at t = 1),

which decreases in t, so it has one inverse on [0, 1]:

    t        sit's time                                                      the identity
    repa     REPA's time s (s = 1 noise, s = 0 data):                        s = 1 - t
    sigma    EDM's noise level sigma (x = x1 + sigma eps, up to scale):      sigma = r
    logsnr   the log signal-to-noise ratio lambda = log(alpha^2 / sigma^2):  lambda = -2 log r

REPA's time is the model's time reversed, for each of REPA's paths (``samplers.py`` of
sihyun-yu/REPA: ``linear`` alpha = 1 - s, sigma = s; ``cosine`` alpha = cos(pi s / 2), sigma =
sin(pi s / 2), which is sit's GVP at t = 1 - s; ``formats.repa`` loads both that way), and its
samplers guide where s lies in [--guidance-low, --guidance-high]: REPA's ``--guidance-high 0.7``
is t >= 0.3 on every path. (Not r / (1 + r): that equals 1 - t on the linear path only, and put
the cosine path's end at t = 0.2578.) For a path REPA does not have (VP, DDPM) ``repa`` is still
1 - t, the model's time reversed.

EDM's sigma is the noise level of x_t / alpha_t = x1 + r eps (EDM's x = y + sigma n with the data y
unscaled: ``generate_images.py`` of NVlabs/edm2 steps sigma from 80 to 0.002; the guidance interval
of Kynkaenniemi et al. 2024 is written in that sigma), and the log-SNR is lambda = log(alpha_t^2 /
sigma_t^2) (Kingma et al. 2021), so on the linear path EDM's sigma is (1 - t) / t and lambda =
2 log(t / (1 - t)). For other interpolants the point of sit's time with the same noise level is
found by bisection on r in float64 to round-off (60 halvings of [0, 1]). A value outside the
interpolant's range maps to the nearer end (t = 0 for any sigma above r(0), e.g. VP's r(0) is
about 152).

LightningDiT (hustvl/LightningDiT) and the official SiT code use sit's own time (``transport/path.py``:
alpha = t, sigma = 1 - t), so their cfg intervals are ``t``: LightningDiT's ``cfg_interval_start
0.125`` guides t >= 0.125. Its ``timestep_shift`` is another convention, of the time grid rather
than of the guidance interval: see ``recipes.lightningdit_time_shift``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from sitcli.errors import InputError
from sitcli.transport.interpolants import Interpolant

F64 = torch.float64


def noise_to_signal(interpolant: Interpolant, t: torch.Tensor) -> torch.Tensor:
    """r(t) = sigma_t / alpha_t in float64 (inf where alpha_t = 0)."""
    t = torch.as_tensor(t, dtype=F64)
    return interpolant.sigma(t).to(F64) / interpolant.alpha(t).to(F64)


def time_of_noise_to_signal(interpolant: Interpolant, r: torch.Tensor) -> torch.Tensor:
    """The t in [0, 1] with r(t) = r (float64): the inverse of ``noise_to_signal``, by bisection."""
    r = torch.as_tensor(r, dtype=F64)
    lo, hi = torch.zeros_like(r), torch.ones_like(r)
    for _ in range(60):
        mid = (lo + hi) / 2
        noisier = noise_to_signal(interpolant, mid) > r  # mid lies before the wanted time
        lo, hi = torch.where(noisier, mid, lo), torch.where(noisier, hi, mid)
    t = (lo + hi) / 2
    t = torch.where(r >= noise_to_signal(interpolant, torch.zeros_like(r)), torch.zeros_like(t), t)
    return torch.where(r <= 0, torch.ones_like(t), t)


# Time conventions: name -> (value from t, t from value); the same maps for every interpolant.
_TIME_CONVENTIONS: dict[str, tuple[Callable, Callable]] = {
    "t": (lambda t: t, lambda v: v),
    "repa": (lambda t: 1 - t, lambda v: 1 - v),
}
# Noise-level conventions: name -> (value from r, r from value).
_RATIO_CONVENTIONS: dict[str, tuple[Callable, Callable]] = {
    "sigma": (lambda r: r, lambda v: v),
    "logsnr": (lambda r: -2 * torch.log(r), lambda v: torch.exp(-v / 2)),
}
CONVENTIONS: tuple[str, ...] = (*_TIME_CONVENTIONS, *_RATIO_CONVENTIONS)


def _check(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise InputError(f"unknown time convention {convention!r}: choose one of {', '.join(CONVENTIONS)}")


def from_time(interpolant: Interpolant, t, convention: str) -> torch.Tensor:
    """sit's time t as a value in ``convention`` (float64)."""
    _check(convention)
    t = torch.as_tensor(t, dtype=F64)
    if convention in _TIME_CONVENTIONS:
        return _TIME_CONVENTIONS[convention][0](t)
    return _RATIO_CONVENTIONS[convention][0](noise_to_signal(interpolant, t))


def to_time(interpolant: Interpolant, value, convention: str) -> torch.Tensor:
    """A value in ``convention`` as sit's time t in [0, 1] (float64)."""
    _check(convention)
    value = torch.as_tensor(value, dtype=F64)
    if convention in _TIME_CONVENTIONS:
        return _TIME_CONVENTIONS[convention][1](value)
    return time_of_noise_to_signal(interpolant, _RATIO_CONVENTIONS[convention][1](value))


def interval_in_time(interpolant: Interpolant, lo: float, hi: float, convention: str) -> tuple[float, float]:
    """The interval of sit's time whose points have ``convention`` values in [lo, hi]."""
    _check(convention)
    limits = {"t": (0, 1), "repa": (0, 1), "sigma": (0, math.inf), "logsnr": (-math.inf, math.inf)}[convention]
    if not limits[0] <= lo <= hi <= limits[1]:
        raise InputError(f"cfg interval ({lo}, {hi}) in {convention} is invalid: pass "
                         f"{limits[0]} <= LO <= HI <= {limits[1]}")
    a, b = (float(to_time(interpolant, v, convention)) for v in (lo, hi))
    return min(a, b), max(a, b)
