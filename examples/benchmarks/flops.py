"""Benchmark, not a test: achieved model FLOP/s of a SiT forward against plain matmul FLOP/s.

    python examples/benchmarks/flops.py [--model SiT-B/2] [--batch-size 8] [--size 2048] [--iters 5]
        [--threads 0] [--device cpu] [--compile]

Model FLOPs are counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` over one
forward (it counts matmuls, convolutions and attention, 2 FLOPs per multiply-add; elementwise
ops are not counted, so the figure is the useful "model FLOPs" of MFU). Achieved model FLOP/s =
counted FLOPs / fastest forward time (under ``torch.inference_mode``; bf16 under autocast).
The ceiling is the same machine's plain ``torch.mm`` of two n x n matrices, 2 n^3 / time, in the
same dtype. Utilisation = model FLOP/s / matmul FLOP/s. Forward and matmul take turns call by
call in one process, so the ratio holds even on a loaded machine.

``--compile`` adds rows for ``torch.compile`` of the same model (what ``sit train/sample --compile``
does): the FLOPs are the eager model's, the time the compiled one's; the build (minutes on a
CPU) happens in the warm-up call and is not timed.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from sitcli.models import SiT_models


def _best_times(fns: list, iters: int, device: str) -> list[float]:
    """Fastest of ``iters`` timed calls of each function, the functions taking turns call by call,
    so that a change of load on a shared machine hits all of them alike."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for fn in fns:
        fn()  # warm-up: allocator, kernels, oneDNN primitive cache
    best = [float("inf")] * len(fns)
    for _ in range(iters):
        for i, fn in enumerate(fns):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def measure(model: torch.nn.Module, batch_size: int, n: int, dtype: torch.dtype, iters: int, device: str,
            compiled: torch.nn.Module | None = None) -> tuple[float, float, float]:
    """(counted forward FLOPs, model FLOP/s, matmul FLOP/s) of ``model`` on 32x32x4 latents in ``dtype``;
    with ``compiled``, FLOPs are counted on ``model`` and the time is ``compiled``'s.

    Matmul FLOP/s of C = A B for n x n matrices: 2 n^3 / time.
    """
    x = torch.randn(batch_size, 4, model.input_size, model.input_size, device=device)
    t = torch.rand(batch_size, device=device)
    y = torch.randint(0, model.num_classes, (batch_size,), device=device)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)

    def forward(net: torch.nn.Module = model) -> None:
        with torch.inference_mode(), autocast:
            net(x, t, y)

    counter = FlopCounterMode(display=False)
    with counter:
        forward()
    flops = counter.get_total_flops()
    timed = forward if compiled is None else (lambda: forward(compiled))
    model_time, mm_time = _best_times([timed, lambda: torch.mm(a, b, out=out)], iters, device)
    return flops, flops / model_time, 2 * n**3 / mm_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SiT-B/2")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=2048, help="n of the n x n reference matmul")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0: torch's default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the model")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SiT_models[args.model](input_size=32, in_channels=4, num_classes=1000, learn_sigma=True).to(args.device)
    model.eval()
    print(f"{args.model}, batch {args.batch_size}, 32x32x4 latents, {args.device}, {torch.get_num_threads()} threads")
    print("| model | dtype | forward GFLOP | model GFLOP/s | matmul GFLOP/s | utilisation |\n|---|---|---|---|---|---|")
    variants = [("eager", None)] + ([("compile", torch.compile(model))] if args.compile else [])
    for label, compiled in variants:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            flops, achieved, peak = measure(model, args.batch_size, args.size, dtype, args.iters, args.device, compiled)
            print(f"| {label} | {name} | {flops / 1e9:.1f} | {achieved / 1e9:.1f} | {peak / 1e9:.1f} | "
                  f"{achieved / peak:.0%} |", flush=True)


if __name__ == "__main__":
    main()
