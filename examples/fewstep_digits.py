"""Few steps from the flow model the quickstart trains: DMF, iMF and AlphaFlow fine-tunings of it on the digits,
beside the flow model itself and a mean flow trained from scratch, at 1, 2 and 4 NFE.

For each seed, on scikit-learn's 8x8 digits with the quickstart's settings (SiT-Ti/4, batch 128, lr 1e-3, EMA
0.995):

- ``flow``: the quickstart, ``sit train --data digits`` (``--steps``, 2,000);
- ``dmf`` / ``imf`` / ``alphaflow`` / ``imf-omega``: ``sit train --init-from FLOW --objective ...`` for
  ``--finetune`` more steps (400: a fifth), each with its loss class's defaults, which are its paper's: half of
  the (t, r) pairs jump (``--meanflow-share 0.5``), DMF's c = 0.01 (``--meanflow-c 0.01``), DMF's form with
  5/7 of the blocks on t (3 of SiT-Ti's 4), iMF's velocity head of depth/4 blocks (1), AlphaFlow's sigmoid over
  the whole fine-tuning; no guidance, except ``imf-omega``, which draws omega in [1, 4] and is sampled at
  omega = 1 (no guidance) and 2;
- ``meanflow``: ``sit train --objective meanflow`` from scratch for the same total steps (2,000 + 400), sit's
  defaults (a quarter of the pairs jump, p = 1, c = 1e-3).

Each run's EMA weights draw ``--num`` class-conditional samples (labels 0..9 cycled, the same noise for every
row): the few-step models with 1, 2 and 4 uniform jumps (NFE = jumps), the flow model through sit's default ODE
(adams) at 1, 2, 4 and 50 NFE. Scores: ``sitcli.evaluate.digits`` (Fréchet distance and precision / recall in a
small digit classifier's features, an SVM's accuracy on the pixels), mean ± std over the seeds, with the
real-vs-real floors at the same n. Cost: each run's CPU time (this process's, all threads) and wall time, as
measured when it trained; runs already in ``--root`` are reused with the cost they recorded.

    python examples/fewstep_digits.py [--root runs/fewstep] [--steps 2000] [--finetune 400] [--seeds 3] [--num 898]
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
from sitcli.images import to_uint8
from sitcli.loading import load_model
from sitcli.training import train
from sitcli.transport import sample_meanflow, sample_ode

FINETUNES = {
    "dmf": dict(objective="dmf", meanflow_share=0.5, meanflow_c=0.01),
    "imf": dict(objective="imf", meanflow_share=0.5),
    "alphaflow": dict(objective="alphaflow", meanflow_share=0.5),
    "imf-omega": dict(objective="imf", meanflow_share=0.5, imf_omega_max=4.0),
}
# (run, sampler, NFE, omega)
ROWS = [
    *(("flow", "adams", n, None) for n in (1, 2, 4, 50)),
    *(("meanflow", "jump", n, None) for n in (1, 2, 4)),
    *((name, "jump", n, None) for name in ("dmf", "imf", "alphaflow") for n in (1, 2, 4)),
    *(("imf-omega", "jump", n, 1.0) for n in (1, 2, 4)),
    ("imf-omega", "jump", 1, 2.0),
]


def trained(out: Path, cfg: TrainConfig) -> dict:
    """Train ``cfg`` into ``out`` unless it is there; its recorded cost {seconds, cpu_seconds, steps}."""
    cost = out / "train_seconds.json"
    if runs.latest_checkpoint(out) is None or not cost.is_file():
        print(f"training {out}", flush=True)
        wall, cpu = time.perf_counter(), time.process_time()
        train(cfg, progress=False)
        cost.write_text(json.dumps({"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
                                    "steps": cfg.steps}))
    return json.loads(cost.read_text())


def run_all(root: Path, seed: int, steps: int, finetune: int) -> dict[str, tuple[Path, dict]]:
    """Every run of one seed: the flow model, its fine-tunings, the mean flow from scratch."""
    base = dict(data="digits", seed=seed, sample_every=0)
    flow = root / f"flow-{seed}"
    out = {"flow": (flow, trained(flow, TrainConfig(out=str(flow), steps=steps, ckpt_every=steps, **base)))}
    for name, settings in FINETUNES.items():
        run = root / f"{name}-{seed}"
        cfg = TrainConfig(out=str(run), steps=finetune, ckpt_every=finetune, init_from=str(flow), **base, **settings)
        out[name] = (run, trained(run, cfg))
    scratch = root / f"meanflow-{seed}"
    total = steps + finetune
    out["meanflow"] = (scratch, trained(scratch, TrainConfig(out=str(scratch), steps=total, ckpt_every=total,
                                                             objective="meanflow", **base)))
    return out


@torch.no_grad()
def draw(run: Path, sampler: str, nfe: int, omega: float | None, num: int) -> tuple[np.ndarray, np.ndarray]:
    """(num, 8, 8) grey levels in [0, 1] as the PNGs of `sit sample` hold them, and their labels (EMA weights)."""
    loaded = load_model(run)
    g = torch.Generator().manual_seed(0)
    x0, y = torch.randn(num, 1, 8, 8, generator=g), torch.arange(num) % 10
    kwargs = {"y": y} if omega is None else {"y": y, "omega": omega}
    if sampler == "jump":
        x, done = sample_meanflow(loaded.model, x0, nfe, model_kwargs=kwargs,
                                  interval=loaded.transport.sample_interval())
    else:
        x, done = sample_ode(loaded.transport, loaded.model, x0, sampler, nfe, model_kwargs=kwargs)
    assert done == nfe
    return to_uint8(x).numpy()[..., 0] / 255.0, y.numpy()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("runs/fewstep"))
    parser.add_argument("--steps", type=int, default=2000, help="the flow model's steps (the quickstart's)")
    parser.add_argument("--finetune", type=int, default=400, help="steps of each fine-tuning")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--num", type=int, default=898)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    judge = DigitsJudge.default()
    scores: dict[tuple, list] = {row: [] for row in ROWS}
    costs: dict[str, list[dict]] = {}
    for seed in range(args.seeds):
        done = run_all(args.root, seed, args.steps, args.finetune)
        for name, (_, cost) in done.items():
            costs.setdefault(name, []).append(cost)
        for row in ROWS:
            images, labels = draw(done[row[0]][0], row[1], row[2], row[3], args.num)
            s = judge.score(images, labels)
            scores[row].append((s.fd, s.precision, s.recall, s.accuracy))
    floor = judge.score(judge.images[judge.other[: args.num]], judge.labels[judge.other[: args.num]])
    print(f"\n{args.seeds} seeds; flow {args.steps} steps, fine-tunings {args.finetune} more, mean flow from scratch "
          f"{args.steps + args.finetune}; EMA weights, {args.num} samples per row, mean ± std over seeds")
    print("| model | sampler | NFE | FD (features) | precision | recall | SVM accuracy |")
    print("|---|---|---|---|---|---|---|")
    for (name, sampler, nfe, omega), values in scores.items():
        cells = " | ".join(f"{np.mean(v):.3g} ± {np.std(v):.2g}" for v in zip(*values))
        label = name + (f" (ω = {omega:g})" if omega is not None else "")
        print(f"| {label} | {'ODE (adams)' if sampler == 'adams' else 'jumps'} | {nfe} | {cells} |")
    print(f"| real digits (other half) | | | {floor.fd_floor:.3g} | {floor.precision_floor:.3g} | "
          f"{floor.recall_floor:.3g} | {floor.accuracy_floor:.3g} |")
    print(f"\n| run | steps | CPU s (per step) | wall s | CPU s vs the flow model's {args.steps} steps |")
    print("|---|---|---|---|---|")
    flow_cpu = np.array([c["cpu_seconds"] for c in costs["flow"]])
    for name, cost in costs.items():
        cpu = np.array([c["cpu_seconds"] for c in cost])
        wall, steps = np.array([c["seconds"] for c in cost]), cost[0]["steps"]
        print(f"| {name} | {steps} | {cpu.mean():.0f} ± {cpu.std():.0f} ({cpu.mean() / steps:.3f}) | "
              f"{wall.mean():.0f} ± {wall.std():.0f} | {np.mean(cpu / flow_cpu):.2f}x |")
    return {"scores": scores, "costs": costs}


if __name__ == "__main__":
    main()
