"""`sit search-solver`: flags -> SearchConfig -> ``search_solver.search`` -> a few lines."""

from __future__ import annotations

import typer

from sitcli.cli.choices import Convention, plain
from sitcli.cli.errors import console

CKPT, SEARCH, GUIDANCE, OUTPUT, SPEED = "Checkpoint", "Search", "Guidance", "Output", "Speed"


def search_solver(
    ckpt: str = typer.Option(..., "--ckpt", rich_help_panel=CKPT, help="The model: anything `sit sample` reads."),
    ema: bool = typer.Option(True, "--ema/--no-ema", rich_help_panel=CKPT, help="The EMA weights or the raw ones."),
    nfe: int = typer.Option(..., "--nfe", rich_help_panel=SEARCH, help="Steps of the solver (one NFE each)."),
    samples: int = typer.Option(256, "--samples", rich_help_panel=SEARCH, help="Starting noises to fit to."),
    iterations: int = typer.Option(300, "--iterations", rich_help_panel=SEARCH, help="Adam steps."),
    lr: float = typer.Option(2e-2, "--lr", rich_help_panel=SEARCH, help="Peak learning rate (warm-up, cosine)."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", rich_help_panel=SEARCH, help="Noises per Adam step (default: all of them)."
    ),
    seed: int = typer.Option(
        0, "--seed", rich_help_panel=SEARCH, help="Seed of the noises (as sit sample's) and of the batch order."
    ),
    fit_times: bool = typer.Option(
        True, "--fit-times/--fixed-times", rich_help_panel=SEARCH, help="Fit the time points too, or the weights only."
    ),
    reference_tol: float = typer.Option(
        1e-8, "--reference-tol", rich_help_panel=SEARCH, help="atol = rtol of the dopri5 reference endpoints."
    ),
    class_labels: str | None = typer.Option(
        None, "--class-labels", rich_help_panel=GUIDANCE, help="Labels of the noises, as sit sample (default random)."
    ),
    cfg_scale: float = typer.Option(
        1.0, "--cfg-scale", rich_help_panel=GUIDANCE, help="Classifier-free guidance scale to sample with (1: none)."
    ),
    cfg_interval: tuple[float, float] = typer.Option(
        (0.0, 1.0), "--cfg-interval", rich_help_panel=GUIDANCE, help="Guide only for LO <= t <= HI."
    ),
    cfg_interval_in: Convention = typer.Option(
        "t", "--cfg-interval-in", case_sensitive=False, rich_help_panel=GUIDANCE, help="The convention of the interval."
    ),
    cfg_channels: str = typer.Option("all", "--cfg-channels", rich_help_panel=GUIDANCE, help="all, or 3 (as sample)."),
    guidance_model: str | None = typer.Option(
        None, "--guidance-model", rich_help_panel=GUIDANCE, help="Autoguidance: the weaker checkpoint."
    ),
    guidance_scale: float = typer.Option(
        1.0, "--guidance-scale", rich_help_panel=GUIDANCE, help="Autoguidance scale (1: none)."
    ),
    out: str | None = typer.Option(
        None, "--out", rich_help_panel=OUTPUT, help="The solver file (default RUN/solver-nfeN.safetensors)."
    ),
    resume: bool = typer.Option(
        False, "--resume", rich_help_panel=OUTPUT, help="Insist on resuming (the same command resumes anyway)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", rich_help_panel=OUTPUT, help="Replace --out, or drop another search's progress."
    ),
    threads: int | None = typer.Option(
        None, "--threads", rich_help_panel=SPEED, help="torch threads (default: the run's setting)."
    ),
    device: str | None = typer.Option(
        None, "--device", rich_help_panel=SPEED, help="cpu or cuda (default: cuda if available)."
    ),
) -> None:
    """Search a solver for one model at a given NFE: per-step times and multistep weights fitted to dopri5.

    The starting noises of indices 0..N-1 (as `sit sample --seed`) are carried to data by dopri5 at a tight
    tolerance, in float64, under the guidance given (the field the solver will sample); the solver's --nfe times
    and coefficients are then fitted by Adam to those endpoints, starting from the best Adams-Bashforth. Sample
    with `sit sample --method searched --solver FILE`, which refuses the file for other weights, interpolant,
    interval or guidance. An interrupted search resumes when the same command is run again, ending where an
    uninterrupted one ends, bit for bit. In discrete time only the coefficients are fitted.
    """
    flags = plain({k: v for k, v in locals().items() if k != "device"})  # first: only the flags
    from sitcli.search_solver import SearchConfig, search

    config = SearchConfig(**flags)
    try:
        result = search(config, device=device)
    except KeyboardInterrupt:  # the state after the last Adam step is on disk
        console.print("interrupted; run the same command again to resume the search", highlight=False)
        raise typer.Exit(130) from None
    resumed = f", resumed from iteration {result.resumed_from}" if result.resumed_from else ""
    console.print(
        f"wrote {result.out}: a {result.nfe}-step solver, mean squared distance to the references "
        f"{result.init_loss:.3e} ({result.init}) -> {result.loss:.3e} after {result.iterations} iterations"
        f"{resumed}; {result.seconds:.0f} s",
        highlight=False,
    )
