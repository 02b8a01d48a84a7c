"""Error against the exact answer vs. number of model evaluations (NFE) for the ODE samplers,
and the likelihood error, on a Gaussian mixture whose fields are known in closed form.

In one dimension the probability-flow ODE carries x0 to F_1^{-1}(F_0(x0)) (F the CDFs of p_0 and
p_1), so every solver is measured against the exact endpoint, not against another solver.

    python examples/sampler_nfe.py [--interpolant linear] [--n 2000]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from sitcli.transport import GaussianMixture, Transport, log_likelihood, sample_ode, sample_sde

MIXTURE_1D = GaussianMixture([[-1.0], [2.0]], [0.3, 0.5], [0.4, 0.6])
MIXTURE_2D = GaussianMixture([[-1.0, 0.5], [1.5, -1.0], [0.0, 2.0]], [[0.3, 0.5], [0.6, 0.2], [0.4, 0.4]], [0.3, 0.3, 0.4])


def exact_endpoint(interpolant: str, x0: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
    u = MIXTURE_1D.cdf(interpolant, x0, torch.tensor(t0, dtype=torch.float64))
    grid = torch.linspace(-7, 9, 400001, dtype=torch.float64)[:, None]
    cdf = MIXTURE_1D.cdf(interpolant, grid, torch.tensor(t1, dtype=torch.float64))
    return torch.from_numpy(np.interp(u.numpy(), cdf.numpy(), grid[:, 0].numpy()))[:, None]


def ks_distance(x: torch.Tensor, interpolant: str) -> float:
    xs = x.sort(dim=0).values
    cdf = MIXTURE_1D.cdf(interpolant, xs, torch.tensor(1.0, dtype=torch.float64))
    i = torch.arange(1, len(xs) + 1, dtype=torch.float64)
    return torch.maximum((i / len(xs) - cdf).abs(), ((i - 1) / len(xs) - cdf).abs()).max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interpolant", default="linear", choices=["linear", "gvp", "vp"])
    parser.add_argument("--n", type=int, default=2000, help="number of samples")
    args = parser.parse_args()

    tr = Transport(args.interpolant, "velocity")
    model = MIXTURE_1D.model(args.interpolant, "velocity")
    x0 = torch.randn(args.n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t0, t1 = tr.sample_interval()
    exact = exact_endpoint(args.interpolant, x0, t0, t1)

    print(f"ODE on a 1-D two-component mixture, {args.interpolant} interpolant, exact velocity, n={args.n}")
    print(f"{'method':<8} {'NFE':>5} {'mean |x - exact|':>17} {'max |x - exact|':>16}")
    for method, stages in [("euler", 1), ("heun", 2), ("midpoint", 2), ("rk4", 4)]:
        for budget in (10, 20, 50):
            x, nfe = sample_ode(tr, model, x0, method=method, steps=max(1, budget // stages))
            err = (x - exact).abs()
            print(f"{method:<8} {nfe:>5} {err.mean().item():>17.2e} {err.max().item():>16.2e}")
    for method in ("dopri5", "tsit5", "bosh3"):
        for tol in (1e-2, 1e-3, 1e-4, 1e-6):
            x, nfe = sample_ode(tr, model, x0, method=method, atol=tol, rtol=tol)
            err = (x - exact).abs()
            print(f"{method:<8} {nfe:>5} {err.mean().item():>17.2e} {err.max().item():>16.2e}   (atol = rtol = {tol:g})")
    x, nfe = sample_ode(tr, model, x0, method="dopri5", atol=1e-6, rtol=1e-3)
    err = (x - exact).abs()
    print(f"{'dopri5':<8} {nfe:>5} {err.mean().item():>17.2e} {err.max().item():>16.2e}   (atol 1e-6, rtol 1e-3: the official default)")

    print("\nSDE, w = sigma, last step mean: Kolmogorov-Smirnov distance to the exact p_1 "
          f"(noise floor ~{1.63 / args.n ** 0.5:.3f})")
    for method in ("euler", "heun"):
        for steps in (10, 20, 50, 250):
            x, nfe = sample_sde(tr, model, x0, method=method, steps=steps, w="sigma",
                                generator=torch.Generator().manual_seed(1))
            print(f"{method:<8} {nfe:>5} KS {ks_distance(x, args.interpolant):.4f}")

    print("\nlog-likelihood on a 2-D three-component mixture (nats, exact divergence, 64 points)")
    x1 = MIXTURE_2D.sample(64, generator=torch.Generator().manual_seed(2))
    exact_logp = MIXTURE_2D.log_prob(args.interpolant, x1, t1)
    model_2d = MIXTURE_2D.model(args.interpolant, "velocity")
    for method, kwargs in [("dopri5", dict(atol=1e-6, rtol=1e-3)), ("dopri5", dict(atol=1e-8, rtol=1e-8)),
                           ("rk4", dict(steps=25))]:
        prior = None if t0 == 0 and args.interpolant != "vp" else (lambda x: MIXTURE_2D.log_prob(args.interpolant, x, t0))
        logp = log_likelihood(tr, model_2d, x1, method=method, prior_log_prob=prior, **kwargs)
        err = (logp - exact_logp).abs()
        print(f"{method:<8} {str(kwargs):<32} mean error {err.mean().item():.2e}  max error {err.max().item():.2e}")


if __name__ == "__main__":
    main()
