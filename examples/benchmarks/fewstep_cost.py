"""Benchmark, not a test: the cost of one fine-tuning step of each few-step objective against a flow step.

    python examples/benchmarks/fewstep_cost.py [--model SiT-S/2] [--input-size 32] [--batch-size 8] [--iters 6]
        [--threads 0] [--device cpu] [--tiny]

Every variant is sit's training step (``training.loop.step_loss`` + ``step_update``: forward, loss,
backward, AdamW, EMA) on the same data, the same architecture started from one flow SiT by
``training.init_from.init_from_flow``, each with its own copy and optimiser:

- ``flow``: the regression loss (``RegressionLoss``), the step being compared against;
- ``meanflow``: sit's mean-flow loss (``MeanFlowLoss``, ``SiT(mean_flow=True)``), one JVP without gradients;
- ``dmf`` / ``dmf guided``: Decoupled MeanFlow (``SiT(dmf_depth=2/3 of depth)``), one JVP; guided adds DMF's
  model guidance (its 0.6, a guidance scale of 2.5, on t in [0.3, 1]): one forward of the doubled batch without
  gradients;
- ``imf`` / ``imf guided``: improved MeanFlow (``SiT(mean_flow, omega_input, velocity_head_depth=depth/4)``):
  the forward runs both heads, a forward for the model's own velocity and one JVP; guided (omega up to 8) makes
  that forward one of the doubled batch (conditional and unconditional);
- ``alphaflow mid`` / ``alphaflow end``: AlphaFlow's target at 0 < alpha < 1 (one forward without gradients)
  and at alpha = 0 (the JVP).

The variants take turns step by step after one untimed step each, so a change of the machine's load hits all
of them alike. Printed per variant: the median CPU time of this process per step (all its threads; other jobs
disturb it far less than wall time) and wall time, and both as ratios to ``flow`` from the same run.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time


def steps(model_name: str, input_size: int, batch_size: int, device: str, tiny: bool = False) -> dict:
    """One step function per variant, each on its own copy of one flow SiT converted by ``init_from_flow``."""
    import torch

    from sitcli.models import SIZES, SiT
    from sitcli.training.fewstep_losses import AlphaFlowLoss, DecoupledMeanFlowLoss, ImprovedMeanFlowLoss
    from sitcli.training.init_from import init_from_flow
    from sitcli.training.losses import MeanFlowLoss, RegressionLoss
    from sitcli.training.loop import step_loss, step_update
    from sitcli.transport import Transport

    torch.manual_seed(0)
    if tiny:
        arch = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=4, num_heads=2)
    else:
        size, patch = model_name.removeprefix("SiT-").split("/")
        depth, hidden, heads = SIZES[size]
        arch = dict(input_size=input_size, patch_size=int(patch), in_channels=4, hidden_size=hidden, depth=depth,
                    num_heads=heads)
    flow = SiT(**arch, num_classes=1000, learn_sigma=False)
    depth = arch["depth"]
    x1 = torch.randn(batch_size, 4, arch["input_size"], arch["input_size"], device=device)
    y = torch.randint(0, 1000, (batch_size,), device=device)
    transport = Transport("linear")
    precision = torch.autocast(torch.device(device).type, enabled=False)
    forms = {"flow": {}, "meanflow": dict(mean_flow=True), "dmf": dict(dmf_depth=2 * depth // 3),
             "imf": dict(mean_flow=True, omega_input=True, velocity_head_depth=max(1, depth // 4)),
             "alphaflow": dict(mean_flow=True)}
    objectives = {
        "flow": ("flow", lambda m: RegressionLoss(transport)),
        "meanflow": ("meanflow", lambda m: MeanFlowLoss(m, transport, 0.25, 1.0, 1e-3, 1.0)),
        "dmf": ("dmf", lambda m: DecoupledMeanFlowLoss(m, transport)),
        "dmf guided": ("dmf", lambda m: DecoupledMeanFlowLoss(m, transport, omega=2.5, guidance_interval=(0.3, 1.0))),
        "imf": ("imf", lambda m: ImprovedMeanFlowLoss(m, transport)),
        "imf guided": ("imf", lambda m: ImprovedMeanFlowLoss(m, transport, omega_max=8.0)),
        "alphaflow mid": ("alphaflow", lambda m: AlphaFlowLoss(m, transport)),
        "alphaflow end": ("alphaflow", lambda m: AlphaFlowLoss(m, transport)),
    }

    def make(variant: str):
        form, objective = objectives[variant]
        model = init_from_flow(SiT(**arch, num_classes=1000, learn_sigma=False, **forms[form]), flow.state_dict())
        model = model.to(device).train()
        ema = copy.deepcopy(model).requires_grad_(False).eval()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
        term = objective(model)
        term.at_step(1 if variant == "alphaflow mid" else 2, 2)
        noise = torch.Generator(device).manual_seed(0)

        def step() -> None:
            loss, _ = step_loss(model, transport, [term], x1, y, noise, precision)
            step_update(loss, model, ema, opt, 0.9999)

        return step

    return {variant: make(variant) for variant in objectives}


def time_interleaved(step_fns: dict, iters: int, device: str) -> dict:
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for step in step_fns.values():
        step()
    wall, cpu = {v: [] for v in step_fns}, {v: [] for v in step_fns}
    for _ in range(iters):
        for variant, step in step_fns.items():
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            sync()
            wall[variant].append(time.perf_counter() - start)
            cpu[variant].append(time.process_time() - start_cpu)
    return {v: (statistics.median(cpu[v]), statistics.median(wall[v])) for v in step_fns}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SiT-S/2")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0: torch's default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="a 4-block, 32-wide SiT on 8x8 inputs (a smoke run)")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = time_interleaved(steps(args.model, args.input_size, args.batch_size, args.device, args.tiny),
                               args.iters, args.device)
    name = "tiny SiT" if args.tiny else f"{args.model} on {args.input_size}x{args.input_size}x4"
    print(f"{name}, batch {args.batch_size}, {args.device}, median of {args.iters} steps\n")
    print("| step | CPU s / step | wall s / step | CPU vs flow | wall vs flow |")
    print("|---|---|---|---|---|")
    base_cpu, base_wall = results["flow"]
    for variant, (cpu, wall) in results.items():
        print(f"| {variant} | {cpu:.4f} | {wall:.4f} | {cpu / base_cpu:.2f}x | {wall / base_wall:.2f}x |")
    return results


if __name__ == "__main__":
    main()
