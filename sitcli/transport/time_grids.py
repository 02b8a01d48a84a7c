"""Time grids for sampling: where a fixed-grid or multistep solver evaluates the model.

A grid is ``steps + 1`` increasing times from t0 to t1, laid out by a named spacing:

    uniform   t_i = t0 + (t1 - t0) i / steps
    cosine    t_i = t0 + (t1 - t0) (1 - cos(pi i / steps)) / 2
    edm       EDM's rho-spacing of the noise level sigma = sigma_t / alpha_t of the interpolant
              (``time_conventions``): sigma_i^(1/rho) evenly spaced from sigma_hi^(1/rho) to
              sigma_lo^(1/rho), t_i the time of sigma_i, rho = ``edm_rho`` (EDM: 7). sigma_hi =
              sigma(t0) and sigma_lo = sigma(t1), kept within EDM's [0.002, 80]: where sigma(t0) > 80
              (linear and GVP at t0 = 0: infinite) the grid starts with the step from t0 to sigma = 80,
              and where sigma(t1) < 0.002 (t1 = 1: zero) it ends with the step from sigma = 0.002 to
              t1, as EDM's last step to sigma = 0; still ``steps`` steps in all.
    logsnr    uniform in the log signal-to-noise ratio lambda = log(alpha_t / sigma_t) = -log sigma, the grid
              of the exponential integrators (``multistep``: DPM-Solver++, UniPC), within the same
              [0.002, 80] of sigma and with the same first and last steps as edm (lambda is infinite at
              the ends of linear and GVP). It is edm's spacing in the limit rho -> infinity.

The cosine grid takes steps of O(1/steps^2) at both ends and O(1/steps) in the middle.

Time shift (``time_shift`` = s, SD3's resolution shift, which SD3 writes with t = 1 noise). In the
convention where tau = 1 is noise it is tau' = s tau / (1 + (s - 1) tau); with tau = 1 - t that is

    phi_s(t) = t / (s + (1 - s) t)      in sit's time (t = 0 noise),

which moves time towards the noise end for s > 1 (phi_s(t) < t) and towards the data for s < 1.
The maps compose as phi_a(phi_b(t)) = phi_ab(t), so phi_s has the inverse phi_(1/s). A shifted grid
is phi_s of the spacing's grid from phi_(1/s)(t0) to phi_(1/s)(t1): its points are exactly the
shifted points of a spacing grid, and it still runs from t0 to t1 in ``steps`` steps (same NFE).
s = 1 is no shift (the grid is returned untouched); s must be > 0.

Dimension-dependent shift (RAE, Zheng et al. 2025, ``src/train.py`` and ``src/sample.py`` of
bytetriper/RAE): s = sqrt(C H W / 4096) for latents of shape (C, H, W) (``dimension_time_shift``;
6.928 for RAE's 768 x 16 x 16, 1 for 4096 numbers). RAE's time runs the other way (tau = 1 noise)
and shifts tau' = s tau / (1 + (s - 1) tau), which is phi_s in sit's time (see above); it shifts the
training times (``time_sampling``, drawn first, then shifted) and the sampling grid alike. The named
setting "dimension" (``resolve_time_shift``) stands for that value.

The first and last points of every grid are set to t0 and t1 exactly, whatever the rounding. In
discrete time (a model trained on the T points of ``training_grid``) every time is snapped to the
nearest training time, and a grid whose snapped times stop increasing is refused.

Times are computed in float64 and returned in the dtype asked for.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from sitcli.errors import InputError
from sitcli.transport.interpolants import Interpolant
from sitcli.transport.time_conventions import noise_to_signal, time_of_noise_to_signal


EDM_SIGMA_MAX, EDM_SIGMA_MIN = 80.0, 0.002


def uniform_times(t0: float, t1: float, steps: int, **_) -> torch.Tensor:
    return torch.linspace(t0, t1, steps + 1, dtype=torch.float64)


def cosine_times(t0: float, t1: float, steps: int, **_) -> torch.Tensor:
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    times = t0 + (t1 - t0) * (1 - torch.cos(math.pi * u)) / 2
    times[-1] = t1
    return times


def _capped_noise_level_times(t0: float, t1: float, steps: int, interpolant: Interpolant | None,
                              levels: Callable[[torch.Tensor, float, float], torch.Tensor]) -> torch.Tensor:
    """A grid laid out in the noise level sigma = sigma_t / alpha_t: ``levels(u, hi, lo)`` maps u in [0, 1]
    to sigma from hi to lo, within EDM's [0.002, 80] (the edm and logsnr spacings of the module)."""
    if interpolant is None:
        raise ValueError("the edm and logsnr spacings need the interpolant (its sigma_t / alpha_t)")
    sigma_start, sigma_end = (
        float(noise_to_signal(interpolant, torch.tensor(t, dtype=torch.float64))) for t in (t0, t1)
    )
    cap_hi, cap_lo = sigma_start > EDM_SIGMA_MAX, sigma_end < EDM_SIGMA_MIN
    cap_lo = cap_lo and steps - cap_hi - cap_lo >= 1
    cap_hi = cap_hi and steps - cap_hi - cap_lo >= 1
    hi, lo = (EDM_SIGMA_MAX if cap_hi else sigma_start), (EDM_SIGMA_MIN if cap_lo else sigma_end)
    u = torch.linspace(0, 1, steps - cap_hi - cap_lo + 1, dtype=torch.float64)
    sigmas = levels(u, hi, lo)
    times = torch.cat([torch.tensor([t0] * cap_hi, dtype=torch.float64), time_of_noise_to_signal(interpolant, sigmas),
                       torch.tensor([t1] * cap_lo, dtype=torch.float64)])
    times[0], times[-1] = t0, t1
    return times


def edm_times(t0: float, t1: float, steps: int, interpolant: Interpolant | None = None, edm_rho: float = 7.0,
              **_) -> torch.Tensor:
    def rho_spaced(u: torch.Tensor, hi: float, lo: float) -> torch.Tensor:
        return ((1 - u) * hi ** (1 / edm_rho) + u * lo ** (1 / edm_rho)) ** edm_rho  # both ends exact

    return _capped_noise_level_times(t0, t1, steps, interpolant, rho_spaced)


def _log_uniform(u: torch.Tensor, hi: float, lo: float) -> torch.Tensor:
    sigmas = torch.exp((1 - u) * math.log(hi) + u * math.log(lo))
    sigmas[0], sigmas[-1] = hi, lo  # both ends exact
    return sigmas


def logsnr_times(t0: float, t1: float, steps: int, interpolant: Interpolant | None = None, **_) -> torch.Tensor:
    return _capped_noise_level_times(t0, t1, steps, interpolant, _log_uniform)


# name -> (t0, t1, steps, interpolant=, edm_rho=) -> steps + 1 float64 times; a new spacing is one more entry.
SPACINGS: dict[str, Callable[..., torch.Tensor]] = {
    "uniform": uniform_times,
    "cosine": cosine_times,
    "edm": edm_times,
    "logsnr": logsnr_times,
}


def shift_time(t: torch.Tensor | float, time_shift: float) -> torch.Tensor:
    """phi_s(t) = t / (s + (1 - s) t), the time shift in sit's time (float64; see the module)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return t / (time_shift + (1 - time_shift) * t)


DIMENSION_SHIFT_BASE = 4096  # RAE's time_dist_shift_base
NAMED_SHIFTS = ("dimension",)


def dimension_time_shift(latent_shape: tuple[int, ...], base: int = DIMENSION_SHIFT_BASE) -> float:
    """RAE's s = sqrt(prod(latent_shape) / base): sqrt(768 * 16 * 16 / 4096) = sqrt(48) = 6.928."""
    size = math.prod(int(d) for d in latent_shape)
    if size < 1 or base < 1:
        raise ValueError(f"a latent shape {tuple(latent_shape)} and base {base} must be positive")
    return math.sqrt(size / base)


def resolve_time_shift(time_shift: float | str, latent_shape: tuple[int, ...] | None = None) -> float:
    """A time shift given as a number, or as "dimension" (RAE's sqrt(C H W / 4096) of ``latent_shape``)."""
    if isinstance(time_shift, str):
        if time_shift == "dimension":
            if latent_shape is None:
                raise InputError("--time-shift dimension needs the latent shape (C, H, W) of the model's input")
            return dimension_time_shift(latent_shape)
        try:
            time_shift = float(time_shift)
        except ValueError:
            raise InputError(f"--time-shift {time_shift!r}: pass a number > 0 or one of "
                             f"{', '.join(NAMED_SHIFTS)}") from None
    if not time_shift > 0 or not math.isfinite(time_shift):
        raise InputError(f"time_shift={time_shift} is invalid: pass s > 0 (1 is no shift; SD3 uses 3) or 'dimension'")
    return float(time_shift)


def describe_time_shift(time_shift: float | str, latent_shape: tuple[int, ...] | None = None) -> str:
    """The shift and where it comes from, e.g. "time shift 6.928 = sqrt(768*16*16/4096)"."""
    value = resolve_time_shift(time_shift, latent_shape)
    if time_shift == "dimension":
        dims = "*".join(str(int(d)) for d in latent_shape)
        return f"time shift {value:.4g} = sqrt({dims}/{DIMENSION_SHIFT_BASE})"
    return f"time shift {value:g}"


def training_grid(t0: float, t1: float, num_timesteps: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The T = ``num_timesteps`` evenly spaced training times of discrete time, from t0 to t1."""
    return torch.linspace(t0, t1, num_timesteps, device=device, dtype=dtype)


def snap_to_grid(times: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Each of ``times`` replaced by the nearest point of ``grid`` (the first one on a tie)."""
    return grid[(times[:, None] - grid[None]).abs().argmin(dim=1)]


def time_grid(
    t0: float,
    t1: float,
    steps: int,
    spacing: str = "uniform",
    discrete_grid: torch.Tensor | None = None,
    device=None,
    dtype=torch.float32,
    time_shift: float = 1.0,
    interpolant: Interpolant | None = None,
    edm_rho: float = 7.0,
) -> torch.Tensor:
    """steps + 1 increasing times from t0 to t1 on ``spacing``, shifted by ``time_shift``, snapped onto
    ``discrete_grid`` if given.

    Args:
        spacing: a name in ``SPACINGS``.
        discrete_grid: the training times of discrete time (float64), or None in continuous time.
        time_shift: s of the shift phi_s (1: none).
        interpolant, edm_rho: what the edm and logsnr spacings need (the others ignore them).
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}: {' or '.join(SPACINGS)}")
    try:
        if time_shift == 1:
            times = SPACINGS[spacing](t0, t1, steps, interpolant=interpolant, edm_rho=edm_rho)
        else:
            a, b = (float(shift_time(v, 1 / time_shift)) for v in (t0, t1))
            times = shift_time(SPACINGS[spacing](a, b, steps, interpolant=interpolant, edm_rho=edm_rho), time_shift)
            times[0], times[-1] = t0, t1
    except (OverflowError, ZeroDivisionError):
        times = torch.full((steps + 1,), math.nan, dtype=torch.float64)
    _check_increasing(times, steps, spacing, time_shift, edm_rho)
    if discrete_grid is not None:
        times = snap_to_grid(times, discrete_grid)
        if not bool((times[1:] > times[:-1]).all()):
            uniform = " or a uniform-grid method (--method rk4)" if spacing != "uniform" else ""
            raise InputError(
                f"{steps} steps do not fit on the {len(discrete_grid)}-point time grid between t={t0:g} "
                f"and t={t1:g}: use fewer steps{uniform} or more --num-timesteps"
            )
    return times.to(device=device, dtype=dtype)


def _check_increasing(times: torch.Tensor, steps: int, spacing: str, time_shift: float, edm_rho: float) -> None:
    """Refuse a grid whose times are not finite and strictly increasing, in float64 and in the float32 the
    samplers step in: an extreme shift or rho piles its points onto one time (or overflows), and a step of
    length zero is no step (a multistep method divides by it)."""
    narrow = times.float()
    if bool(torch.isfinite(times).all() and (times[1:] > times[:-1]).all() and (narrow[1:] > narrow[:-1]).all()):
        return
    settings = [f"{steps} steps", f"--spacing {spacing}"]
    settings += [f"--time-shift {time_shift:g}"] if time_shift != 1 else []
    settings += [f"--edm-rho {edm_rho:g}"] if spacing == "edm" else []
    raise InputError(
        f"{', '.join(settings)}: the time grid collapses (its times are not finite and increasing in float32); "
        "use a time shift nearer 1, an edm rho nearer 7 or fewer steps"
    )
