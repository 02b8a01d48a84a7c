"""`sit ema`: flags -> EmaConfig -> ``ema.reconstruct`` -> a few lines."""

from __future__ import annotations

import typer

from sitcli.cli.errors import console


def ema(
    run: str = typer.Argument(..., metavar="RUN", help="A run trained with --ema-snapshots-every."),
    sigma_rel: float = typer.Option(..., "--sigma-rel", help="Relative width of the EMA to rebuild (EDM2: 0.05-0.15)."),
    out: str = typer.Option(..., "--out", help="Run folder to create; sit sample, nll and convert read it."),
    step: int | None = typer.Option(None, "--step", help="A snapshot step to rebuild at (default: the last one)."),
    max_fit_error: float = typer.Option(
        0.05, "--max-fit-error", help="Refuse a profile fit worse than this (relative L2 distance)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out once the new one is written."),
) -> None:
    """Rebuild the EMA of any relative width from a run's post-hoc EMA snapshots (EDM2's least squares).

    sigma_rel is the standard deviation of the averaging profile over past steps relative to the step reached
    (EDM2): small averages only the last steps, large more of the run. The snapshots (`sit train
    --ema-snapshots-every K`, widths --ema-sigma-rels) are combined with the coefficients whose profile best fits
    the wanted one; a width they fit worse than --max-fit-error is refused, naming those they rebuild. OUT holds
    the result as both model and EMA weights, and records the coefficients and the fit error in its state.json.
    """
    flags = dict(locals())  # first: only the flags
    from sitcli.ema import EmaConfig, reconstruct

    result = reconstruct(EmaConfig(**flags))
    xs = [c for c, _, _ in result.coefficients]
    console.print(
        f"rebuilt the EMA of sigma_rel {result.sigma_rel:g} at step {result.step} from {len(xs)} snapshots "
        f"(coefficients {min(xs):.3g} .. {max(xs):.3g}; profile fit error {result.fit_error:.2%}; these snapshots "
        f"rebuild widths {result.widths[0]:.3g} .. {result.widths[1]:.3g} within {max_fit_error:g})",
        highlight=False, soft_wrap=True,
    )
    console.print(f"wrote {result.out}; sample it with: sit sample --ckpt {result.out}", highlight=False,
                  soft_wrap=True)
