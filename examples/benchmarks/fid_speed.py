"""Benchmark, not a test: images/s and peak memory of `sit fid` against pytorch-fid on one folder.

    python examples/benchmarks/fid_speed.py FOLDER [--make 200] [--weights PATH] [--batch-size 50]
        [--num-workers 2] [--device cpu] [--repeats 1]

Both tools do the same job, the one `--save-stats` does: statistics (mean, covariance of the
2048-d pool features) of every image in FOLDER, written to an .npz. Each run is a fresh
subprocess, so its figures are its own:

- wall time: from before the network is built until the .npz is written (model build, image
  decoding, Inception, statistics); images/s = images / wall time;
- peak memory: ``ru_maxrss`` of the main process (DataLoader workers are separate processes
  and are not counted, for either tool).

`sit` also accumulates the 2023-d sFID statistics while saving (it always stores them); that is
included in its time. pytorch-fid holds every activation (N x 2048 float64, 16 KB per image);
`sit` holds fixed float64 sums (2048^2 + 2023^2 doubles, ~64 MB) whatever N is, so at a few
hundred images its peak can be the larger one; the difference reverses around 4,000 images.

Without --weights and without pytorch-fid's file in the torch hub cache, random weights are
written to a temporary file: speed and memory do not depend on the weight values.
With --make N, N random 64x64 PNGs are written to FOLDER first (it must not exist).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(tool: str, folder: str, weights: str, out: str, batch_size: int, num_workers: int, device: str) -> None:
    import numpy as np
    import torch

    start = time.perf_counter()
    if tool == "sit":
        from sitcli.evaluate import evaluate

        result = evaluate(folder, save_stats=out, inception_weights=weights, batch_size=batch_size,
                          num_workers=num_workers, device=device)
        count = result["inputs"]["A"]["num_images"]
    else:
        from unittest import mock

        import pytorch_fid.inception as pfi
        from pytorch_fid.fid_score import IMAGE_EXTENSIONS, compute_statistics_of_path

        state = torch.load(weights, map_location="cpu", weights_only=True)
        with mock.patch.object(pfi, "load_state_dict_from_url", return_value=state):
            model = pfi.InceptionV3([3]).to(device)
        mu, sigma = compute_statistics_of_path(folder, model, batch_size, 2048, device, num_workers)
        np.savez(out, mu=mu, sigma=sigma)
        count = sum(1 for p in Path(folder).iterdir() if p.suffix[1:] in IMAGE_EXTENSIONS)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"tool": tool, "images": count, "wall_s": wall, "peak_rss_mb": peak_mb}))


def _make_images(folder: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    for i in range(n):
        # Smooth colour gradients plus noise: cheap, varied, and compress like real PNGs.
        a, b, c = rng.uniform(0, 255, (3, 3))
        img = a * xx[..., None] + b * yy[..., None] + c * (1 - xx[..., None]) + rng.normal(0, 12, (64, 64, 3))
        Image.fromarray(np.clip(img / 2, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.png")


def _random_weights(path: Path) -> None:
    import torch

    from sitcli.evaluate.inception import FIDInceptionV3

    g = torch.Generator().manual_seed(0)
    state = {}
    for k, v in FIDInceptionV3().state_dict().items():
        if k.endswith("conv.weight"):
            state[k] = torch.randn(v.shape, generator=g) * math.sqrt(2.0 / v[0].numel())
        elif k.endswith("running_var") or k.endswith("bn.weight"):
            state[k] = torch.ones_like(v, dtype=torch.float32)
        else:
            state[k] = torch.zeros_like(v)
    torch.save(state, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--make", type=int, default=0, help="first write this many random 64x64 PNGs to FOLDER")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="runs per tool, alternating order; best time is kept")
    parser.add_argument("--child", nargs=2, metavar=("TOOL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        _child(args.child[0], str(args.folder), str(args.weights), args.child[1], args.batch_size,
               args.num_workers, args.device)
        return
    if args.make:
        _make_images(args.folder, args.make)
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None:
            from sitcli.evaluate.inception import default_weight_paths

            weights = default_weight_paths()[0]
            if not weights.is_file():
                weights = Path(tmp) / "random_inception.pth"
                _random_weights(weights)
                print(f"(no Inception weights found: using random weights in {weights})")
        runs: dict[str, list[dict]] = {"pytorch-fid": [], "sit": []}
        for r in range(args.repeats):
            order = ["pytorch-fid", "sit"] if r % 2 == 0 else ["sit", "pytorch-fid"]
            for tool in order:
                out = str(Path(tmp) / f"{tool}.npz")
                cmd = [sys.executable, __file__, str(args.folder), "--weights", str(weights), "--batch-size",
                       str(args.batch_size), "--num-workers", str(args.num_workers), "--device", args.device,
                       "--child", tool, out]
                line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                runs[tool].append(json.loads(line))
                last = runs[tool][-1]
                print(f"  run {r + 1} {tool:12s} {last['wall_s']:8.2f} s  {last['peak_rss_mb']:8.1f} MB")

        import numpy as np

        from sitcli.evaluate.metrics import frechet_distance

        with np.load(Path(tmp) / "sit.npz") as s, np.load(Path(tmp) / "pytorch-fid.npz") as p:
            mu_diff = float(np.abs(s["mu"] - p["mu"]).max())
            fid_between = frechet_distance(s["mu"], s["sigma"], p["mu"], p["sigma"])

    best = {tool: min(rs, key=lambda r: r["wall_s"]) for tool, rs in runs.items()}
    n = best["sit"]["images"]
    print(f"\n{n} images from {args.folder}, batch {args.batch_size}, {args.num_workers} workers, {args.device}")
    print(f"{'tool':12s} {'images/s':>10s} {'peak RSS MB':>12s}")
    for tool, r in best.items():
        print(f"{tool:12s} {r['images'] / r['wall_s']:10.2f} {r['peak_rss_mb']:12.1f}")
    speed = (n / best["sit"]["wall_s"]) / (best["pytorch-fid"]["images"] / best["pytorch-fid"]["wall_s"])
    memory = best["sit"]["peak_rss_mb"] / best["pytorch-fid"]["peak_rss_mb"]
    print(f"sit / pytorch-fid: speed x{speed:.2f}, peak memory x{memory:.2f}")
    print(f"agreement: max |mu difference| {mu_diff:.2e}, FID between the two statistics {fid_between:.2e}")


if __name__ == "__main__":
    main()
