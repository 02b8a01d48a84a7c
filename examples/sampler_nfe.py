"""Error against the exact answer vs. number of model evaluations (NFE) for the ODE samplers,
and the likelihood error, on Gaussian mixtures whose fields are known in closed form.

In one dimension the probability-flow ODE carries x0 to F_1^{-1}(F_0(x0)) (F the CDFs of p_0 and
p_1), so every solver is measured against the exact endpoint, not against another solver.

The low-NFE target (issue 6): reach the mean error of dopri5 at atol 1e-6 / rtol 1e-3 (the
official default) with at most a third of its NFE. ``--target`` measures, for every fixed-grid
method, the fewest NFE that reach that error, on two mixtures and all three interpolants, and
draws error vs NFE to a PNG (needs matplotlib: ``pip install -e ".[examples]"``).

``--ckpt RUN`` does the same on a trained model (e.g. the quickstart's runs/digits), where no exact
answer exists: in float64, against dopri5 at atol = rtol = 1e-9 from the same noise.

    python examples/sampler_nfe.py [--interpolant linear] [--n 2000]
    python examples/sampler_nfe.py --target [--png sampler_nfe.png]
    python examples/sampler_nfe.py --ckpt runs/digits [--n 500]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from sitcli.transport import ODE_METHODS, GaussianMixture, Transport, log_likelihood, sample_ode, sample_sde

MIXTURE_1D = GaussianMixture([[-1.0], [2.0]], [0.3, 0.5], [0.4, 0.6])
# Narrower, three components: a velocity field that bends harder near t = 1.
MIXTURE_1D_NARROW = GaussianMixture([[-2.0], [0.0], [2.5]], [0.1, 0.2, 0.15], [0.3, 0.3, 0.4])
MIXTURE_2D = GaussianMixture(
    [[-1.0, 0.5], [1.5, -1.0], [0.0, 2.0]], [[0.3, 0.5], [0.6, 0.2], [0.4, 0.4]], [0.3, 0.3, 0.4]
)
# Every method that takes ``steps`` (fixed grid and multistep), with its model evaluations per step.
FIXED = [(name, m.nfe_per_step) for name, m in ODE_METHODS.items() if m.kind != "adaptive"]


def exact_endpoint(
    interpolant: str, x0: torch.Tensor, t0: float, t1: float, mixture: GaussianMixture = MIXTURE_1D
) -> torch.Tensor:
    """F_{t1}^{-1}(F_{t0}(x0)), the inverse CDF read off a fine grid (spacing 4e-5)."""
    u = mixture.cdf(interpolant, x0, torch.tensor(t0, dtype=torch.float64))
    grid = torch.linspace(-7, 9, 400001, dtype=torch.float64)[:, None]
    cdf = mixture.cdf(interpolant, grid, torch.tensor(t1, dtype=torch.float64))
    return torch.from_numpy(np.interp(u.numpy(), cdf.numpy(), grid[:, 0].numpy()))[:, None]


def ks_distance(x: torch.Tensor, interpolant: str) -> float:
    xs = x.sort(dim=0).values
    cdf = MIXTURE_1D.cdf(interpolant, xs, torch.tensor(1.0, dtype=torch.float64))
    i = torch.arange(1, len(xs) + 1, dtype=torch.float64)
    return torch.maximum((i / len(xs) - cdf).abs(), ((i - 1) / len(xs) - cdf).abs()).max().item()


def ode_error(
    interpolant: str, mixture: GaussianMixture, x0: torch.Tensor, exact: torch.Tensor, method: str, **kwargs
) -> tuple[int, float]:
    """(NFE, mean |x - exact|) of one ODE solve with the exact velocity."""
    tr = Transport(interpolant, "velocity")
    x, nfe = sample_ode(tr, mixture.model(interpolant, "velocity"), x0, method=method, **kwargs)
    return nfe, (x - exact).abs().mean().item()


def target(n: int, png: str | None) -> None:
    """Fewest NFE each fixed-grid method needs to match dopri5 (atol 1e-6, rtol 1e-3)."""
    mixtures = {"2 comp., std .3/.5": MIXTURE_1D, "3 comp., std .1-.2": MIXTURE_1D_NARROW}
    x0 = torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    curves = {}
    print("Low-NFE target: fewest NFE at which each method's mean error <= dopri5's at atol 1e-6, rtol 1e-3")
    print(f"{'mixture':<20} {'interp.':<7} {'dopri5':>15} " + " ".join(f"{m:>15}" for m, _ in FIXED))
    for label, mixture in mixtures.items():
        for interpolant in ("linear", "gvp", "vp"):
            t0, t1 = Transport(interpolant, "velocity").sample_interval()
            exact = exact_endpoint(interpolant, x0, t0, t1, mixture)
            ref_nfe, ref_err = ode_error(interpolant, mixture, x0, exact, "dopri5", atol=1e-6, rtol=1e-3)
            curve = {
                "dopri5": [
                    ode_error(interpolant, mixture, x0, exact, "dopri5", atol=tol, rtol=tol)
                    for tol in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
                ]
            }
            cells = []
            for method, stages in FIXED:
                points, reached = [], None
                for steps in range(1, 64 // stages + 1):
                    nfe, err = ode_error(interpolant, mixture, x0, exact, method, steps=steps)
                    points.append((nfe, err))
                    if err <= ref_err:
                        reached = nfe
                        break
                curve[method] = points
                cells.append(f"{reached:>4} ({reached / ref_nfe:.2f}x)" if reached else f"{'> 64':>15}")
            curves[(label, interpolant)] = (curve, ref_nfe, ref_err)
            print(f"{label:<20} {interpolant:<7} {ref_nfe:>4} NFE {ref_err:.1e} " + " ".join(f"{c:>15}" for c in cells))
    print("(a cell: NFE needed, and that NFE over dopri5's; the target is <= 0.33x)")
    if png:
        plot(curves, png)


def plot(curves: dict, png: str) -> None:
    try:
        import matplotlib
    except ImportError:  # the table above is printed; only the figure needs matplotlib
        print(f'not drawing {png}: matplotlib is not installed (pip install -e ".[examples]")')
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), sharex=True)
    for ax, ((label, interpolant), (curve, ref_nfe, ref_err)) in zip(axes.flat, curves.items()):
        for method, points in curve.items():
            nfe, err = zip(*sorted(points))
            ax.loglog(nfe, err, "o-" if method == "dopri5" else ".-", ms=3, label=method)
        ax.plot([ref_nfe], [ref_err], "k*", ms=12, label="dopri5 atol 1e-6 rtol 1e-3")
        ax.axvline(ref_nfe / 3, color="grey", ls="--", lw=1, label="1/3 of its NFE")
        ax.axhline(ref_err, color="grey", ls=":", lw=1)
        ax.set_title(f"{interpolant}, {label}", fontsize=10)
        ax.set_ylim(1e-7, 1)
    for ax in axes[-1]:
        ax.set_xlabel("NFE")
    for ax in axes[:, 0]:
        ax.set_ylabel("mean |x - exact|")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Probability-flow ODE with the exact velocity: error against the exact transport map vs NFE")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


def trained(ckpt: str, n: int) -> None:
    """Mean |x - reference| vs NFE for adams, rk4 and heun on a trained model, next to dopri5's default."""
    from sitcli.loading import load_model

    run = load_model(ckpt)
    cfg, transport, model = run.config, run.transport, run.model.double()
    x0 = torch.randn(
        n,
        cfg.in_channels,
        cfg.input_size,
        cfg.input_size,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(0),
    )
    kwargs = {"model_kwargs": {"y": torch.arange(n) % cfg.num_classes}} if cfg.num_classes else {}
    reference, ref_nfe = sample_ode(transport, model, x0, method="dopri5", atol=1e-9, rtol=1e-9, **kwargs)

    def error(method: str, **options) -> tuple[int, float]:
        x, nfe = sample_ode(transport, model, x0, method=method, **options, **kwargs)
        return nfe, (x - reference).abs().mean().item()

    nfe, err = error("dopri5", atol=1e-6, rtol=1e-3)
    print(f"{ckpt}: {n} samples; reference dopri5 atol = rtol = 1e-9 ({ref_nfe} NFE)")
    print(f"dopri5 atol 1e-6, rtol 1e-3: {nfe} NFE, mean |x - reference| {err:.2e}")
    print(f"{'NFE':>4} {'adams':>9} {'rk4':>9} {'heun':>9}   (rk4: the largest multiple of 4 within the NFE)")
    for budget in (8, 12, 16, 20, 24, 32, 50, 100):
        errors = [
            error("adams", steps=budget)[1],
            error("rk4", steps=budget // 4)[1],
            error("heun", steps=budget // 2)[1],
        ]
        print(f"{budget:>4} " + " ".join(f"{e:9.2e}" for e in errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interpolant", default="linear", choices=["linear", "gvp", "vp"])
    parser.add_argument("--n", type=int, default=None, help="number of samples (default 2000; 500 with --ckpt)")
    parser.add_argument("--target", action="store_true", help="measure the low-NFE target and draw the curve")
    parser.add_argument("--png", default="sampler_nfe.png", help="where --target draws the curve ('' for none)")
    parser.add_argument("--ckpt", help="measure on this trained run instead of a mixture")
    args = parser.parse_args()
    if args.ckpt:
        trained(args.ckpt, args.n or 500)
        return
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    args.n = args.n or 2000
    if args.target:
        target(args.n, args.png or None)
        return

    tr = Transport(args.interpolant, "velocity")
    model = MIXTURE_1D.model(args.interpolant, "velocity")
    x0 = torch.randn(args.n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t0, t1 = tr.sample_interval()
    exact = exact_endpoint(args.interpolant, x0, t0, t1)

    print(f"ODE on a 1-D two-component mixture, {args.interpolant} interpolant, exact velocity, n={args.n}")
    print(f"{'method':<8} {'NFE':>5} {'mean |x - exact|':>17} {'max |x - exact|':>16}")
    for method, stages in FIXED:
        for budget in (10, 20, 50):
            x, nfe = sample_ode(tr, model, x0, method=method, steps=max(1, budget // stages))
            err = (x - exact).abs()
            print(f"{method:<8} {nfe:>5} {err.mean().item():>17.2e} {err.max().item():>16.2e}")
    for method in ("dopri5", "tsit5", "bosh3"):
        for tol in (1e-2, 1e-3, 1e-4, 1e-6):
            x, nfe = sample_ode(tr, model, x0, method=method, atol=tol, rtol=tol)
            err = (x - exact).abs()
            print(
                f"{method:<8} {nfe:>5} {err.mean().item():>17.2e} {err.max().item():>16.2e}   (atol = rtol = {tol:g})"
            )
    x, nfe = sample_ode(tr, model, x0, method="dopri5", atol=1e-6, rtol=1e-3)
    err = (x - exact).abs()
    print(
        f"{'dopri5':<8} {nfe:>5} {err.mean().item():>17.2e} {err.max().item():>16.2e}   "
        "(atol 1e-6, rtol 1e-3: the official default)"
    )

    print(
        "\nSDE, w = sigma, last step mean: Kolmogorov-Smirnov distance to the exact p_1 "
        f"(noise floor ~{1.63 / args.n**0.5:.3f})"
    )
    for method in ("euler", "heun"):
        for steps in (10, 20, 50, 250):
            x, nfe = sample_sde(
                tr, model, x0, method=method, steps=steps, w="sigma", generator=torch.Generator().manual_seed(1)
            )
            print(f"{method:<8} {nfe:>5} KS {ks_distance(x, args.interpolant):.4f}")

    print("\nlog-likelihood on a 2-D three-component mixture (nats, exact divergence, 64 points)")
    x1 = MIXTURE_2D.sample(64, generator=torch.Generator().manual_seed(2))
    exact_logp = MIXTURE_2D.log_prob(args.interpolant, x1, t1)
    model_2d = MIXTURE_2D.model(args.interpolant, "velocity")
    for method, kwargs in [
        ("dopri5", dict(atol=1e-6, rtol=1e-3)),
        ("dopri5", dict(atol=1e-8, rtol=1e-8)),
        ("rk4", dict(steps=25)),
    ]:
        prior = (
            None if t0 == 0 and args.interpolant != "vp" else (lambda x: MIXTURE_2D.log_prob(args.interpolant, x, t0))
        )
        logp = log_likelihood(tr, model_2d, x1, method=method, prior_log_prob=prior, **kwargs)
        err = (logp - exact_logp).abs()
        print(f"{method:<8} {str(kwargs):<32} mean error {err.mean().item():.2e}  max error {err.max().item():.2e}")


if __name__ == "__main__":
    main()
