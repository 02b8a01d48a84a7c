"""Benchmark, not a test: images/s and peak memory of `sit fid` against pytorch-fid on one folder.

    python examples/benchmarks/fid_speed.py FOLDER [--make 1000] [--sizes 200] [--weights PATH]
        [--batch-size 50] [--num-workers 2] [--device cpu] [--repeats 1]

Three runs do the same job, the one `--save-stats` does: pytorch-fid, `sit fid` (bit-for-bit the
plain network) and `sit fid --fast` (batch norm folded, channels-last) compute statistics (mean,
covariance of the 2048-d pool features) of every image in FOLDER and write them to an .npz.
Each run is a fresh subprocess, so its figures are its own:

- wall time: from before the network is built until the .npz is written (model build, image
  decoding, Inception, statistics); images/s = images / wall time;
- peak memory: ``ru_maxrss`` of the main process (DataLoader workers are separate processes
  and are not counted, for either tool).

`sit` also accumulates the 2023-d sFID statistics while saving (it always stores them); that is
included in its time. pytorch-fid holds every activation (N x 2048 float64, 16 KB per image);
`sit` holds fixed float64 sums (2048^2 + 2023^2 doubles, ~64 MB) whatever N is, so at a few
hundred images its peak can be the larger one. ``--sizes`` also runs every tool on the first N
images and prints how peak memory grows per 1,000 images.

``--memory-trace`` runs only sit's pipeline (decoding workers, streamed statistics) with a
stand-in for Inception that returns random features at once, and prints the resident memory
every 1,000 images: thousands of images in a minute, to see whether anything grows with N
(point FOLDER at a folder of links to repeat a small set).

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
    if tool in ("sit", "sit --fast"):
        from sitcli.evaluate import FidConfig, evaluate

        result = evaluate(
            FidConfig(
                folder,
                save_stats=out,
                inception_weights=weights,
                batch_size=batch_size,
                num_workers=num_workers,
                fast=tool == "sit --fast",
                overwrite=True,
            ),
            device=device,
        )  # the repeats replace the same temporary file
        count = result.inputs["A"]["num_images"]
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


TOOLS = ("pytorch-fid", "sit", "sit --fast")


def _memory_trace(folder: str, batch_size: int, num_workers: int) -> None:
    import torch

    from sitcli.evaluate import inception, inputs, suite

    def resident_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    class StandIn(torch.nn.Module):
        def forward(self, images, outputs):
            n = images.shape[0]
            return {"pool": torch.randn(n, inception.POOL_DIM), "spatial": torch.randn(n, inception.SPATIAL_DIM)}

    def progress(label: str, done: int, total: int) -> None:
        if done % 1000 == 0 or done == total:
            print(f"{done:7d} images  resident {resident_mb():7.0f} MB", flush=True)

    suite._summarise(
        inputs.open_source(folder),
        "A",
        StandIn(),
        torch.device("cpu"),
        gaussian=True,
        spatial=True,
        keep_pool=False,
        is_splits=None,
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
    )


def _subset(folder: Path, n: int, root: Path) -> Path:
    """A folder of links to the first n images of folder (both tools read links as files)."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if n > len(files):
        raise SystemExit(f"--sizes {n}: {folder} has only {len(files)} images")
    sub = root / f"first-{n}"
    sub.mkdir()
    for p in files[:n]:
        (sub / p.name).symlink_to(p.resolve())
    return sub


def _run(tool: str, folder: Path, weights: Path, out: Path, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        str(folder),
        "--weights",
        str(weights),
        "--batch-size",
        str(args.batch_size),
        "--num-workers",
        str(args.num_workers),
        "--device",
        args.device,
        "--child",
        tool,
        str(out),
    ]
    line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--make", type=int, default=0, help="first write this many random 64x64 PNGs to FOLDER")
    parser.add_argument(
        "--sizes",
        default="",
        help="comma list of image counts to also run on (the first N "
        "images of FOLDER), to show how peak memory grows with N",
    )
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="runs per tool, rotating the order; best time is kept")
    parser.add_argument("--memory-trace", action="store_true", help="only trace sit's memory with a stand-in network")
    parser.add_argument("--child", nargs=2, metavar=("TOOL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        _child(
            args.child[0],
            str(args.folder),
            str(args.weights),
            args.child[1],
            args.batch_size,
            args.num_workers,
            args.device,
        )
        return
    if args.make:
        _make_images(args.folder, args.make)
    if args.memory_trace:
        _memory_trace(str(args.folder), args.batch_size, args.num_workers)
        return
    import numpy as np

    from sitcli.evaluate.metrics import frechet_distance

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None:
            from sitcli.evaluate.inception import default_weight_paths

            weights = default_weight_paths()[0]
            if not weights.is_file():
                weights = Path(tmp) / "random_inception.pth"
                _random_weights(weights)
                print(f"(no Inception weights found: using random weights in {weights})")
        folders = [_subset(args.folder, int(n), Path(tmp)) for n in args.sizes.split(",") if n] + [args.folder]
        best: dict[tuple[str, int], dict] = {}
        agreement = {}
        for folder in folders:
            for r in range(args.repeats):
                order = TOOLS[r % len(TOOLS) :] + TOOLS[: r % len(TOOLS)]
                for tool in order:
                    run = _run(tool, folder, weights, Path(tmp) / f"{tool}.npz", args)
                    print(
                        f"  {run['images']:6d} images, run {r + 1}: {tool:12s} {run['wall_s']:8.2f} s "
                        f"{run['peak_rss_mb']:8.1f} MB"
                    )
                    key = (tool, run["images"])
                    if key not in best or run["wall_s"] < best[key]["wall_s"]:
                        best[key] = run
            with np.load(Path(tmp) / "pytorch-fid.npz") as p:
                for tool in TOOLS[1:]:
                    with np.load(Path(tmp) / f"{tool}.npz") as s:
                        agreement[tool] = (
                            float(np.abs(s["mu"] - p["mu"]).max()),
                            float(np.abs(s["sigma"] - p["sigma"]).max()),
                            frechet_distance(s["mu"], s["sigma"], p["mu"], p["sigma"]),
                        )

    sizes = sorted({n for _, n in best})
    print(f"\nbatch {args.batch_size}, {args.num_workers} workers, {args.device}; best of {args.repeats}")
    print(
        f"{'images':>7s} {'tool':12s} {'images/s':>9s} {'x pytorch-fid':>14s} {'peak RSS MB':>12s} "
        f"{'x pytorch-fid':>14s}"
    )
    for n in sizes:
        ref = best[("pytorch-fid", n)]
        for tool in TOOLS:
            r = best[(tool, n)]
            print(
                f"{n:7d} {tool:12s} {n / r['wall_s']:9.2f} {ref['wall_s'] / r['wall_s']:14.2f} "
                f"{r['peak_rss_mb']:12.1f} "
                f"{r['peak_rss_mb'] / ref['peak_rss_mb']:14.2f}"
            )
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        print(
            f"peak memory growth from {lo} to {hi} images, MB per 1,000 images (peaks of identical runs "
            f"differ by up to ~150 MB on CPU: compare with --repeats, or use --memory-trace):"
        )
        for tool in TOOLS:
            grow = (best[(tool, hi)]["peak_rss_mb"] - best[(tool, lo)]["peak_rss_mb"]) / (hi - lo) * 1000
            print(f"  {tool:12s} {grow:8.1f}")
    for tool, (mu_diff, sigma_diff, fid_between) in agreement.items():
        print(
            f"{tool} vs pytorch-fid ({sizes[-1]} images): max |mu difference| {mu_diff:.2e}, max |sigma "
            f"difference| {sigma_diff:.2e}, FID between the two statistics {fid_between:.2e}"
        )


if __name__ == "__main__":
    main()
