"""`sit nll` and `sit fid`: flags -> NllConfig / FidConfig -> the job -> a line or a table."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from sitcli.cli.choices import LikelihoodMethod, plain
from sitcli.cli.errors import console


def nll(
    ckpt: str = typer.Option(..., "--ckpt", help="A pixel-space model: anything `sit sample` reads."),
    model: str | None = typer.Option(None, "--model", help="Check that --ckpt holds this architecture."),
    data: str | None = typer.Option(None, "--data", help="Data to score (default: the run's training data)."),
    num: int = typer.Option(1000, "--num-samples", "--num", help="Score this many images, a seeded random subset."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per likelihood solve."),
    method: LikelihoodMethod = typer.Option("dopri5", "--method", case_sensitive=False, help="ODE method."),
    steps: int = typer.Option(100, "--steps", help="Steps of a fixed-grid method."),
    atol: float = typer.Option(1e-5, "--atol", help="Absolute tolerance."),
    rtol: float = typer.Option(1e-5, "--rtol", help="Relative tolerance."),
    divergence: str | None = typer.Option(None, "--divergence", help="exact | hutchinson (exact up to 1024 dims)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the subset, the dequantization noise and the probes."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="The EMA weights or the raw ones."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda if available)."),
) -> None:
    """Bits per dimension of a data set under a trained model (ODE likelihood, uniform dequantization)."""
    flags = plain({k: v for k, v in locals().items() if k != "device"})  # first: only the flags
    from sitcli.nll import NllConfig
    from sitcli.nll import nll as run_nll

    result = run_nll(NllConfig(**flags), device=device)
    typer.echo(f"{result.bits_per_dim:.4f} ± {result.std_error:.4f} bits/dim over {result.num} images "
               f"({result.dims} dimensions)")


def fid(
    a: str = typer.Argument(..., metavar="A", help="Reference: image folder, images .npz or stats .npz."),
    b: str | None = typer.Argument(None, metavar="B", help="Samples, the same kinds (optional with --save-stats)."),
    metrics: str | None = typer.Option(
        None, "--metrics", "-m", help="Comma list of fid, is, sfid, pr, kid, fd_dinov2, or all (fid)."
    ),
    save_stats: str | None = typer.Option(None, "--save-stats", help="Write A's statistics to this .npz."),
    json: str | None = typer.Option(None, "--json", help="Also write metrics, inputs and settings to this file."),
    inception_weights: str | None = typer.Option(
        None, "--inception-weights", help="pytorch-fid's or torch-fidelity's Inception weights file."
    ),
    batch_size: int = typer.Option(50, "--batch-size", help="Images per Inception forward pass."),
    num_workers: int | None = typer.Option(None, "--num-workers", help="Image-decoding processes (CPUs, at most 8)."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda if available)."),
    is_splits: int = typer.Option(10, "--is-splits", help="Inception Score splits."),
    pr_subset: int | None = typer.Option(None, "--pr-subset", help="Precision/recall on at most this many images."),
    kid_subsets: int = typer.Option(100, "--kid-subsets", help="KID: number of random subsets."),
    kid_subset_size: int = typer.Option(1000, "--kid-subset-size", help="KID: images per subset."),
    seed: int = typer.Option(2020, "--seed", help="Seed of the PR and KID subsets (2020: torch-fidelity's)."),
    dinov2: str | None = typer.Option(
        None, "--dinov2", help="DINOv2 encoder (local folder or hub .pth) for fd_dinov2."
    ),
    fast: bool = typer.Option(False, "--fast", help="Fold batch norms, channels-last: ~1.5x on CPU, not bit-exact."),
    tf32: bool = typer.Option(False, "--tf32", help="TF32 convolutions on CUDA: faster, features move by ~1e-3."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --save-stats or --json file."),
) -> None:
    """Compute FID and related metrics between a reference set A and a sample set B.

    FID reproduces pytorch-fid: the same Inception-v3 weights (default: the torch hub checkpoints folder, where
    pytorch-fid caches them) and preprocessing (PIL convert('RGB'), bilinear resize to 299x299, scale to [-1, 1]).
    sFID: the ADM evaluator's spatial features. IS: of B, from the 1008-way logits. Precision/recall: k = 3
    neighbours; precision is B inside A's manifold. KID: unbiased polynomial-kernel MMD over random subsets.
    """
    flags = plain({k: v for k, v in locals().items() if k != "device"})  # first: only the flags
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from sitcli.evaluate import FidConfig, evaluate

    config = FidConfig(**flags)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("images"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label if " " in label else f"Inception on {label}", total=total)
            bar.update(tasks[label], completed=done)

        result = evaluate(config, progress=progress, device=device)
    for line in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    rows = [
        ("FID", "fid", None),
        ("sFID", "sfid", None),
        ("Inception Score", "is", "is_std"),
        ("Precision", "precision", None),
        ("Recall", "recall", None),
        ("KID", "kid", "kid_std"),
        ("FD-DINOv2", "fd_dinov2", None),
    ]
    table = Table(title="sit fid")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for title, key, spread in rows:
        if key in result.metrics:
            value = result.metrics[key]
            table.add_row(title, f"{value:.6g}" + (f" ± {result.metrics[spread]:.2g}" if spread else ""))
    for label, info in result.inputs.items():
        count = f", {info['num_images']} images" if info["num_images"] is not None else ""
        table.add_row(f"[dim]{label}[/]", f"[dim]{escape(info['path'])} ({info['kind']}{count})[/]")
    Console().print(table)
    if result.saved_stats:
        console.print(f"statistics of A written to {result.saved_stats}", highlight=False, markup=False)
    if result.json:
        console.print(f"results written to {result.json}", highlight=False, markup=False)
