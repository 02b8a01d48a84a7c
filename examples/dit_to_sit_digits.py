"""The SiT paper's walk from DiT to SiT, one axis at a time, on the 8x8 digits with error bars.

Each row changes one thing from the row above (SiT-Ti/4, ``--steps`` steps, the digits preset
otherwise; seeds 0 .. ``--seeds`` - 1, training seed = sampling seed; ``--num`` class-balanced
samples per run), scored as in ``digits_ablation.py`` (``examples/digits_runs.py``):

1. DiT-like: discrete time (1,000 training times, ``--num-timesteps 1000``), VP interpolant,
   noise prediction, sampled by the reverse-time SDE of its diffusion (``--w SBDM``, 250
   Euler-Maruyama steps, snapped onto the 1,000-point training grid: DDPM's sampler in this form).
2. continuous time (same VP / noise / sampler)
3. velocity prediction
4. GVP interpolant
5. linear interpolant
6. the sampler: ODE (heun, 125 steps = 250 NFE) and SDE with w = sigma (250 NFE) on row 5's model
7. w(t) chosen after training: SDE with several w on the same linear / velocity models.

The commands, for each seed S in 0, 1, 2 (ROOT is ``--root``; `sit sample` gets
``--num NUM --seed S --class-labels 0,1,2,3,4,5,6,7,8,9 --threads 1 --out RUN/samples-<flags>``):

    sit train --data digits --interpolant vp --pred noise --num-timesteps 1000 --steps 500 --threads 1 --seed S \
        --out ROOT/vp-noise-T1000-sS
    sit train --data digits --interpolant vp --pred noise --steps 500 --threads 1 --seed S --out ROOT/vp-noise-sS
    sit train --data digits --interpolant vp --pred velocity --steps 500 --threads 1 --seed S --out ROOT/vp-velocity-sS
    sit train --data digits --interpolant gvp --pred velocity --steps 500 --threads 1 --seed S \
        --out ROOT/gvp-velocity-sS
    sit train --data digits --interpolant linear --pred velocity --steps 500 --threads 1 --seed S \
        --out ROOT/linear-velocity-sS
    sit sample --ckpt RUN --sampler sde --w SBDM --steps 250                        # rows 1-5, RUN each of the above
    sit sample --ckpt ROOT/linear-velocity-sS --sampler ode --method heun --steps 125
    sit sample --ckpt ROOT/linear-velocity-sS --sampler sde --w sigma --steps 250   # and w constant, decreasing, ...

The runs are the same folders as ``digits_ablation.py``'s where the setting is the same (give both
the same ``--root``), and runs already there are reused.

    python examples/dit_to_sit_digits.py [--root runs/ablation] [--steps 500] [--num 300] [--seeds 3] [--jobs 1]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from digits_runs import HEADER, Sampling, Training, arguments, cells, floors, prepare, seed_scores  # noqa: E402

SDE_SBDM = Sampling(("--sampler", "sde", "--w", "SBDM", "--steps", "250"))
LINEAR = Training("linear", "velocity")
# (row, what changed, training, sampler name, sampling)
WALK = [
    ("1", "DiT-like: discrete time (T = 1000), VP, noise", Training("vp", "noise", 1000), "SDE w = SBDM", SDE_SBDM),
    ("2", "continuous time", Training("vp", "noise"), "SDE w = SBDM", SDE_SBDM),
    ("3", "velocity prediction", Training("vp", "velocity"), "SDE w = SBDM", SDE_SBDM),
    ("4", "GVP interpolant", Training("gvp", "velocity"), "SDE w = SBDM", SDE_SBDM),
    ("5", "linear interpolant", LINEAR, "SDE w = SBDM", SDE_SBDM),
    (
        "6",
        "sampler: ODE",
        LINEAR,
        "ODE heun 125 (250 NFE)",
        Sampling(("--sampler", "ode", "--method", "heun", "--steps", "125")),
    ),
    (
        "6",
        "sampler: SDE w = sigma",
        LINEAR,
        "SDE w = sigma",
        Sampling(("--sampler", "sde", "--w", "sigma", "--steps", "250")),
    ),
]
# w(t) after training, on the linear / velocity models (w = linear, 1 - t, is sigma on this interpolant).
W_AFTER = ["SBDM", "sigma", "constant", "decreasing", "increasing-decreasing"]


def main() -> None:
    args = arguments(__doc__).parse_args()

    w_rows = [(w, Sampling(("--sampler", "sde", "--w", w, "--steps", "250"))) for w in W_AFTER]
    pairs = [(t, s) for _, _, t, _, s in WALK] + [(LINEAR, s) for _, s in w_rows]
    prepare(pairs, args.root, args.seeds, args.steps, args.num, args.threads, args.jobs)

    print(
        f"\nSiT-Ti/4, {args.steps} steps, {args.num} samples per run, seeds 0..{args.seeds - 1}: "
        f"mean ± std over the seeds (SDE: 250 Euler-Maruyama steps)"
    )
    print(floors(args.num))
    print("| row | change | model | sampler " + HEADER)
    print("|---|---|---|---|---|---|---|---|---|")
    for row, change, training, name, sampling in WALK:
        scores = seed_scores(training, sampling, args.root, args.seeds, args.num)
        print(f"| {row} | {change} | {training.name} | {name} | {cells(scores)} |")
    print("\nw(t) chosen after training (SDE, 250 steps, on the linear / velocity models)")
    print("| w(t) " + HEADER)
    print("|---|---|---|---|---|---|")
    for w, sampling in w_rows:
        print(f"| {w} | {cells(seed_scores(LINEAR, sampling, args.root, args.seeds, args.num))} |")


if __name__ == "__main__":
    main()
