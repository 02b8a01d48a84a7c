"""Where time is spent, on the digits: training-time densities, shifted ODE grids, autoguidance.

Three measurements on SiT-Ti/4 trained on scikit-learn's 8x8 digits (``--steps`` steps each, seeds
0 .. ``--seeds`` - 1, everything else the digits preset), scored as in ``digits_ablation.py``: the
RBF-SVM accuracy of ``sitcli.evaluate.digits`` and the raw-pixel Frechet distance (FD) against real digits.

1. Densities: one run per density (uniform, logit-normal(0, 1), mode(1.29)) and seed; ``--num``
   class-conditional samples with adams at 20 steps.
2. Time shift: on the uniform runs, the ODE at 8 and 16 NFE (heun, euler) with and without a shift,
   against a dopri5 reference at atol = rtol = 1e-8 from the same noise: the mean absolute
   difference of the final samples (in [-1, 1] pixel units).
3. Autoguidance vs classifier-free guidance at equal NFE: the run's own step-``--guide-step``
   checkpoint (EMA weights) as the weak guide at adams 10 steps (20 NFE: two networks per step)
   against cfg at adams 20 steps (20 NFE: one doubled batch per step), both at scale ``--scale``,
   and unguided adams 20 steps.

Mean and standard deviation over the seeds are printed as markdown tables. Runs already in
``--root`` are reused.

    python examples/time_densities_digits.py [--root runs/time] [--steps 600] [--seeds 3] [--num 300]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).parent))
from digits_runs import pixel_fd as frechet_distance  # noqa: E402

from sitcli import runs  # noqa: E402
from sitcli.config import TrainConfig  # noqa: E402
from sitcli.evaluate.digits import DigitsJudge  # noqa: E402
from sitcli.guidance import AutoGuidance, ClassifierFreeGuidance  # noqa: E402
from sitcli.loading import load_model  # noqa: E402
from sitcli.training import train  # noqa: E402
from sitcli.transport import sample_ode  # noqa: E402

DENSITIES = {"uniform": {}, "logit-normal": {"logit_mean": 0.0, "logit_std": 1.0}, "mode": {"mode_scale": 1.29}}
SHIFTS = [1.0, 0.5, 2.0]


def trained(root: Path, density: str, seed: int, steps: int, guide_step: int) -> Path:
    out = root / f"{density}-{seed}"
    if runs.latest_checkpoint(out) is None or int(runs.latest_checkpoint(out).name) < steps:
        print(f"training {out}", flush=True)
        train(TrainConfig(data="digits", out=str(out), steps=steps, seed=seed, ckpt_every=guide_step, sample_every=0,
                          time_density=density, **DENSITIES[density]), progress=False)
    return out


def noise_and_labels(num: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num, 1, 8, 8, generator=g), torch.arange(num) % 10


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """Samples in [-1, 1] as the 64 grey levels 0..16 of the real digits (as the PNGs are read back)."""
    img = ((x.clamp(-1, 1) + 1) * 127.5).round().clamp(0, 255)
    return (img.reshape(len(x), 64) / 255 * 16).numpy()


def score(x, y, svm, reference, n):
    pixels = to_pixels(x)
    return (svm.predict(pixels) == y.numpy()).mean(), frechet_distance(pixels[:n], reference)


def table(title: str, header: str, rows: dict) -> None:
    print(f"\n{title}\n{header}")
    print("|" + "---|" * (header.count("|") - 1))
    for name, values in rows.items():
        cells = " | ".join(f"{np.mean(v):.4g} ± {np.std(v):.2g}" for v in zip(*values))
        print(f"| {name} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("runs/time"))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--num", type=int, default=300)
    parser.add_argument("--guide-step", type=int, default=150)
    parser.add_argument("--scale", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    digits = load_digits()
    svm = DigitsJudge.default().svm  # an RBF SVM on all real digits' raw pixels (0..16)
    order = np.random.default_rng(0).permutation(len(digits.data))
    n = min(args.num, len(digits.data) // 2)
    reference = digits.data[order[n:]]
    print(f"FD floor (another {n} real digits): {frechet_distance(digits.data[order[:n]], reference):.2f}")
    x0, y = noise_and_labels(args.num)

    densities, shifts, guidance = {}, {}, {}
    for seed in range(args.seeds):
        for density in DENSITIES:
            run = trained(args.root, density, seed, args.steps, args.guide_step)
            loaded = load_model(run)
            with torch.no_grad():
                x, _ = sample_ode(loaded.transport, loaded.model, x0, "adams", 20, model_kwargs={"y": y})
            densities.setdefault(density, []).append(score(x, y, svm, reference, n))
            if density != "uniform":
                continue
            tr, model = loaded.transport, loaded.model
            with torch.no_grad():
                ref, _ = sample_ode(tr, model, x0, "dopri5", atol=1e-8, rtol=1e-8, model_kwargs={"y": y})
                for method, steps in (("euler", 8), ("heun", 4), ("euler", 16), ("heun", 8)):
                    for s in SHIFTS:
                        x, nfe = sample_ode(tr, model, x0, method, steps, model_kwargs={"y": y}, time_shift=s)
                        key = f"{method} {nfe} NFE"
                        shifts.setdefault(key, {}).setdefault(s, []).append(float((x - ref).abs().mean()))
                guide = load_model(run / "checkpoints" / f"{args.guide_step:07d}").model
                for name, fn, steps in (
                    ("unguided, adams 20 (20 NFE)", model, 20),
                    (f"cfg {args.scale:g}, adams 20 (20 NFE)", ClassifierFreeGuidance(model, args.scale, 10), 20),
                    (f"autoguidance {args.scale:g} from step {args.guide_step}, adams 10 (20 NFE)",
                     AutoGuidance(model, guide, args.scale), 10),
                ):
                    x, nfe = sample_ode(tr, fn, x0, "adams", steps, model_kwargs={"y": y})
                    guidance.setdefault(name, []).append(score(x, y, svm, reference, n))
        print(f"seed {seed} done", flush=True)

    print(f"\nSiT-Ti/4 on digits, {args.steps} training steps, seeds 0..{args.seeds - 1}, {args.num} samples, "
          "mean ± std over seeds")
    table("Training-time density (adams 20 steps):", "| density | SVM accuracy | FD (raw pixels) |", densities)
    print("\nTime shift (uniform runs; mean |x - x_dopri5(1e-8)|):")
    print("| solver | " + " | ".join(f"shift {s:g}" for s in SHIFTS) + " |")
    print("|---|" + "---|" * len(SHIFTS))
    for key, by_shift in shifts.items():
        print(f"| {key} | " + " | ".join(f"{np.mean(v):.3g} ± {np.std(v):.2g}" for v in by_shift.values()) + " |")
    table("Guidance at equal NFE (uniform runs):", "| sampler | SVM accuracy | FD (raw pixels) |", guidance)


if __name__ == "__main__":
    main()
