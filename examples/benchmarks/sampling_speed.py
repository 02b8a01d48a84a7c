"""Benchmark, not a test: images/s and NFE of every sampler family, with and without guidance.

    python examples/benchmarks/sampling_speed.py [--model SiT-Ti/2] [--batch-size 8] [--steps 250]
        [--cfg-scale 1.5] [--threads 0] [--device cpu] [--grad-mode no_grad|inference_mode]

Samplers: ODE euler, heun and adams on a ``--steps`` grid, ODE dopri5 at atol 1e-6 / rtol 1e-3 (the
official default; its NFE depends on the field, not on ``--steps``), and the SDE Euler-Maruyama
with w = sigma and the "mean" last step (``--steps`` steps counting the last one). Each with the
plain conditional model and with ``ClassifierFreeGuidance`` (one batched forward of 2B rows per
call, counted as one NFE). NFE is the samplers' own count; images/s = batch / wall time of one
``sample_*`` call. Expected at 250 steps: ODE euler, adams and the SDE 250 NFE (one per step, the last
step included), ODE heun 500 (two per step).

A freshly initialised SiT outputs exactly zero (adaLN-Zero), which would make dopri5 take the
fewest possible steps; every weight is perturbed with N(0, 0.02^2) noise so that the field is a
generic one. Samplers run one after the other in one process, so their ratios hold even on a
loaded machine; the default model is small so that 250-step runs take seconds on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from sitcli.guidance import ClassifierFreeGuidance
from sitcli.models import SiT_models
from sitcli.transport import Transport, sample_ode, sample_sde


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SiT-Ti/2")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--cfg-scale", type=float, default=1.5)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0: torch's default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--grad-mode", default="no_grad", choices=("no_grad", "inference_mode"),
                        help="context around each sampler call (the samplers use no_grad inside either way)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    torch.manual_seed(0)
    model = SiT_models[args.model](input_size=32, in_channels=4, num_classes=1000, learn_sigma=True).to(device)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.eval().requires_grad_(False)
    transport = Transport("linear", "velocity", None, None, None, None)
    x0 = torch.randn(args.batch_size, 4, 32, 32, device=device)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    guided = ClassifierFreeGuidance(model, scale=args.cfg_scale, null_class=model.num_classes)
    samplers = {
        "ODE euler": lambda m: sample_ode(transport, m, x0, method="euler", steps=args.steps, model_kwargs={"y": y}),
        "ODE heun": lambda m: sample_ode(transport, m, x0, method="heun", steps=args.steps, model_kwargs={"y": y}),
        "ODE adams": lambda m: sample_ode(transport, m, x0, method="adams", steps=args.steps, model_kwargs={"y": y}),
        "ODE dopri5": lambda m: sample_ode(transport, m, x0, method="dopri5", atol=1e-6, rtol=1e-3,
                                           model_kwargs={"y": y}),
        "SDE euler-maruyama": lambda m: sample_sde(transport, m, x0, method="euler", steps=args.steps, w="sigma",
                                                   last_step="mean", model_kwargs={"y": y},
                                                   generator=torch.Generator(device).manual_seed(0)),
    }
    grad_mode = torch.inference_mode if args.grad_mode == "inference_mode" else contextlib.nullcontext
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with grad_mode():  # warm-up: allocator and kernel caches, not counted
        model(x0, torch.rand(args.batch_size, device=device), y)

    print(f"{args.model}, batch {args.batch_size}, 32x32x4 latents, {args.steps} steps, {device}, "
          f"{torch.get_num_threads()} threads, {args.grad_mode}")
    print("| sampler | guidance | NFE | NFE / step | images/s | ms / NFE |\n|---|---|---|---|---|---|")
    for name, run in samplers.items():
        for label, m in (("none", model), (f"cfg {args.cfg_scale:g}", guided)):
            sync()
            start = time.perf_counter()
            with grad_mode():
                x, nfe = run(m)
            sync()
            seconds = time.perf_counter() - start
            per_step = "-" if "dopri5" in name else f"{nfe / args.steps:.2f}"
            print(f"| {name} | {label} | {nfe} | {per_step} | {args.batch_size / seconds:.2f} | "
                  f"{1000 * seconds / nfe:.1f} |", flush=True)


if __name__ == "__main__":
    main()
