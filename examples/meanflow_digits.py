"""One-step digits: a mean-flow SiT-Ti/4 beside the quickstart's flow model at 1, 2 and 4 NFE (and the flow at 50).

For each seed, two runs on scikit-learn's 8x8 digits with the quickstart's settings (SiT-Ti/4, batch 128,
lr 1e-3, EMA 0.995) and the same number of steps: ``sit train`` (the flow, velocity regression) and
``sit train --objective meanflow`` (uniform times, r != t on a quarter of the pairs, adaptive weight
p = 1, c = 1e-3, no folded guidance). Their weights draw ``--num`` class-conditional samples (labels
0..9 cycled, the same noise for every row; raw weights unless ``--ema``): the mean-flow model with 1, 2 and 4
uniform jumps, and with
its instantaneous velocity u(z, t, t) through the ODE (adams, 50 NFE); the flow model through the ODE
(adams, sit's default method) at 1, 2, 4 and 50 NFE. Scores: ``sitcli.evaluate.digits`` (Fréchet
distance and precision/recall in a small digit classifier's features, the SVM accuracy on raw pixels),
mean ± std over the seeds, with the real-vs-real floors at the same n; training cost is the wall time
of each run in this process (the runs take turns, so load changes hit both). Runs already in
``--root`` are reused (their recorded training time with them).

    python examples/meanflow_digits.py [--root runs/meanflow] [--steps 300] [--seeds 3] [--num 898]
        [--ema] [--figure meanflow_digits.png]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sitcli import runs
from sitcli.config import TrainConfig
from sitcli.evaluate.digits import DigitsJudge
from sitcli.images import make_grid, to_uint8
from sitcli.loading import load_model
from sitcli.training import train
from sitcli.transport import sample_meanflow, sample_ode

ROWS = [
    ("meanflow", "jump", 1),
    ("meanflow", "jump", 2),
    ("meanflow", "jump", 4),
    ("meanflow", "adams", 50),
    ("flow", "adams", 1),
    ("flow", "adams", 2),
    ("flow", "adams", 4),
    ("flow", "adams", 50),
]


def trained(root: Path, objective: str, seed: int, steps: int) -> tuple[Path, float]:
    """The run (trained here unless it is there) and its training seconds."""
    out = root / f"{objective}-{seed}"
    cost = out / "train_seconds.json"
    if runs.latest_checkpoint(out) is None or not cost.is_file():
        print(f"training {out}", flush=True)
        start = time.perf_counter()
        train(
            TrainConfig(
                data="digits",
                out=str(out),
                steps=steps,
                seed=seed,
                objective=objective,
                sample_every=0,
                ckpt_every=steps,
            ),
            progress=False,
        )
        cost.write_text(json.dumps({"seconds": time.perf_counter() - start, "steps": steps}))
    return out, json.loads(cost.read_text())["seconds"]


@torch.no_grad()
def draw(run: Path, sampler: str, steps: int, num: int, ema: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(num, 8, 8) grey levels in [0, 1] as the PNGs of `sit sample` hold them, and their labels."""
    loaded = load_model(run, ema=ema)
    g = torch.Generator().manual_seed(0)
    x0, y = torch.randn(num, 1, 8, 8, generator=g), torch.arange(num) % 10
    if sampler == "jump":
        x, nfe = sample_meanflow(
            loaded.model, x0, steps, model_kwargs={"y": y}, interval=loaded.transport.sample_interval()
        )
    else:
        x, nfe = sample_ode(loaded.transport, loaded.model, x0, sampler, steps, model_kwargs={"y": y})
    assert nfe == steps
    return to_uint8(x).numpy()[..., 0] / 255.0, y.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("runs/meanflow"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--num", type=int, default=898)
    parser.add_argument(
        "--ema",
        action="store_true",
        help="sample the EMA weights (default: the raw ones; after 300 steps the EMA of decay 0.995 "
        "still holds 0.995^300 = 22%% of the zero-output initialisation, and its samples are noise)",
    )
    parser.add_argument("--figure", type=Path, default=None, help="PNG: one row of 20 samples (seed 0) per table row")
    args = parser.parse_args()
    torch.set_num_threads(1)
    judge = DigitsJudge.default()
    scores = {row: [] for row in ROWS}
    cost = {"flow": [], "meanflow": []}
    figure = []
    for seed in range(args.seeds):
        for objective in ("flow", "meanflow"):
            run, seconds = trained(args.root, objective, seed, args.steps)
            cost[objective].append(seconds)
            for row in (r for r in ROWS if r[0] == objective):
                images, labels = draw(run, row[1], row[2], args.num, args.ema)
                s = judge.score(images, labels)
                scores[row].append((s.fd, s.precision, s.recall, s.accuracy))
                if seed == 0:
                    figure.append((row, images[:20]))
    floor = judge.score(judge.images[judge.other[: args.num]], judge.labels[judge.other[: args.num]])
    print(
        f"\n{args.seeds} seeds, {args.steps} training steps each, {'EMA' if args.ema else 'raw'} weights, {args.num} "
        "samples per row, mean ± std over seeds"
    )
    print("| model | sampler | NFE | FD (features) | precision | recall | SVM accuracy | training s (s/step) |")
    print("|---|---|---|---|---|---|---|---|")
    for (objective, sampler, nfe), values in scores.items():
        cells = " | ".join(f"{np.mean(v):.3g} ± {np.std(v):.2g}" for v in zip(*values))
        train_s = np.mean(cost[objective])
        print(f"| {objective} | {sampler} | {nfe} | {cells} | {train_s:.0f} ({train_s / args.steps:.2f}) |")
    print(
        f"| real digits (other half) | - | - | {floor.fd_floor:.3g} | {floor.precision_floor:.3g} | "
        f"{floor.recall_floor:.3g} | {floor.accuracy_floor:.3g} | - |"
    )
    ratio = np.array(cost["meanflow"]) / np.array(cost["flow"])
    print(f"training time, mean flow / flow: {ratio.mean():.2f}x ± {ratio.std():.2f} (same steps, batch and model)")
    if args.figure is not None:
        rows = np.concatenate([images for _, images in figure])
        grid = make_grid((rows[..., None] * 255).round().astype(np.uint8), ncol=20)
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        grid.save(args.figure)
        print(f"wrote {args.figure}: rows " + "; ".join(f"{o} {s} {n}" for (o, s, n), _ in figure))


if __name__ == "__main__":
    main()
