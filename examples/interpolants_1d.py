"""Linear, GVP and VP interpolants between N(0, 1) and two 1-D targets: how the density moves, the
probability-flow ODE's trajectories, and how much "work" each path does. Exact fields, no training.

Targets: a Bernoulli at +-1 (a mixture of two Gaussians with std 1e-3, which is the Bernoulli up to
a width no plot can show), and the mixture 0.5 N(-1, 0.3^2) + 0.5 N(2, 0.5^2).

In one dimension the probability-flow ODE keeps the order of particles, so its trajectory from the
u-quantile of p_0 is the u-quantile of p_t at every t: X_t(u) = F_t^{-1}(u). This script reads the
trajectories off the exact CDFs (``GaussianMixture.cdf``) instead of integrating the ODE, so every
number below is exact up to the grids' spacing. With v = dX_t/dt along the flow, it prints

    kinetic energy   K = int_0^1 E|v(X_t, t)|^2 dt       (the paper's path length / transport cost)
    path length      L = E int_0^1 |v(X_t, t)| dt
    W2^2             = E|F_1^{-1}(u) - F_0^{-1}(u)|^2   (the optimal transport cost; K >= W2^2, with
                                                         equality only for straight, constant-speed paths)
    E|x1 - x0|^2     under the interpolant's own (independent) coupling, E x1^2 + E x0^2.

In 1-D every interpolant ends in the same monotone map x0 -> x1, so W2^2 is the same for all of
them; K and L tell them apart: L by how far trajectories wander (they may move away from their end
point and back), K also by how unevenly in time they cover that distance (VP does most of its
moving in the last few percent of time).

    python examples/interpolants_1d.py [--png interpolants_1d.png]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from sitcli.transport import GaussianMixture, Transport
from sitcli.transport.time_grids import cosine_times

TARGETS = {
    "Bernoulli at +-1": GaussianMixture([[-1.0], [1.0]], [1e-3, 1e-3]),
    "0.5 N(-1, .3^2) + 0.5 N(2, .5^2)": GaussianMixture([[-1.0], [2.0]], [0.3, 0.5]),
}
INTERPOLANTS = ("linear", "gvp", "vp")
X_GRID = np.linspace(-6.0, 7.0, 65001)  # spacing 2e-4, well under the Bernoulli's std
LEVELS = (np.arange(4000) + 0.5) / 4000  # quantile levels u of the particles


def time_grid(interpolant: str, n: int = 1201) -> np.ndarray:
    """Times over the sampling interval, denser near both ends where VP's velocity is largest."""
    t0, t1 = Transport(interpolant, "velocity").sample_interval()
    return cosine_times(t0, t1, n - 1).numpy()


def quantile_paths(mixture: GaussianMixture, interpolant: str, times: np.ndarray) -> np.ndarray:
    """X_t(u) = F_t^{-1}(u) for every time (rows) and level (columns)."""
    x = torch.from_numpy(X_GRID)[:, None]
    paths = np.empty((len(times), len(LEVELS)))
    for i, t in enumerate(times):
        cdf = mixture.cdf(interpolant, x, torch.tensor(t, dtype=torch.float64)).numpy()
        paths[i] = np.interp(LEVELS, cdf, X_GRID)
    return paths


def costs(mixture: GaussianMixture, paths: np.ndarray, times: np.ndarray) -> dict[str, float]:
    dx, dt = np.diff(paths, axis=0), np.diff(times)[:, None]
    second_moment = float((mixture.weights * (mixture.means[:, 0] ** 2 + mixture.stds[:, 0] ** 2)).sum())
    return {
        "K": float((dx**2 / dt).mean(axis=1).sum()),  # sum_i E (dx_i / dt_i)^2 dt_i
        "L": float(np.abs(dx).sum(axis=0).mean()),
        "W2^2": float(((paths[-1] - paths[0]) ** 2).mean()),
        "E|x1-x0|^2": second_moment + 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", default="interpolants_1d.png", help="figure to write ('' for none)")
    args = parser.parse_args()

    results, figures = {}, {}
    print(f"{'target':<34} {'interp.':<7} {'K = int E|v|^2 dt':>18} {'L = E int |v| dt':>17} "
          f"{'W2^2':>7} {'K / W2^2':>9} {'E|x1-x0|^2':>11}")
    for name, mixture in TARGETS.items():
        for interpolant in INTERPOLANTS:
            times = time_grid(interpolant)
            paths = quantile_paths(mixture, interpolant, times)
            c = costs(mixture, paths, times)
            results[(name, interpolant)] = c
            figures[(name, interpolant)] = (times, paths)
            print(f"{name:<34} {interpolant:<7} {c['K']:>18.3f} {c['L']:>17.3f} {c['W2^2']:>7.3f} "
                  f"{c['K'] / c['W2^2']:>9.2f} {c['E|x1-x0|^2']:>11.3f}")
    for name in TARGETS:
        k = {i: results[(name, i)]["K"] for i in INTERPOLANTS}
        verdict = "agrees" if max(k["linear"], k["gvp"]) < k["vp"] else "does NOT agree"
        print(f"{name}: linear K={k['linear']:.3f}, GVP K={k['gvp']:.3f}, VP K={k['vp']:.3f} -> "
              f"{verdict} with the paper (linear and GVP shorter than VP)")
    if args.png:
        plot(figures, args.png)


def plot(figures: dict, png: str) -> None:
    try:
        import matplotlib
    except ImportError:  # the table above is printed; only the figure needs matplotlib
        print(f'not drawing {png}: matplotlib is not installed (pip install -e ".[examples]")')
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(TARGETS), len(INTERPOLANTS), figsize=(13, 7), sharey="row")
    x = np.linspace(-3.5, 4.5, 400)
    for row, (name, mixture) in enumerate(TARGETS.items()):
        for col, interpolant in enumerate(INTERPOLANTS):
            ax = axes[row, col]
            times, paths = figures[(name, interpolant)]
            t_img = np.linspace(times[0], times[-1], 300)
            xx = torch.from_numpy(np.repeat(x[None], len(t_img), 0).reshape(-1, 1))
            tt = torch.from_numpy(np.repeat(t_img, len(x)))
            density = mixture.log_prob(interpolant, xx, tt).exp().numpy().reshape(len(t_img), len(x))
            # p_t capped at 1.2 so the nearly-singular Bernoulli end does not wash out the rest.
            ax.imshow(np.minimum(density, 1.2).T, origin="lower", aspect="auto", cmap="magma",
                      extent=(t_img[0], t_img[-1], x[0], x[-1]))
            ax.plot(times, paths[:, 100::200], color="white", lw=0.6, alpha=0.8)
            ax.set_title(f"{interpolant}: {name}", fontsize=9)
            ax.set_xlabel("t (0 noise, 1 data)")
        axes[row, 0].set_ylabel("x")
    fig.suptitle("p_t(x) (colour, capped at 1.2) and probability-flow ODE trajectories (white), exact")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
