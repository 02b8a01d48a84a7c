"""sit's own multistep ODE solver: variable-step Adams-Bashforth on any time grid.

torchdiffeq's Adams methods assume a uniform step; this one takes the grid as given (sit runs it
on the cosine grid of ``time_grids``) and spends one velocity evaluation per step.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def adams_bashforth(velocity: Callable, x0: torch.Tensor, grid: torch.Tensor, order: int = 4) -> torch.Tensor:
    """Variable-step Adams-Bashforth: one velocity evaluation per step,

        x_{n+1} = x_n + sum_j v(x_j, t_j) * integral_{t_n}^{t_{n+1}} l_j(s) ds,

    over the last k = min(order, n + 1) points, l_j their Lagrange basis polynomials (integrated
    exactly by Gauss-Legendre). The first steps start at orders 1, 2, 3: on a grid whose first
    steps are O(h^2) (cosine spacing) their errors stay below the O(h^4) of the rest.
    ``velocity(t, x)`` takes t as a 0-dim tensor; the grid may run either way in time.
    """
    nodes, weights = np.polynomial.legendre.leggauss(order)  # exact up to degree 2 order - 1
    times, velocities, x = [], [], x0
    for t, t_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
        times.append(t)
        velocities.append(velocity(grid.new_tensor(t), x))
        past = times[-order:]
        s = (t_next - t) / 2 * nodes + (t + t_next) / 2
        for j, v in enumerate(velocities[-order:]):
            basis = np.prod([(s - tm) / (past[j] - tm) for m, tm in enumerate(past) if m != j], axis=0)
            x = x + float((t_next - t) / 2 * np.sum(weights * basis)) * v
        del times[:-order], velocities[:-order]
    return x
