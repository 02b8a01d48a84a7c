"""Few-step ODE solvers on trained models: error against a dopri5 1e-8 reference at 5, 10 and 20 NFE for every
method, a solver searched for each model and NFE among them, and the digits judge's FD at those NFE and at 250.

    python examples/benchmarks/few_step_solvers.py --runs runs/digits-s0 runs/digits-s1 runs/digits-s2
    python examples/benchmarks/few_step_solvers.py --runs runs/digits-S2 --seeds 3 --search-samples 64

Each (run, seed) pair is one sample of the table: with several runs, run i gets seed i; with one run and
``--seeds K``, that run gets seeds 0..K-1. For each pair:

1. A solver is searched at each NFE by the job `sit search-solver` runs (``sitcli.search_solver.search``): the
   first ``--search-samples`` noises of the seed (as `sit sample --seed S` draws them, random labels), dopri5 at
   atol = rtol = 1e-8 for their endpoints, ``--search-iterations`` Adam steps (peak learning rate ``--search-lr``)
   on mini-batches of ``--search-batch-size``; written to RUN/solver-nfeN-seedS.safetensors (kept: a second call
   reuses it). ``--search-budgets`` limits the searches to some of the NFE.
2. ``--num`` held-out noises, drawn with seed 1000 + S (indices 0..num-1, labels 0..9 cycled: class-balanced),
   are carried to data by dopri5 at atol = rtol = 1e-8 (the reference) and by each method at each NFE, all in
   float64 on the same noises. Error: mean |x - reference| over every number, in the model's [-1, 1] scale.
   Methods at NFE B: euler, adams, dpm++2m, dpm++3m, unipc and searched with B steps, heun with B / 2; each on its
   default grid. dopri5 at sit's default tolerances (atol 1e-6, rtol 1e-3) is run once: its NFE and error.
3. With ``--fd``: the same samples, rounded to 8-bit grey levels as the PNGs of `sit sample` are, scored by the
   digits judge (``sitcli.evaluate.digits.DigitsJudge``: Fréchet distance in a small digit classifier's
   features, against half of the real digits), and adams with 250 steps as the 250-NFE reference.

Prints markdown tables: mean ± std (ddof 1) over the pairs, and the two goals of the few-step issue: each method's
error at NFE <= a third of the dopri5 default's against the dopri5 default's error, and FD at 10 NFE against the
250-NFE FD. Example code: not part of the package.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from sitcli.images import to_images
from sitcli.loading import load_model
from sitcli.search_solver import SearchConfig, search
from sitcli.seeds import labels_and_noise
from sitcli.solver_file import read_solver
from sitcli.transport import sample_ode

F64 = torch.float64
BUDGETS = (5, 10, 20)
METHODS = ("euler", "heun", "adams", "dpm++2m", "dpm++3m", "unipc", "searched")
LABELS = "0,1,2,3,4,5,6,7,8,9"
REFERENCE_TOL = 1e-8


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="run folders (run i gets seed i)")
    parser.add_argument("--seeds", type=int, default=None, help="with one run: seeds 0..SEEDS-1 on it")
    parser.add_argument("--num", type=int, default=500, help="held-out noises per (run, seed)")
    parser.add_argument("--batch-size", type=int, default=250, help="noises per solver call")
    parser.add_argument("--fd", action="store_true", help="also score the samples with the digits judge")
    parser.add_argument("--search-samples", type=int, default=256)
    parser.add_argument("--search-iterations", type=int, default=100)
    parser.add_argument("--search-batch-size", type=int, default=64)
    parser.add_argument("--search-lr", type=float, default=5e-2)
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--search-budgets", type=int, nargs="+", default=None, help="searched solvers at these NFE "
                        "only (default: every budget)")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def pairs(args: argparse.Namespace) -> list[tuple[Path, int]]:
    if args.seeds is not None:
        if len(args.runs) != 1:
            raise SystemExit("--seeds goes with one run")
        return [(args.runs[0], s) for s in range(args.seeds)]
    return [(run, s) for s, run in enumerate(args.runs)]


def searched_solver(run: Path, seed: int, nfe: int, args: argparse.Namespace) -> Path:
    out = run / f"solver-nfe{nfe}-seed{seed}.safetensors"
    if not out.is_file():
        began = time.process_time()
        result = search(SearchConfig(ckpt=str(run), nfe=nfe, out=str(out), samples=args.search_samples,
                                     iterations=args.search_iterations, batch_size=args.search_batch_size, seed=seed,
                                     lr=args.search_lr, threads=args.threads), progress=False)
        print(f"  searched {out.name}: loss {result.init_loss:.2e} ({result.init}) -> {result.loss:.2e}, "
              f"reference {result.reference_nfe} NFE, {time.process_time() - began:.0f} CPU s", flush=True)
    return out


def solve(loaded, model, x0: torch.Tensor, y: torch.Tensor | None, method: str, steps: int, batch: int,
          **kwargs) -> tuple[torch.Tensor, int]:
    """``sample_ode`` in batches; returns the samples and the NFE of one batch (the largest, for dopri5)."""
    xs, nfe = [], 0
    for start in range(0, len(x0), batch):
        rows = slice(start, start + batch)
        with torch.no_grad():
            x, n = sample_ode(loaded.transport, model, x0[rows], method=method, steps=steps,
                              model_kwargs={"y": None if y is None else y[rows]}, **kwargs)
        xs.append(x)
        nfe = max(nfe, n)
    return torch.cat(xs), nfe


def one_pair(run: Path, seed: int, args: argparse.Namespace, judge) -> dict:
    """Errors (and FDs) of every method and NFE on one run and seed."""
    searched = args.budgets if args.search_budgets is None else args.search_budgets
    solvers = {b: read_solver(searched_solver(run, seed, b, args)) for b in searched}
    loaded = load_model(run)
    model = loaded.model.double()
    tcfg = loaded.config
    shape = (tcfg.in_channels, tcfg.input_size, tcfg.input_size)
    labels, x0 = labels_and_noise(1000 + seed, list(range(args.num)), shape, max(tcfg.num_classes, 1),
                                  LABELS if tcfg.num_classes else None)
    x0, y = x0.to(F64), labels if tcfg.num_classes else None
    began = time.process_time()
    reference, reference_nfe = solve(loaded, model, x0, y, "dopri5", 0, args.batch_size, atol=REFERENCE_TOL,
                                     rtol=REFERENCE_TOL)
    row = {"reference_nfe": reference_nfe}
    print(f"  {run.name} seed {seed}: reference {reference_nfe} NFE per batch, "
          f"{time.process_time() - began:.0f} CPU s", flush=True)

    def error(x: torch.Tensor) -> float:
        return (x - reference).abs().mean().item()

    def fd(x: torch.Tensor) -> float:
        images = to_images(x.float()).astype(np.float64)[..., 0] / 255.0
        return judge.score(images, labels.numpy()).fd

    x, row["dopri5_nfe"] = solve(loaded, model, x0, y, "dopri5", 0, args.batch_size)
    row["dopri5_error"] = error(x)
    if judge is not None:
        x, _ = solve(loaded, model, x0, y, "adams", 250, args.batch_size)
        row["fd_250"] = fd(x)
        row["fd_reference"] = fd(reference)
    for budget in args.budgets:
        for method in METHODS:
            if method == "searched" and budget not in solvers:
                continue
            steps = budget // 2 if method == "heun" else budget
            x, nfe = solve(loaded, model, x0, y, method, steps, args.batch_size,
                           solver=solvers[budget] if method == "searched" else None)
            assert nfe == (2 * steps if method == "heun" else steps), (method, nfe)
            row[f"error {method} {budget}"] = error(x)
            if judge is not None:
                row[f"fd {method} {budget}"] = fd(x)
    print(f"  done in {time.process_time() - began:.0f} CPU s", flush=True)
    return row


def cell(values: list[float | None], fmt: str = ".1e") -> str:
    if any(v is None for v in values):
        return "—"
    values = np.asarray(values, dtype=float)
    spread = values.std(ddof=1) if len(values) > 1 else float("nan")
    return f"{values.mean():{fmt}} ± {spread:{fmt}}"


def main() -> None:
    args = arguments()
    torch.set_num_threads(args.threads)
    judge = None
    if args.fd:
        from sitcli.evaluate.digits import DigitsJudge

        judge = DigitsJudge.default()
    rows = []
    for run, seed in pairs(args):
        rows.append(one_pair(run, seed, args, judge))
    get = lambda key: [r.get(key) for r in rows]  # noqa: E731
    print(f"\n{len(rows)} (run, seed) pairs; reference: dopri5 at atol = rtol = 1e-8, "
          f"{cell(get('reference_nfe'), '.0f')} NFE; {args.num} held-out noises each")
    print("\nmean |x - reference| (mean ± std over the pairs)\n")
    print("| method | " + " | ".join(f"{b} NFE" for b in args.budgets) + " |")
    print("|---|" + "---|" * len(args.budgets))
    for method in METHODS:
        print(f"| {method} | " + " | ".join(cell(get(f"error {method} {b}")) for b in args.budgets) + " |")
    print(f"| dopri5 default (atol 1e-6, rtol 1e-3): {cell(get('dopri5_nfe'), '.1f')} NFE | "
          f"{cell(get('dopri5_error'))} | | |")
    third = min(r["dopri5_nfe"] for r in rows) / 3
    within = [b for b in args.budgets if b <= third]
    if within:
        b = max(within)
        print(f"\nGoal 1: at {b} NFE (<= a third of dopri5's {min(get('dopri5_nfe'))} NFE), error / dopri5's error:")
        for method in METHODS:
            if f"error {method} {b}" not in rows[0]:
                continue
            ratio = [r[f"error {method} {b}"] / r["dopri5_error"] for r in rows]
            print(f"  {method:<9} {cell(ratio, '.2f')}  (<= 1 on {sum(v <= 1 for v in ratio)} of {len(ratio)} pairs)")
    if judge is not None:
        print(f"\nFD in the digit classifier's features ({args.num} images; adams 250 steps: "
              f"{cell(get('fd_250'), '.2f')}; the dopri5 1e-8 samples: {cell(get('fd_reference'), '.2f')})\n")
        print("| method | " + " | ".join(f"{b} NFE" for b in args.budgets) + " | FD(10) / FD(250) |")
        print("|---|" + "---|" * (len(args.budgets) + 1))
        for method in METHODS:
            ratio = [r[f"fd {method} 10"] / r["fd_250"] if f"fd {method} 10" in r else None for r in rows]
            print(f"| {method} | " + " | ".join(cell(get(f"fd {method} {b}"), ".2f") for b in args.budgets)
                  + f" | {cell(ratio, '.2f')} |")


if __name__ == "__main__":
    main()
