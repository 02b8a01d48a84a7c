"""ODE against SDE sample quality as the number of model evaluations (NFE) grows, on one digits model.

The linear / velocity SiT-Ti/4 runs of ``dit_to_sit_digits.py`` (seeds 0 .. ``--seeds`` - 1, the
same folders under the same ``--root``) sample ``--num`` class-balanced digits at each NFE with

- the probability-flow ODE, heun (2 NFE per step): ``sit sample --sampler ode --method heun --steps NFE/2``
- the SDE with w = sigma, Euler-Maruyama (1 NFE per step): ``sit sample --sampler sde --w sigma --steps NFE``

(plus ``--num NUM --seed S --class-labels 0,1,2,3,4,5,6,7,8,9 --threads 1 --out RUN/samples-<flags>``),
and are scored by the Fréchet distance in the digit classifier's features (``digits_runs.py``).
It prints the table (mean ± std over the seeds) and the crossover: the NFE, interpolated
linearly in log NFE between the two grid points where the mean FDs change order, above which the
SDE's mean FD is the lower. With matplotlib (``pip install -e ".[examples]"``) it also writes the
curves with the crossover marked to ``--png``.

    python examples/ode_vs_sde_nfe_digits.py [--root runs/ablation] [--nfe 10,20,50,100,250] [--num 300] \
        [--png ode_vs_sde_nfe.png]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from digits_runs import Sampling, Training, arguments, floors, mean_std, prepare, seed_scores  # noqa: E402

LINEAR = Training("linear", "velocity")


def samplings(nfe: int) -> dict[str, Sampling]:
    return {
        "ODE heun": Sampling(("--sampler", "ode", "--method", "heun", "--steps", str(nfe // 2))),
        "SDE w = sigma": Sampling(("--sampler", "sde", "--w", "sigma", "--steps", str(nfe))),
    }


def crossover(nfes: list[int], ode: list[float], sde: list[float]) -> float | None:
    """The NFE where the mean SDE FD falls below the mean ODE FD (last change of sign, log-NFE
    interpolation), or None if the order never changes."""
    d = np.asarray(sde) - np.asarray(ode)
    for i in range(len(d) - 1, 0, -1):
        if d[i] < 0 <= d[i - 1]:
            f = d[i - 1] / (d[i - 1] - d[i])
            return math.exp(math.log(nfes[i - 1]) + f * (math.log(nfes[i]) - math.log(nfes[i - 1])))
    return None


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--nfe", default="10,20,50,100,250", help="comma list of even NFEs")
    parser.add_argument("--png", type=Path, default=Path("ode_vs_sde_nfe.png"))
    args = parser.parse_args()
    nfes = [int(n) for n in args.nfe.split(",")]
    if any(n < 2 or n % 2 for n in nfes):
        parser.error(f"--nfe {args.nfe}: pass even numbers >= 2 (heun spends 2 NFE per step)")

    prepare(
        [(LINEAR, s) for n in nfes for s in samplings(n).values()],
        args.root,
        args.seeds,
        args.steps,
        args.num,
        args.threads,
        args.jobs,
    )
    fd = {name: [] for name in samplings(2)}
    for n in nfes:
        for name, sampling in samplings(n).items():
            fd[name].append([s["fd"] for s in seed_scores(LINEAR, sampling, args.root, args.seeds, args.num)])

    means = {name: [float(np.mean(v)) for v in values] for name, values in fd.items()}
    cross = crossover(nfes, means["ODE heun"], means["SDE w = sigma"])
    print(
        f"\nlinear / velocity SiT-Ti/4, {args.steps} steps, {args.num} samples, seeds 0..{args.seeds - 1}: "
        "FD in the classifier's features, mean ± std"
    )
    print(floors(args.num))
    print("| NFE | " + " | ".join(fd) + " |")
    print("|---" * (len(fd) + 1) + "|")
    for i, n in enumerate(nfes):
        print(f"| {n} | " + " | ".join(mean_std(values[i]) for values in fd.values()) + " |")
    print(
        "crossover: "
        + (
            f"the SDE's mean FD is below the ODE's from about {cross:.0f} NFE"
            if cross
            else "none: the order of the mean FDs does not change from the lowest NFE to the highest"
        )
    )
    try:
        import matplotlib
    except ImportError:
        print('(no PNG: pip install -e ".[examples]" for matplotlib)')
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, values in fd.items():
        a = np.asarray(values)
        ax.errorbar(
            nfes, a.mean(1), yerr=a.std(1, ddof=1) if a.shape[1] > 1 else None, marker="o", capsize=3, label=name
        )
    if cross:
        ax.axvline(cross, color="grey", linestyle="--", label=f"crossover ≈ {cross:.0f} NFE")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="NFE",
        ylabel="FD (classifier features)",
        title=f"digits, linear / velocity, {args.seeds} seeds",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
