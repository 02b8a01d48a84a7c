"""Error at 5, 10 and 20 NFE of every ODE solver on the Gaussian mixtures of ``sampler_nfe.py`` (exact velocity),
against the exact endpoint (dopri8 at atol = rtol = 1e-12 from the same noise; it agrees with the 1-D inverse-CDF
map to ~1e-9): sit's euler, heun, adams (their own grids), DPM-Solver++ 2M / 3M and UniPC-2 (bh2) on a uniform
and a log-SNR grid, and a solver searched for each mixture and NFE (fitted on 256 noises, measured on the 2000
held-out ones). The dopri5 default (atol 1e-6, rtol 1e-3) is printed for the low-NFE target: its error at a third
of its NFE.

    python examples/multistep_nfe.py [--n 2000] [--iterations 200]
"""

from __future__ import annotations

import argparse

import torch

from sampler_nfe import MIXTURE_1D, MIXTURE_1D_NARROW
from sitcli.transport import Transport, get_interpolant, sample_ode
from sitcli.transport.integrate import integrate
from sitcli.transport.multistep import dpm_solver_pp, unipc
from sitcli.transport.searched import search_solver, searched_sample
from sitcli.transport.time_grids import time_grid

F64 = torch.float64
BUDGETS = (5, 10, 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="held-out noises")
    parser.add_argument("--iterations", type=int, default=200, help="Adam steps of each solver search")
    args = parser.parse_args()
    torch.set_num_threads(1)
    mixtures = {"2 comp., std .3/.5": MIXTURE_1D, "3 comp., std .1-.2": MIXTURE_1D_NARROW}
    print(f"mean |x - exact| at {', '.join(map(str, BUDGETS))} NFE")
    for label, mixture in mixtures.items():
        for name in ("linear", "gvp"):
            interpolant = get_interpolant(name)
            transport = Transport(name, "velocity")
            t0, t1 = transport.sample_interval()
            model = mixture.model(name, "velocity")

            def velocity(t, x):
                return mixture.velocity(interpolant, x, t.expand(x.shape[0]))

            def exact(x0):
                return integrate(velocity, x0, "dopri8", torch.tensor([t0, t1], dtype=F64), atol=1e-12, rtol=1e-12)

            train = torch.randn(256, 1, dtype=F64, generator=torch.Generator().manual_seed(1))
            x0 = torch.randn(args.n, 1, dtype=F64, generator=torch.Generator().manual_seed(0))
            reference, train_reference = exact(x0), exact(train)

            def error(x):
                return (x - reference).abs().mean().item()

            x, nfe = sample_ode(transport, model, x0, method="dopri5")
            print(f"\n{label}, {name}: dopri5 default {nfe} NFE, error {error(x):.1e}; "
                  f"a third of its NFE is {nfe / 3:.0f}")
            rows = {}
            for method, per_step in (("euler", 1), ("heun", 2), ("adams", 1)):
                rows[f"{method} (own grid)"] = [error(sample_ode(transport, model, x0, method=method,
                                                                 steps=max(1, n // per_step))[0]) for n in BUDGETS]
            for spacing in ("uniform", "logsnr"):
                for method, solver in (("dpm++2m", lambda *a: dpm_solver_pp(*a, order=2)),
                                       ("dpm++3m", lambda *a: dpm_solver_pp(*a, order=3)),
                                       ("unipc-2 bh2", lambda *a: unipc(*a, order=2))):
                    rows[f"{method} {spacing}"] = [
                        error(solver(velocity, x0, time_grid(t0, t1, n, spacing, dtype=F64, interpolant=interpolant),
                                     interpolant)[0]) for n in BUDGETS]
            rows["searched (held out)"] = [
                error(searched_sample(velocity, x0, search_solver(velocity, train, train_reference, n, t0, t1,
                                                                  iterations=args.iterations).solver())[0])
                for n in BUDGETS]
            for row, errors in rows.items():
                print(f"  {row:<22}" + "".join(f"{e:>10.1e}" for e in errors))


if __name__ == "__main__":
    main()
