"""Benchmark, not a test: the figures a lent GPU should give first, in one run of a few minutes.

    python examples/benchmarks/gpu.py [--model SiT-XL/2] [--batch-size 32] [--iters 10]
        [--sample-batch 32] [--sample-steps 250] [--cfg-scale 1.5] [--fid-images 1000]
        [--compile-backend inductor] [--device cuda] [--tiny]

Prints four tables (markdown), each row measured in this one process:

1. the device and its peak dense bf16 tensor FLOP/s, read from the device name (``PEAK_BF16``:
   NVIDIA's datasheets; their figures "with sparsity" halved), else "unknown"; beside it the
   measured bf16 FLOP/s of one large matmul, the ceiling this machine really reaches;
2. training: ``--model`` on 32x32x4 latents (256x256 images through the SD VAE), per-GPU batch
   ``--batch-size``, bf16 autocast, sit's own step (``training.loop.step_loss`` + ``step_update``,
   AdamW, EMA), eager and ``torch.compile``, each with and without activation checkpointing
   (``--grad-checkpointing``). Model FLOPs per step are counted (``FlopCounterMode`` over one
   forward + backward: matmuls, convolutions, attention; 2 per multiply-add); the recomputed
   forward of checkpointing is not counted, as MFU does not count it. MFU = model FLOPs / step
   time / peak. Step time: the median of ``--iters`` steps after the warm-up (which holds the
   compile, reported as "first step"); peak memory: ``torch.cuda.max_memory_allocated``;
3. sampling: images/s of the SDE (Euler-Maruyama, w = sigma, "mean" last step) at
   ``--sample-steps`` steps with classifier-free guidance (one forward of 2B rows per step), bf16,
   on latents (the VAE decode, about 1% of the cost at 250 steps, is not included);
4. `sit fid`: images/s of Inception statistics (``evaluate`` with ``save_stats``, the job
   ``sit fid A --save-stats`` does) on ``--fid-images`` random 256x256 images, plain (true
   float32, the default), ``--fast``, and ``--fast --tf32``. Random Inception weights: speed does not
   depend on their values.

``--tiny`` runs the same code on a tiny model, batch and image count in seconds on a CPU (what
``tests/test_benchmarks.py`` does, with ``--compile-backend eager`` to skip code generation).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from sitcli.guidance import ClassifierFreeGuidance
from sitcli.models import SiT_models
from sitcli.runtime import autocast_model, tf32
from sitcli.training.loop import step_loss, step_update
from sitcli.training.losses import RegressionLoss
from sitcli.transport import Transport, sample_sde

# Peak dense bf16 tensor-core TFLOP/s by device name, first match wins (so "H100 PCIe" before "H100").
# From NVIDIA's datasheets, which print these figures "with sparsity", i.e. twice the dense ones.
PEAK_BF16 = (
    ("H200 NVL", 835.0, "NVIDIA H200 NVL datasheet: 1,671 TFLOPS with sparsity"),
    ("H200", 989.5, "NVIDIA H200 SXM datasheet: 1,979 TFLOPS with sparsity"),
    ("H100 NVL", 835.0, "NVIDIA H100 NVL datasheet: 1,671 TFLOPS with sparsity"),
    ("H100 PCIe", 756.5, "NVIDIA H100 PCIe datasheet: 1,513 TFLOPS with sparsity"),
    ("H100", 989.5, "NVIDIA H100 SXM datasheet: 1,979 TFLOPS with sparsity"),
    ("GH200", 989.5, "NVIDIA GH200 datasheet: 1,979 TFLOPS with sparsity"),
    ("B200", 2250.0, "NVIDIA HGX B200: 4.5 PFLOPS FP16/BF16 with sparsity per GPU"),
    ("A100", 312.0, "NVIDIA A100 datasheet: 312 TFLOPS dense (624 with sparsity), SXM and PCIe"),
    ("L40S", 362.05, "NVIDIA L40S datasheet: 362.05 TFLOPS dense (733 with sparsity)"),
    ("L4", 121.0, "NVIDIA L4 datasheet: 242 TFLOPS with sparsity"),
    ("A10", 125.0, "NVIDIA A10 datasheet: 125 TFLOPS dense (250 with sparsity)"),
)


def peak_bf16(device: torch.device) -> tuple[float | None, str]:
    """(peak dense bf16 FLOP/s, where the figure comes from) of ``device``; (None, why) when unknown."""
    if device.type != "cuda":
        return None, "unknown: not a CUDA device"
    name = torch.cuda.get_device_name(device)
    for pattern, tflops, source in PEAK_BF16:
        if pattern in name:
            return tflops * 1e12, source
    return None, f"unknown: {name!r} is not in PEAK_BF16"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _matmul_flops(device: torch.device, n: int, iters: int = 5) -> float:
    """Measured bf16 FLOP/s of an n x n matmul, 2 n^3 / fastest time."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    best = float("inf")
    for _ in range(iters + 1):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _model(name: str, size: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = SiT_models[name](input_size=size, in_channels=4, num_classes=1000, learn_sigma=True).to(device)
    with torch.no_grad():  # adaLN-Zero starts at the identity; a generic field for the samplers
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def training(args, device: torch.device, peak: float | None) -> None:
    import copy

    model = _model(args.model, args.size, device).train()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    transport = Transport("linear", "velocity", None, None, None, None)
    terms = [RegressionLoss(transport)]
    x = torch.randn(args.batch_size, 4, args.size, args.size, device=device)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    noise = torch.Generator(device).manual_seed(0)
    precision = torch.autocast(device.type, dtype=torch.bfloat16)
    compiled = torch.compile(model, backend=args.compile_backend)

    def step(net) -> None:
        loss, _ = step_loss(net, transport, terms, x, y, noise, precision)
        step_update(loss, model, ema, opt, 0.9999)

    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = step_loss(model, transport, terms, x, y, noise, precision)
        loss.backward()
    flops = counter.get_total_flops()
    opt.zero_grad(set_to_none=True)
    print(f"\n{args.model}, batch {args.batch_size} per GPU, {args.size}x{args.size}x4 latents, bf16 autocast; "
          f"{flops / args.batch_size / 1e9:.4g} GFLOP per image per step (forward + backward, counted)")
    print("| variant | images/s | step (ms) | model TFLOP/s | MFU | first step (s) | peak memory (GiB) |\n"
          "|---|---|---|---|---|---|---|")
    for label, net, checkpointed in (("eager", model, False), ("eager, checkpointed", model, True),
                                     ("compiled", compiled, False), ("compiled, checkpointed", compiled, True)):
        model.grad_checkpointing = checkpointed
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        start = time.perf_counter()
        step(net)  # warm-up; holds the compile
        _sync(device)
        first = time.perf_counter() - start
        times = []
        for _ in range(args.iters):
            start = time.perf_counter()
            step(net)
            _sync(device)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        achieved = flops / seconds
        mfu = f"{achieved / peak:.1%}" if peak else "unknown peak"
        memory = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}" if device.type == "cuda" else "-"
        print(f"| {label} | {args.batch_size / seconds:.1f} | {1000 * seconds:.1f} | {achieved / 1e12:.3g} | {mfu} | "
              f"{first:.1f} | {memory} |", flush=True)
    model.grad_checkpointing = False


def sampling(args, device: torch.device) -> None:
    model = _model(args.model, args.size, device).eval().requires_grad_(False)
    transport = Transport("linear", "velocity", None, None, None, None)
    fn = ClassifierFreeGuidance(autocast_model(model, "bf16", device), args.cfg_scale, null_class=model.num_classes)
    x0 = torch.randn(args.sample_batch, 4, args.size, args.size, device=device)
    y = torch.randint(0, 1000, (args.sample_batch,), device=device)

    def draw(steps: int) -> int:
        _, nfe = sample_sde(transport, fn, x0, "euler", steps, "sigma", 1.0, "mean", 0.04,
                            generator=torch.Generator(device).manual_seed(0), model_kwargs={"y": y})
        return nfe

    draw(2)  # warm-up: kernels, allocator
    _sync(device)
    start = time.perf_counter()
    nfe = draw(args.sample_steps)
    _sync(device)
    seconds = time.perf_counter() - start
    print(f"\nsampling {args.model}: SDE euler, {args.sample_steps} steps, cfg {args.cfg_scale:g} "
          f"(2 x {args.sample_batch} rows per forward), bf16, batch {args.sample_batch}")
    print("| images/s | NFE | ms per NFE | s per 50,000 images |\n|---|---|---|---|")
    print(f"| {args.sample_batch / seconds:.2f} | {nfe} | {1000 * seconds / nfe:.1f} | "
          f"{50_000 * seconds / args.sample_batch:.0f} |", flush=True)


def fid(args, device: torch.device) -> None:
    from sitcli import atomic
    from sitcli.evaluate import FidConfig, evaluate
    from sitcli.evaluate.inception import PYTORCH_FID_FILE, FIDInceptionV3

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / PYTORCH_FID_FILE
        torch.save(FIDInceptionV3().state_dict(), weights)  # its own random init: speed is the same
        images = Path(tmp) / "images.npz"
        rng = np.random.default_rng(0)
        shape = (args.fid_images, args.fid_size, args.fid_size, 3)
        atomic.save_npz(images, arr_0=rng.integers(0, 256, shape, dtype=np.uint8))
        print(
            f"\nsit fid: statistics of {args.fid_images} random {args.fid_size}x{args.fid_size} images "
            f"(batch {args.fid_batch})"
        )
        print("| variant | images/s |\n|---|---|")
        for label, fast, with_tf32 in (
            ("plain (true fp32)", False, False),
            ("--fast", True, False),
            ("--fast --tf32", True, True),
        ):
            result = evaluate(
                FidConfig(
                    images,
                    save_stats=Path(tmp) / "stats.npz",
                    inception_weights=weights,
                    batch_size=args.fid_batch,
                    num_workers=0,
                    fast=fast,
                    tf32=with_tf32,
                    overwrite=True,
                ),
                device=device,
            )  # the variants replace one temporary file
            print(f"| {label} | {args.fid_images / result.settings['feature_seconds']:.3g} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SiT-XL/2")
    parser.add_argument("--size", type=int, default=32, help="latent side (32: 256x256 images)")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch per GPU")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--sample-batch", type=int, default=32)
    parser.add_argument("--sample-steps", type=int, default=250)
    parser.add_argument("--cfg-scale", type=float, default=1.5)
    parser.add_argument("--fid-images", type=int, default=1000)
    parser.add_argument("--fid-size", type=int, default=256)
    parser.add_argument("--fid-batch", type=int, default=200)
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: trace only)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and a few images, on any device: seconds")
    args = parser.parse_args()
    if args.tiny:
        args.model, args.size, args.batch_size, args.iters = "SiT-Ti/4", 8, 2, 1
        args.sample_batch, args.sample_steps, args.fid_images, args.fid_size, args.fid_batch = 2, 3, 2, 32, 2
    device = torch.device(args.device)
    began = time.perf_counter()
    peak, source = peak_bf16(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    n = 8192 if device.type == "cuda" else 256
    measured = _matmul_flops(device, n)
    print(f"device: {name}; torch {torch.__version__}")
    print("| peak dense bf16 (datasheet) | source | measured bf16 matmul | measured / peak |\n|---|---|---|---|")
    ratio = f"{measured / peak:.0%}" if peak else "-"
    print(
        f"| {f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown'} | {source} | "
        f"{measured / 1e12:.3g} TFLOP/s ({n}x{n}) | {ratio} |",
        flush=True,
    )
    with tf32(True):  # as sit train and sit sample run (the bf16 rows hardly use it)
        training(args, device, peak)
        sampling(args, device)
    fid(args, device)
    print(f"\ntotal {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
