"""Training-time sampling: the density from which each training example's time t is drawn.

In continuous time t = t0 + (t1 - t0) u, with u on [0, 1] drawn from a named density:

    uniform   u ~ U[0, 1]

In discrete time (``num_timesteps=T``) t is one of the T evenly spaced points of [t0, t1]
(``time_grids.training_grid``), drawn with equal probability.

A new density is one more entry in ``TIME_DENSITIES``: a function (batch, device, dtype,
generator) -> u of shape (batch,).
"""

from __future__ import annotations

from typing import Callable

import torch

from sitcli.errors import InputError
from sitcli.transport.time_grids import training_grid


def uniform_density(batch: int, device=None, dtype=torch.float32, generator: torch.Generator | None = None):
    return torch.rand(batch, device=device, dtype=dtype, generator=generator)


TIME_DENSITIES: dict[str, Callable[..., torch.Tensor]] = {
    "uniform": uniform_density,
}


def sample_training_time(
    batch: int,
    interval: tuple[float, float],
    num_timesteps: int | None = None,
    device=None,
    dtype=torch.float32,
    generator: torch.Generator | None = None,
    density: str = "uniform",
) -> torch.Tensor:
    """Training times, shape (batch,): t0 + (t1 - t0) u with u from ``density``, or a uniform
    draw from the ``num_timesteps``-point grid on [t0, t1] in discrete time."""
    if density not in TIME_DENSITIES:
        raise InputError(f"unknown time density {density!r}: choose one of {', '.join(TIME_DENSITIES)}")
    t0, t1 = interval
    if num_timesteps is not None:
        if density != "uniform":
            raise InputError(f"time density {density!r} has no discrete-time form: use uniform, or omit num_timesteps")
        index = torch.randint(0, num_timesteps, (batch,), device=device, generator=generator)
        return training_grid(t0, t1, num_timesteps, device=device, dtype=dtype)[index]
    return t0 + (t1 - t0) * TIME_DENSITIES[density](batch, device=device, dtype=dtype, generator=generator)
