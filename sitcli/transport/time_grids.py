"""Time grids for sampling: where a fixed-grid or multistep solver evaluates the model.

A grid is ``steps + 1`` increasing times from t0 to t1, laid out by a named spacing:

    uniform   t_i = t0 + (t1 - t0) i / steps
    cosine    t_i = t0 + (t1 - t0) (1 - cos(pi i / steps)) / 2

The cosine grid takes steps of O(1/steps^2) at both ends and O(1/steps) in the middle; its last
point is set to t1 exactly, whatever the rounding. In discrete time (a model trained on the T
points of ``training_grid``) every time is snapped to the nearest training time, and a grid
whose snapped times stop increasing is refused.

Times are computed in float64 and returned in the dtype asked for.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from sitcli.errors import InputError


def uniform_times(t0: float, t1: float, steps: int) -> torch.Tensor:
    return torch.linspace(t0, t1, steps + 1, dtype=torch.float64)


def cosine_times(t0: float, t1: float, steps: int) -> torch.Tensor:
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    times = t0 + (t1 - t0) * (1 - torch.cos(math.pi * u)) / 2
    times[-1] = t1
    return times


# name -> (t0, t1, steps) -> steps + 1 float64 times; a new spacing is one more entry.
SPACINGS: dict[str, Callable[[float, float, int], torch.Tensor]] = {
    "uniform": uniform_times,
    "cosine": cosine_times,
}


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
) -> torch.Tensor:
    """steps + 1 increasing times from t0 to t1 on ``spacing``, snapped onto ``discrete_grid`` if given.

    Args:
        spacing: a name in ``SPACINGS``.
        discrete_grid: the training times of discrete time (float64), or None in continuous time.
    """
    if steps < 1:
        raise InputError(f"steps={steps} is invalid: pass at least 1 step")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}: {' or '.join(SPACINGS)}")
    times = SPACINGS[spacing](t0, t1, steps)
    if discrete_grid is not None:
        times = snap_to_grid(times, discrete_grid)
        if not bool((times[1:] > times[:-1]).all()):
            uniform = " or a uniform-grid method (--method rk4)" if spacing != "uniform" else ""
            raise InputError(
                f"{steps} steps do not fit on the {len(discrete_grid)}-point time grid between t={t0:g} "
                f"and t={t1:g}: use fewer steps{uniform} or more --num-timesteps"
            )
    return times.to(device=device, dtype=dtype)
