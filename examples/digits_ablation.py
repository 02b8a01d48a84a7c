"""Small digits runs comparing interpolants and predictions, and ODE vs SDE w(t) on one trained model.

Every configuration trains SiT-Ti/4 on scikit-learn's 8x8 digits for ``--steps`` steps (the digits
preset otherwise: batch 128, lr 1e-3, EMA 0.995) with seeds 0 .. ``--seeds`` - 1, samples ``--num``
class-balanced digits from each run with the same seed, and scores them with
``sitcli.evaluate.digits.DigitsJudge`` (``examples/digits_runs.py``): Fréchet distance (FD), precision
and recall in a small digit classifier's features, an RBF SVM's accuracy, and the raw-pixel FD of
the earlier tables. Each cell is mean ± standard deviation over the seeds; the real-vs-real floors
are printed once above the table.

Runs already in ``--root`` are reused, so a table can be redrawn without training again; every
command is printed as it runs (``sit train ... --seed S``, then ``sit sample ... --seed S``).

    python examples/digits_ablation.py [--root runs/ablation] [--steps 500] [--num 300] [--seeds 3] [--jobs 1]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from digits_runs import HEADER, Sampling, Training, arguments, cells, floors, prepare, seed_scores  # noqa: E402

# (interpolant, prediction): the paper's Table 1 axes at digits scale.
TRAININGS = [Training("linear", "velocity"), Training("gvp", "velocity"), Training("vp", "velocity"),
             Training("linear", "score"), Training("linear", "noise")]
# Sampler settings tried on the linear / velocity model; the first (ODE heun, 50 steps = 100 NFE)
# is used for every model. (w = linear, 1 - t, is w = sigma on the linear interpolant: not listed.)
SAMPLERS = [
    ("ODE heun 50 (100 NFE)", Sampling(("--sampler", "ode", "--method", "heun", "--steps", "50"))),
    ("SDE euler 250, w = sigma", Sampling(("--sampler", "sde", "--w", "sigma", "--steps", "250"))),
    ("SDE euler 250, w = SBDM", Sampling(("--sampler", "sde", "--w", "SBDM", "--steps", "250"))),
    ("SDE euler 250, w = constant 1", Sampling(("--sampler", "sde", "--w", "constant", "--steps", "250"))),
    # The official code's last step (sit's default before it became the probability-flow step):
    ("SDE euler 250, w = constant 1, --last-step mean",
     Sampling(("--sampler", "sde", "--w", "constant", "--steps", "250", "--last-step", "mean"))),
]


def main() -> None:
    args = arguments(__doc__).parse_args()

    rows = [(t, *SAMPLERS[0]) for t in TRAININGS] + [(TRAININGS[0], name, s) for name, s in SAMPLERS[1:]]
    prepare([(t, s) for t, _, s in rows], args.root, args.seeds, args.steps, args.num, args.threads, args.jobs)

    print(f"\nSiT-Ti/4, {args.steps} steps, {args.num} samples per run, seeds 0..{args.seeds - 1}: "
          f"mean ± std over the seeds")
    print(floors(args.num))
    print("| interpolant / prediction | sampler " + HEADER)
    print("|---|---|---|---|---|---|---|")
    for training, name, sampling in rows:
        scores = seed_scores(training, sampling, args.root, args.seeds, args.num)
        print(f"| {training.interpolant} / {training.prediction} | {name} | {cells(scores)} |")


if __name__ == "__main__":
    main()
