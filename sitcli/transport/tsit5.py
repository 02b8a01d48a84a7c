"""Tsitouras' 5(4) Runge-Kutta pair, registered with torchdiffeq as method "tsit5".

torchdiffeq ships dopri5, dopri8 and bosh3 but not Tsit5; its generic adaptive Runge-Kutta solver
(step-size control, dense output) runs any explicit tableau, so this module supplies only the
coefficients, published in Ch. Tsitouras, "Runge-Kutta pairs of order 5(4) satisfying only the
first column simplifying assumption", Comput. Math. Appl. 62 (2011), Table 1.
"""

from __future__ import annotations

import torch
from torchdiffeq._impl.odeint import SOLVERS
from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver, _ButcherTableau

_C = [0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0]
_A = [
    [0.161],
    [-0.008480655492356989, 0.335480655492357],
    [2.8971530571054935, -6.359448489975075, 4.3622954328695815],
    [5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525],
    [5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.028269050394068383],
]
_B = [0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081, 2.324710524099774, 0.0]
# b - b_hat: the difference between the 5th- and the embedded 4th-order solutions.
_B_ERROR = [
    0.00178001105222577714, 0.0008164344596567469, -0.007880878010261995, 0.1447110071732629,
    -0.5823571654525552, 0.45808210592918697, -0.015151515151515152,
]


def _midpoint_weights() -> torch.Tensor:
    """Weights m with y(t + h/2) = y + h sum_i m_i k_i + O(h^5), for torchdiffeq's dense output.

    They solve the eight order conditions up to order 4 at theta = 1/2 (consistent for this
    tableau; the least-norm solution is taken).
    """
    c = torch.tensor(_C, dtype=torch.float64)
    a = torch.zeros(7, 7, dtype=torch.float64)
    for i, row in enumerate(_A + [_B[:6]], start=1):
        a[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
    theta = 0.5
    conditions = torch.stack([torch.ones(7), c, c**2, a @ c, c**3, c * (a @ c), a @ c**2, a @ a @ c])
    rhs = torch.tensor([theta, theta**2 / 2, theta**3 / 3, theta**3 / 6, theta**4 / 4, theta**4 / 8,
                        theta**4 / 12, theta**4 / 24], dtype=torch.float64)
    return torch.linalg.pinv(conditions) @ rhs


_TSITOURAS_TABLEAU = _ButcherTableau(
    alpha=torch.tensor(_C[1:], dtype=torch.float64),
    beta=[torch.tensor(row, dtype=torch.float64) for row in _A] + [torch.tensor(_B[:6], dtype=torch.float64)],
    c_sol=torch.tensor(_B, dtype=torch.float64),
    c_error=torch.tensor(_B_ERROR, dtype=torch.float64),
)


class Tsit5Solver(RKAdaptiveStepsizeODESolver):
    order = 5
    tableau = _TSITOURAS_TABLEAU
    mid = _midpoint_weights()


SOLVERS.setdefault("tsit5", Tsit5Solver)
