"""Small digits runs comparing interpolants and predictions, and ODE vs SDE w(t) on one trained model.

Every configuration trains SiT-Ti/4 on scikit-learn's 8x8 digits for ``--steps`` steps (same seed,
batch, learning rate), samples ``--num`` class-conditional digits and scores them two ways against
the real digits:

- accuracy: an RBF SVM trained on all real digits (``sitcli.evaluate.digits``) classifies the samples;
  the fraction given the label they were generated for. It asks "is this recognisably a 3?" and
  misses a lack of variety (a model that drew one perfect 3 for every 3 would score 100%).
- FD: the Frechet distance between Gaussians fitted to the samples and to the real digits, on the
  64 raw pixels (grey levels 0..16):
      FD = |mu_g - mu_r|^2 + Tr(S_g + S_r - 2 (S_g S_r)^{1/2}).
  It is FID's formula without Inception (8x8 digits are far from ImageNet); it penalises wrong
  mean strokes and missing or extra variety. Samples are compared with a fixed reference set of
  real digits; its floor is printed: the FD of as many other real digits against that set.

Runs already in ``--root`` are reused, so a table can be redrawn without training again.

    python examples/digits_ablation.py [--root runs/ablation] [--steps 1000] [--num 500]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import linalg
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).parent))
from digits_quality import load_samples  # noqa: E402

from sitcli.evaluate.digits import DigitsJudge  # noqa: E402

# (interpolant, prediction): the paper's Table 1 axes at digits scale.
TRAININGS = [("linear", "velocity"), ("gvp", "velocity"), ("vp", "velocity"), ("linear", "score"), ("linear", "noise")]
# Sampler settings tried on the linear / velocity model: (name, extra `sit sample` flags); the
# first (ODE heun, 50 steps = 100 NFE; `sit sample`'s default when these figures were made) is used
# for every model.
# (w=linear, 1 - t, is w=sigma on the linear interpolant, so it is not listed.)
SAMPLERS = [
    ("ODE heun 50", ["--sampler", "ode", "--method", "heun", "--steps", "50"]),
    ("SDE euler 250 w=sigma", ["--sampler", "sde", "--w", "sigma"]),
    ("SDE euler 250 w=SBDM", ["--sampler", "sde", "--w", "SBDM"]),
    ("SDE euler 250 w=constant", ["--sampler", "sde", "--w", "constant"]),
    # The official code's last step (sit's default before it became the probability-flow step):
    ("SDE euler 250 w=constant, last step mean", ["--sampler", "sde", "--w", "constant", "--last-step", "mean"]),
]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    # The real digits' corner pixels are always 0, so both covariances are singular; a tiny ridge
    # keeps the matrix square root real without moving FD by more than ~1e-4.
    ridge = 1e-6 * np.eye(a.shape[1])
    cov_a, cov_b = np.cov(a, rowvar=False) + ridge, np.cov(b, rowvar=False) + ridge
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--steps", type=int, default=1000, help="training steps per run")
    parser.add_argument("--num", type=int, default=500, help="samples per configuration")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    jobs = [(f"{i}/{p}", args.root / f"{i}-{p}", *SAMPLERS[0]) for i, p in TRAININGS]
    jobs += [("linear/velocity", args.root / "linear-velocity", name, flags) for name, flags in SAMPLERS[1:]]
    for interpolant, prediction in TRAININGS:
        out = args.root / f"{interpolant}-{prediction}"
        if not (out / "checkpoints").is_dir():
            run(["sit", "train", "--data", "digits", "--interpolant", interpolant, "--pred", prediction,
                 "--steps", str(args.steps), "--threads", str(args.threads), "--seed", "0", "--out", str(out)])

    digits = load_digits()
    x_real, y_real = digits.data, digits.target
    svm = DigitsJudge.default().svm
    # Samples are compared with a fixed reference set of real digits; the floor is a set of other
    # real digits, as many as the samples, against the same reference (FD is biased by set size).
    order = np.random.default_rng(0).permutation(len(x_real))
    n = min(args.num, len(x_real) // 2)
    reference = x_real[order[n:]]
    floor = frechet_distance(x_real[order[:n]], reference)

    rows = []
    for model, folder, sampler, flags in jobs:
        samples = folder / ("samples-" + sampler.replace(" ", "-").replace("=", ""))
        if not (samples / "labels.csv").is_file():
            run(["sit", "sample", "--ckpt", str(folder), *flags, "--num", str(args.num), "--seed", "0",
                 "--class-labels", "0,1,2,3,4,5,6,7,8,9", "--threads", str(args.threads), "--out", str(samples)])
        x, y = load_samples(samples)
        x = x.reshape(len(x), -1) * 16.0  # the real digits' grey levels 0..16
        accuracy = (svm.predict(x) == y).mean()
        rows.append((model, sampler, accuracy, frechet_distance(x[:n], reference)))

    print(f"\nSiT-Ti/4, {args.steps} steps, {args.num} samples each; FD against {len(reference)} real digits, "
          f"floor (another {n} real digits): {floor:.2f}")
    print("| model (interpolant/prediction) | sampler | SVM accuracy | FD (raw pixels) |")
    print("|---|---|---|---|")
    for model, sampler, accuracy, fd in rows:
        print(f"| {model} | {sampler} | {accuracy:.1%} | {fd:.2f} |")


if __name__ == "__main__":
    main()
