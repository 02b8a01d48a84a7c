"""Post-hoc EMA on the digits: EMAs of several widths rebuilt after training, beside the fixed EMA and raw weights.

For each seed, one digits run with the quickstart's settings (SiT-Ti/4, batch 128, lr 1e-3, EMA decay 0.995)
for ``--steps`` steps, with post-hoc EMA snapshots every ``--every`` steps of EDM2's two widths 0.05 and 0.10
(``sit train --ema-snapshots-every``). After training, ``sit ema`` rebuilds the EMA of each width of
``--widths`` at the last step from those snapshots (``sitcli.ema.reconstruct``), and every variant, raw weights,
the fixed EMA and each rebuilt width, draws ``--num`` samples with ``sit sample``'s defaults (adams, 50 steps)
and balanced labels (``--labels balanced``), the same noise for all. Scores: ``sitcli.evaluate.digits``
(Fréchet distance, precision and recall in a digit classifier's features, and an SVM's accuracy on raw pixels),
mean ± std over the seeds, with the real-vs-real floors.

Cost, measured in the runs themselves: the seconds spent updating the trackers and writing the snapshots
(``training.loop.update_posthoc_ema``, timed around each call) against the whole training time, as the ratio
(step time with them) / (step time without them); and the snapshots' bytes on disk beside one checkpoint's.
Runs and sample folders already in ``--root`` are reused.

    python examples/posthoc_ema_digits.py [--root runs/posthoc] [--steps 1000] [--every 50] [--seeds 3]
        [--num 900] [--widths 0.03 0.05 0.075 0.1 0.15 0.2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sitcli import runs
from sitcli.config import TrainConfig
from sitcli.sample_config import SampleConfig
from sitcli.ema import EmaConfig, reconstruct
from sitcli.evaluate.digits import DigitsJudge
from sitcli.sample import sample
from sitcli.training import loop, train


def trained(root: Path, seed: int, steps: int, every: int) -> tuple[Path, dict]:
    """The run (trained here unless it is there) and its cost: training seconds, of which post-hoc EMA seconds."""
    out = root / f"seed{seed}"
    cost = out / "cost.json"
    if runs.latest_checkpoint(out) is None or not cost.is_file():
        spent = [0.0]
        update = loop.update_posthoc_ema

        def timed(p):
            began = time.perf_counter()
            update(p)
            spent[0] += time.perf_counter() - began

        loop.update_posthoc_ema = timed
        print(f"training {out}", flush=True)
        began = time.perf_counter()
        try:
            train(TrainConfig(data="digits", out=str(out), steps=steps, seed=seed, sample_every=0, ckpt_every=steps,
                              ema_snapshots_every=every), progress=False)
        finally:
            loop.update_posthoc_ema = update
        cost.write_text(json.dumps({"seconds": time.perf_counter() - began, "posthoc_seconds": spent[0]}))
    return out, json.loads(cost.read_text())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def drawn(ckpt: Path, out: Path, num: int, ema: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``num`` samples of ``ckpt`` (balanced labels, seed 0) as (N, 8, 8) grey levels in [0, 1], and their labels."""
    sample(SampleConfig(ckpt=str(ckpt), out=str(out), ema=ema, num=num, batch_size=300, labels="balanced",
                        threads=1), progress=False)
    rows = (out / "labels.csv").read_text().splitlines()[1:]
    labels = np.array([int(r.split(",")[1]) for r in rows])
    images = np.stack([np.asarray(Image.open(out / f"{i:06d}.png"), dtype=np.float64) / 255 for i in range(num)])
    return images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("runs/posthoc"))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--num", type=int, default=900)
    parser.add_argument("--widths", type=float, nargs="+", default=[0.03, 0.05, 0.075, 0.1, 0.15, 0.2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    judge = DigitsJudge.default()
    rows = ["raw weights", "EMA 0.995 (fixed)", *(f"sigma_rel {w:g}" for w in args.widths)]
    scores: dict[str, list] = {row: [] for row in rows}
    fits: dict[str, list] = {row: [] for row in rows}
    costs, disk = [], []
    for seed in range(args.seeds):
        run, cost = trained(args.root, seed, args.steps, args.every)
        costs.append(cost)
        checkpoint = runs.latest_checkpoint(run)
        disk.append((folder_bytes(run / runs.SNAPSHOTS), (checkpoint / "ema.safetensors").stat().st_size,
                     len(runs.list_ema_snapshots(run))))
        variants = [("raw weights", run, False), ("EMA 0.995 (fixed)", run, True)]
        for w in args.widths:
            out = args.root / f"seed{seed}-ema{w:g}"
            if runs.latest_checkpoint(out) is None:
                reconstruct(EmaConfig(str(run), w, str(out)))
            state = runs.load_checkpoint(runs.latest_checkpoint(out))["state"]["posthoc_ema"]
            fits[f"sigma_rel {w:g}"].append(state["fit_error"])
            variants.append((f"sigma_rel {w:g}", out, True))
        for row, ckpt, ema in variants:
            name = row.replace(" ", "-").replace("(", "").replace(")", "")
            images, labels = drawn(ckpt, args.root / "samples" / f"seed{seed}-{name}", args.num, ema)
            s = judge.score(images, labels)
            scores[row].append((s.fd, s.precision, s.recall, s.accuracy))
            print(f"seed {seed} {row}: FD {s.fd:.2f} precision {s.precision:.3f} recall {s.recall:.3f}", flush=True)
    floor = judge.score(judge.images[judge.other[: args.num]], judge.labels[judge.other[: args.num]])
    print(f"\n{args.seeds} seeds, {args.steps} training steps each, snapshots of 0.05 and 0.10 every {args.every} "
          f"steps; {args.num} samples per row (balanced labels, adams 50 steps); mean ± std over seeds")
    print("| weights | profile fit error | FD (features) | precision | recall | SVM accuracy |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        fit = f"{np.mean(fits[row]):.2%}" if fits[row] else "-"
        cells = " | ".join(f"{np.mean(v):.3g} ± {np.std(v):.2g}" for v in zip(*scores[row]))
        print(f"| {row} | {fit} | {cells} |")
    print(f"| real digits (other half) | - | {floor.fd_floor:.3g} | {floor.precision_floor:.3g} | "
          f"{floor.recall_floor:.3g} | {floor.accuracy_floor:.3g} |")
    ratio = np.array([c["seconds"] / (c["seconds"] - c["posthoc_seconds"]) for c in costs])
    per_step = np.array([c["posthoc_seconds"] / args.steps * 1e3 for c in costs])
    print(f"time per step with the snapshots / without: {ratio.mean():.4f} ± {ratio.std():.2g} "
          f"({per_step.mean():.2f} ms of post-hoc EMA work per step)")
    snap_bytes, weights_bytes, count = disk[0]
    print(f"disk: {count} snapshot files, {snap_bytes / 2**20:.1f} MiB = {snap_bytes / weights_bytes:.1f} x one "
          f"checkpoint's EMA weights ({weights_bytes / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
