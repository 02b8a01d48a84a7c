"""Can a third of dopri5's NFE match dopri5's accuracy? A survey of low-NFE ODE solvers beyond the
ones `sit` ships, on the mixtures of ``sampler_nfe.py`` (exact velocity, error against the exact
transport map).

The target (issue 6): the mean error of dopri5 at atol 1e-6 / rtol 1e-3 with at most a third of its
NFE. ``sampler_nfe.py --target`` measures what `sit` ships (euler / heun / midpoint / rk4 on a
uniform grid, adams = 4th-order Adams-Bashforth on a cosine grid); this adds

- multistep: variable-step Adams-Bashforth of order 2-4 on other grids (one evaluation per step;
  the polynomial through the last k velocities integrated exactly over the next step; "AB4,
  cosine" is the shipped adams, for reference);
- exponential integrators in the data prediction (the DPM-Solver++ family): first order (DDIM) and
  the second-order multistep (2M), which step in lambda = log(alpha / sigma) and are exact where the
  posterior mean E[x1 | x_t] is constant;
- time grids: the library's uniform and cosine (``sitcli.transport.time_grids``), and two kept here
  as experiments: denser towards the data end (u -> 1 - (1 - u)^1.5) and, for the exponential
  integrators, uniform in lambda.

For each it prints the fewest NFE (up to 48) that reach dopri5's error, and the error at a third
of dopri5's NFE. None reaches a third; none beats the shipped adams across all six problems,
which is why they are not in the library.

    python examples/low_nfe_survey.py [--n 2000]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from sampler_nfe import MIXTURE_1D, MIXTURE_1D_NARROW, exact_endpoint, ode_error
from sitcli.transport import Transport
from sitcli.transport.adams import adams_bashforth
from sitcli.transport.time_grids import SPACINGS, time_grid

MAX_NFE = 48


def adams(transport: Transport, model, x0: torch.Tensor, grid: torch.Tensor, order: int) -> tuple[torch.Tensor, int]:
    """The library's variable-step Adams-Bashforth (what --method adams runs) on any grid and order."""
    def velocity(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tb = t.expand(x.shape[0])
        return transport.velocity(model(x, tb), x, tb)

    return adams_bashforth(velocity, x0, grid, order), len(grid) - 1


def data_prediction_solver(
    transport: Transport, model, x0: torch.Tensor, grid: torch.Tensor, order: int
) -> tuple[torch.Tensor, int]:
    """x_s = (sigma_s / sigma_t) x_t + (alpha_s - sigma_s alpha_t / sigma_t) D, with D the posterior
    mean at t (order 1) or its linear extrapolation in lambda from the previous step (order 2)."""
    interpolant = transport.interpolant
    x, previous, nfe = x0, None, 0
    for t, s in zip(grid[:-1], grid[1:]):
        tb = t.expand(x.shape[0])
        data = transport.data(model(x, tb), x, tb)
        nfe += 1
        a_t, s_t, a_s, s_s = (f(u) for u in (t, s) for f in (interpolant.alpha, interpolant.sigma))
        lam_t, lam_s = torch.log(a_t / s_t), torch.log(a_s / s_s)
        d = data
        if order == 2 and previous is not None and torch.isfinite(lam_s) and torch.isfinite(previous[1]):
            r = (lam_t - previous[1]) / (lam_s - lam_t)
            d = data + (data - previous[0]) / (2 * r)
        x = d if s_s == 0 else (s_s / s_t) * x + (a_s - s_s * a_t / s_t) * d
        previous = (data, lam_t)
    return x, nfe


def survey_grid(kind: str, transport: Transport, steps: int) -> torch.Tensor:
    t0, t1 = transport.sample_interval()
    if kind in SPACINGS:  # the library's grids (cosine is what --method adams uses)
        return time_grid(t0, t1, steps, kind, dtype=torch.float64)
    # Experiments, not in the library: the survey finds neither beats the cosine grid across problems.
    if kind == "late":
        u = np.linspace(0.0, 1.0, steps + 1)
        return torch.tensor(t0 + (t1 - t0) * (1 - (1 - u) ** 1.5), dtype=torch.float64)
    # uniform in lambda, clipped to [-6, 6] where it runs to -inf / inf at the ends
    fine = torch.linspace(t0, t1, 100_001, dtype=torch.float64)
    lam = (torch.log(transport.interpolant.alpha(fine)) - torch.log(transport.interpolant.sigma(fine))).numpy()
    ok = np.isfinite(lam)
    lo, hi = max(lam[ok][0], -6.0), min(lam[ok][-1], 6.0)
    times = np.interp(np.linspace(lo, hi, steps + 1), lam[ok], fine.numpy()[ok])
    times[0], times[-1] = t0, t1
    return torch.tensor(times, dtype=torch.float64)


METHODS = {
    "AB2": (lambda tr, m, x, g: adams(tr, m, x, g, 2), ("uniform", "cosine", "late")),
    "AB3": (lambda tr, m, x, g: adams(tr, m, x, g, 3), ("uniform", "cosine", "late")),
    "AB4": (lambda tr, m, x, g: adams(tr, m, x, g, 4), ("uniform", "cosine", "late")),
    "DDIM": (lambda tr, m, x, g: data_prediction_solver(tr, m, x, g, 1), ("uniform", "lambda")),
    "DPM++2M": (lambda tr, m, x, g: data_prediction_solver(tr, m, x, g, 2), ("uniform", "lambda")),
}


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="number of samples")
    args = parser.parse_args()
    x0 = torch.randn(args.n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    print("fewest NFE reaching dopri5's error (atol 1e-6, rtol 1e-3), and the error at a third of its NFE")
    for label, mixture in {"2 comp., std .3/.5": MIXTURE_1D, "3 comp., std .1-.2": MIXTURE_1D_NARROW}.items():
        for interpolant in ("linear", "gvp", "vp"):
            transport = Transport(interpolant, "velocity")
            t0, t1 = transport.sample_interval()
            exact = exact_endpoint(interpolant, x0, t0, t1, mixture)
            model = mixture.model(interpolant, "velocity")
            ref_nfe, ref_err = ode_error(interpolant, mixture, x0, exact, "dopri5", atol=1e-6, rtol=1e-3)
            budget = ref_nfe // 3
            print(f"\n{label}, {interpolant}: dopri5 {ref_nfe} NFE, error {ref_err:.2e}; a third: {budget} NFE")
            _, rk4_err = ode_error(interpolant, mixture, x0, exact, "rk4", steps=max(1, budget // 4))
            print(f"  {'rk4, uniform (shipped)':<24} error at {budget // 4 * 4} NFE {rk4_err:.2e}")
            for name, (solve, grids) in METHODS.items():
                for kind in grids:
                    reached = None
                    for steps in range(2, MAX_NFE + 1):
                        x, nfe = solve(transport, model, x0, survey_grid(kind, transport, steps))
                        if (x - exact).abs().mean().item() <= ref_err:
                            reached = nfe
                            break
                    x, nfe = solve(transport, model, x0, survey_grid(kind, transport, budget))
                    cell = f"{reached} NFE ({reached / ref_nfe:.2f}x)" if reached else f"> {MAX_NFE} NFE"
                    print(
                        f"  {name + ', ' + kind:<24} error at {nfe} NFE {(x - exact).abs().mean().item():.2e}   "
                        f"reaches dopri5 at {cell}"
                    )


if __name__ == "__main__":
    main()
