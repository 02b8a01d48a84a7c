"""Benchmark, not a test: training-step images/s and peak memory of SiT on 32x32x4 latents.

    python examples/benchmarks/train_speed.py [--models SiT-S/2,SiT-B/2] [--batch-size 8] [--iters 6]
        [--threads 0] [--device cpu] [--compile] [--variants ...] [--only timing|memory]

Variants:

- ``plain fp32``: a reference loop written here with nothing from sit but the model:
  x_t = t x1 + (1 - t) eps, loss = mean |model(x_t, t, y) - (x1 - eps)|^2, AdamW step, EMA update;
- ``sit fp32``: sit's own training step, ``training.loop.step_loss`` + ``step_update`` (the two
  halves of the loop in ``sit train``), with the optimiser ``sit train`` builds (AdamW, torch's
  defaults: a loop over the parameters on CPU, ``foreach`` on CUDA);
- ``sit bf16``: the same under bf16 autocast (``--precision bf16``);
- ``sit fp32 foreach adamw`` / ``sit fp32 fused adamw``: AdamW with ``foreach=True`` (bit-for-bit
  the same weights as the loop) / ``fused=True`` (not bit-identical: ~3e-8 differences);
- ``sit fp32 checkpointed`` / ``sit bf16 checkpointed``: with activation checkpointing of the
  blocks (``--grad-checkpointing``): each block's activations are recomputed in the backward pass;
- ``sit fp32 meanflow`` / ``sit bf16 meanflow``: a step of the mean-flow objective (``--objective meanflow``)
  on the same architecture with its second time embedder: the ordinary forward and backward plus
  one forward-mode JVP without gradients (math attention kernel); ``sit fp32 meanflow cfg`` adds
  the folded guidance (``--meanflow-omega 2``), one more forward without gradients;
- ``sit fp32 compile`` / ``sit bf16 compile`` (only with ``--compile``): ``torch.compile`` of the
  model (``--compile``); build time is reported separately and not in images/s. On a CPU the first
  compile of a B/2 forward + backward takes minutes, which is why it is behind a flag.

Timing: all variants share one model in one process (each has its own optimiser) and take turns
step by step after one untimed step each, so that a change in the machine's load hits all of them
alike; images/s = batch size / fastest step (the median in brackets). On a shared machine wall
time swings with the other jobs; images/CPU-s = batch size / median CPU time of this process per
step (all its threads), which other jobs disturb far less (OpenMP spin-waits are counted in it).
Peak memory: each variant
alone for two steps in a fresh subprocess; on CPU its peak resident set (VmHWM) (it includes the ~0.7 GB of an imported
torch, printed as "base"), on CUDA ``torch.cuda.max_memory_allocated``; "above base vs sit fp32" is
(peak - base) over the same for ``sit fp32``: the memory the step itself (weights, optimiser state,
activations) takes.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = (
    "plain fp32",
    "sit fp32",
    "sit bf16",
    "sit fp32 foreach adamw",
    "sit fp32 fused adamw",
    "sit fp32 checkpointed",
    "sit bf16 checkpointed",
    "sit fp32 meanflow",
    "sit bf16 meanflow",
    "sit fp32 meanflow cfg",
)
COMPILED = ("sit fp32 compile", "sit bf16 compile")


def _rss_mb() -> float:
    """Peak resident memory of this process in MiB."""
    try:  # VmHWM starts afresh at exec; ru_maxrss would carry over the forking parent's peak
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def _steps(variants: list[str], model_name: str, batch_size: int, device: str) -> dict:
    """One step function per variant; all share one model and EMA (each has its own optimiser)."""
    import torch

    from sitcli.models import SiT_models
    from sitcli.training.losses import MeanFlowLoss, RegressionLoss
    from sitcli.training.loop import step_loss, step_update
    from sitcli.transport import Transport

    torch.manual_seed(0)
    model = SiT_models[model_name](input_size=32, in_channels=4, num_classes=1000, learn_sigma=True).to(device)
    model.train()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    decay = 0.9999
    x1 = torch.randn(batch_size, 4, 32, 32, device=device)
    y = torch.randint(0, 1000, (batch_size,), device=device)
    transport = Transport("linear", "velocity", None, None, None, None)
    terms = [RegressionLoss(transport)]
    noise = torch.Generator(device).manual_seed(0)
    compiled = None
    mean_flow = {}  # one mean-flow model (the same architecture plus r_embedder), built when a variant needs it

    def make(variant: str):
        nonlocal compiled
        opt_kwargs = {"foreach": True} if "foreach" in variant else {"fused": True} if "fused" in variant else {}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, **opt_kwargs)
        autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled="bf16" in variant)
        net = model
        if "compile" in variant:
            if compiled is None:  # a compiled module has no truth value (it forwards __len__)
                compiled = torch.compile(model)
            net = compiled

        def plain_step() -> None:
            t = torch.rand(batch_size, device=device)
            eps = torch.randn_like(x1)
            tb = t.view(-1, 1, 1, 1)
            x_t = tb * x1 + (1 - tb) * eps
            loss = (model(x_t, t, y) - (x1 - eps)).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for p_ema, p in zip(ema.parameters(), model.parameters()):
                    p_ema.lerp_(p, 1 - decay)

        if "meanflow" in variant:
            if not mean_flow:
                torch.manual_seed(0)
                mf = (
                    SiT_models[model_name](
                        input_size=32, in_channels=4, num_classes=1000, learn_sigma=True, mean_flow=True
                    )
                    .to(device)
                    .train()
                )
                mean_flow.update(model=mf, ema=copy.deepcopy(mf).requires_grad_(False).eval())
            mf, mf_ema = mean_flow["model"], mean_flow["ema"]
            mf_opt = torch.optim.AdamW(mf.parameters(), lr=1e-4, weight_decay=0.0)
            mf_terms = [MeanFlowLoss(mf, transport, 0.25, 1.0, 1e-3, 2.0 if "cfg" in variant else 1.0)]

            def meanflow_step() -> None:
                loss, _ = step_loss(mf, transport, mf_terms, x1, y, noise, autocast)
                step_update(loss, mf, mf_ema, mf_opt, decay)

            return meanflow_step

        def sit_step() -> None:
            model.grad_checkpointing = "checkpointed" in variant  # the variants share one model
            loss, _ = step_loss(net, transport, terms, x1, y, noise, autocast)
            step_update(loss, model, ema, opt, decay)

        return plain_step if variant.startswith("plain") else sit_step

    return {variant: make(variant) for variant in variants}


def _time_interleaved(variants: list[str], model_name: str, batch_size: int, iters: int, device: str) -> dict:
    """Step times, variants taking turns step by step, so that a change of load hits all of them alike."""
    import torch

    steps = _steps(variants, model_name, batch_size, device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    first, times, cpu = {}, {v: [] for v in variants}, {v: [] for v in variants}
    for variant, step in steps.items():
        start = time.perf_counter()
        step()  # the first step builds a compiled model and warms caches
        sync()
        first[variant] = time.perf_counter() - start
    for _ in range(iters):
        for variant, step in steps.items():
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            sync()
            times[variant].append(time.perf_counter() - start)
            cpu[variant].append(time.process_time() - start_cpu)
    return {
        v: {
            "images_per_s": batch_size / min(times[v]),
            "median_images_per_s": batch_size / statistics.median(times[v]),
            "images_per_cpu_s": batch_size / statistics.median(cpu[v]),
            "first_step_s": first[v],
        }
        for v in variants
    }


def _peak_memory(variant: str, model_name: str, batch_size: int, device: str) -> dict:
    """Peak memory of two steps of one variant alone (run in a fresh subprocess)."""
    import torch

    base = _rss_mb()
    step = _steps([variant], model_name, batch_size, device)[variant]
    step()
    step()
    if device.startswith("cuda"):
        return {"peak_mb": torch.cuda.max_memory_allocated() / 2**20, "base_mb": 0.0}
    return {"peak_mb": _rss_mb(), "base_mb": base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="SiT-S/2,SiT-B/2")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0: torch's default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to build on a CPU)")
    parser.add_argument("--variants", default=None, help="comma-separated subset of the variants")
    parser.add_argument("--only", choices=("timing", "memory"), default=None, help="run one half of the benchmark")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child is not None:
        spec = json.loads(args.child)
        print(json.dumps(_peak_memory(spec["variant"], spec["model"], args.batch_size, args.device)))
        return

    variants = args.variants.split(",") if args.variants else [*VARIANTS, *(COMPILED if args.compile else ())]
    common = ["--batch-size", str(args.batch_size), "--threads", str(args.threads), "--device", args.device]
    for model in args.models.split(","):
        if args.only == "memory":
            results = {v: {} for v in variants}
        else:
            results = _time_interleaved(variants, model, args.batch_size, args.iters, args.device)
        for variant in variants if args.only != "timing" else ():
            spec = json.dumps({"variant": variant, "model": model})
            done = subprocess.run([sys.executable, __file__, "--child", spec, *common], capture_output=True, text=True)
            if done.returncode:
                print(f"{model} {variant}: memory run failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            results[variant].update(json.loads(done.stdout.strip().splitlines()[-1]))
        ref = results["sit fp32"] if "sit fp32" in results else None
        print(
            f"\n{model}, batch {args.batch_size}, 32x32x4 latents, {args.device}, {torch.get_num_threads()} threads, "
            + (f"best (median) of {args.iters} interleaved steps, " if args.only != "memory" else "")
            + f"load average {os.getloadavg()[0]:.1f}"
        )
        print(
            "| variant | images/s | vs sit fp32 | images/CPU-s | vs sit fp32 | first step (s) | peak MB (base) "
            "| above base vs sit fp32 |\n|---|---|---|---|---|---|---|---|"
        )
        for variant, r in results.items():
            speed, ratio, cpu, cpu_ratio, first = "-", "-", "-", "-", "-"
            if "images_per_s" in r:
                speed, first = f"{r['images_per_s']:.2f} ({r['median_images_per_s']:.2f})", f"{r['first_step_s']:.1f}"
                cpu = f"{r['images_per_cpu_s']:.2f}"
            if "images_per_s" in r and ref:
                ratio = (
                    f"{r['images_per_s'] / ref['images_per_s']:.2f}x "
                    f"({r['median_images_per_s'] / ref['median_images_per_s']:.2f}x)"
                )
                cpu_ratio = f"{r['images_per_cpu_s'] / ref['images_per_cpu_s']:.2f}x"
            memory = f"{r['peak_mb']:.0f} ({r['base_mb']:.0f})" if "peak_mb" in r else "-"
            above = "-"
            if "peak_mb" in r and ref and "peak_mb" in ref:
                above = f"{(r['peak_mb'] - r['base_mb']) / (ref['peak_mb'] - ref['base_mb']):.2f}x"
            print(f"| {variant} | {speed} | {ratio} | {cpu} | {cpu_ratio} | {first} | {memory} | {above} |", flush=True)


if __name__ == "__main__":
    main()
