"""The `sit` command line: parse flags, call the library, print results. No logic lives here."""

from __future__ import annotations

import functools
import sys
from typing import Callable

import typer
from rich.console import Console

from sitcli.errors import InputError

app = typer.Typer(
    help="Scalable Interpolant Transformers: train, sample, evaluate (FID) and convert SiT models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _user_errors(fn: Callable) -> Callable:
    """Turn an InputError from the library into a one-line message and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as err:
            console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _not_yet(name: str) -> None:
    console.print(f"[bold red]error:[/] `sit {name}` is not implemented yet in this version.", highlight=False)
    raise typer.Exit(2)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train() -> None:
    """Train a SiT model (not implemented yet)."""
    _not_yet("train")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sample() -> None:
    """Sample images from a trained SiT model (not implemented yet)."""
    _not_yet("sample")


@app.command()
@_user_errors
def fid(
    a: str = typer.Argument(..., metavar="A", help="Reference set: image folder, images .npz (arr_0, N x H x W x 3 uint8) or stats .npz (mu, sigma)."),
    b: str | None = typer.Argument(None, metavar="B", help="Sample set, same kinds. Optional with --save-stats, or with --metrics is alone."),
    metrics: str = typer.Option("fid", "--metrics", "-m", help="Comma list of fid, is, sfid, pr, kid, or 'all'."),
    save_stats: str | None = typer.Option(None, "--save-stats", help="Write A's statistics (mu, sigma, mu_s, sigma_s) to this .npz for reuse."),
    inception_weights: str | None = typer.Option(
        None, "--inception-weights",
        help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth or torch-fidelity's weights file "
        "(default: the torch hub checkpoints folder, where pytorch-fid caches it).",
    ),
    batch_size: int = typer.Option(50, "--batch-size", help="Images per Inception forward pass."),
    num_workers: int | None = typer.Option(None, "--num-workers", help="Image-decoding processes (default: CPUs, at most 8)."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda if available)."),
    json_out: str | None = typer.Option(None, "--json", help="Also write metrics, inputs and settings to this JSON file."),
    is_splits: int = typer.Option(10, "--is-splits", help="Inception Score splits."),
    pr_subset: int | None = typer.Option(None, "--pr-subset", help="Precision/recall on at most this many random images per set (default: all)."),
    kid_subsets: int = typer.Option(100, "--kid-subsets", help="KID: number of random subsets."),
    kid_subset_size: int = typer.Option(1000, "--kid-subset-size", help="KID: images per subset (capped at the smaller set)."),
    seed: int = typer.Option(2020, "--seed", help="Seed for the PR and KID subsets (2020 draws torch-fidelity's KID subsets)."),
) -> None:
    """Compute FID and related metrics between a reference set A and a sample set B.

    FID reproduces pytorch-fid: same Inception-v3 weights, same preprocessing (PIL convert('RGB'), bilinear resize to 299x299 with align_corners=False, scale to [-1, 1]).

    sFID: the ADM evaluator's spatial features (Mixed_6d 1x1 branch, first 7 channels, 17x17). IS: of B, from the 1008-way logits. Precision/recall: k=3 neighbours; precision is B inside A's manifold. KID: unbiased polynomial-kernel MMD over random subsets.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from sitcli.evaluate import evaluate

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
        TimeRemainingColumn(), console=console, transient=True,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(f"Inception on {label}", total=total)
            bar.update(tasks[label], completed=done)

        result = evaluate(
            a, b, metrics, save_stats=save_stats, inception_weights=inception_weights, batch_size=batch_size,
            num_workers=num_workers, device=device, is_splits=is_splits, pr_subset=pr_subset,
            kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed, progress=progress,
        )
    for line in result["warnings"]:
        console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
    m = result["metrics"]
    rows = [
        ("FID", "fid", None), ("sFID", "sfid", None), ("Inception Score", "is", "is_std"),
        ("Precision", "precision", None), ("Recall", "recall", None), ("KID", "kid", "kid_std"),
    ]
    table = Table(title="sit fid")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for title, key, spread in rows:
        if key in m:
            table.add_row(title, f"{m[key]:.6g}" + (f" ± {m[spread]:.2g}" if spread else ""))
    for label, info in result["inputs"].items():
        count = f", {info['num_images']} images" if info["num_images"] is not None else ""
        table.add_row(f"[dim]{label}[/]", f"[dim]{info['path']} ({info['kind']}{count})[/]")
    Console().print(table)
    if result["saved_stats"]:
        console.print(f"statistics of A written to {result['saved_stats']}", highlight=False)
    if json_out:
        from sitcli.evaluate.inputs import write_json

        console.print(f"results written to {write_json(json_out, result)}", highlight=False)


@app.command()
@_user_errors
def convert(
    src: str = typer.Argument(..., metavar="SRC", help="Checkpoint to read: a .pt file, a sit run/checkpoint folder or .safetensors, or a diffusers folder."),
    dst: str = typer.Argument(..., metavar="DST", help="File (official/dit) or folder (sit, diffusers) to create."),
    src_format: str | None = typer.Option(None, "--from", help="sit | official | dit | diffusers (default: detected; SiT and DiT .pt files are told apart by their training args or a SiT-/DiT- file name)."),
    dst_format: str | None = typer.Option(None, "--to", help="sit | official | dit | diffusers (default: official for a DST ending in .pt)."),
    use: str = typer.Option("ema", "--use", help="Weights of a training checkpoint or run to take: ema | model (a sit run keeps both)."),
    diffusers_class: str = typer.Option("auto", "--diffusers-class", help="--to diffusers: dit (diffusers' DiTTransformer2DModel) | sit (sitcli.diffusers_sit.SiTTransformer2DModel) | auto (dit for DiT weights, sit for SiT weights)."),
    num_heads: int | None = typer.Option(None, "--num-heads", help="Attention heads, when the hidden size is not in the size table (shapes do not tell)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing DST (only once the new result is complete)."),
    check: bool = typer.Option(True, "--check/--no-check", help="When diffusers is involved, run both models on a random batch and print the deviation."),
) -> None:
    """Convert checkpoints between sit, the official SiT/DiT code and diffusers.

    Weights are copied unchanged, so round trips are bit-exact. DiT weights stay DiT: `sit sample --ckpt` runs them with the discrete DDPM transport (noise prediction, DiT timesteps).

    diffusers' DiTTransformer2DModel embeds timesteps with other frequencies than DiT and SiT (exponent i/127, not i/128), so its outputs differ; the measured difference is printed, not hidden.
    """
    from sitcli.convert import convert as run_convert
    from sitcli.convert import describe

    result = run_convert(src, dst, src_format, dst_format, use, diffusers_class, num_heads, overwrite, check)
    kind = "DiT (DDPM, noise prediction)" if result.kind == "dit" else "SiT"
    console.print(f"read {result.src} as {result.src_format}: {kind} weights, {describe(result.arch)}", highlight=False, soft_wrap=True)
    console.print(f"wrote {result.dst} as {result.dst_format} ({result.weights} weights)", highlight=False, soft_wrap=True)
    if result.deviation is not None:
        console.print(f"check: {result.deviation}", highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)


def main() -> None:  # pragma: no cover - entry for `python -m`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
