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


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def fid() -> None:
    """Compute FID and related metrics between two image sets (not implemented yet)."""
    _not_yet("fid")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def convert() -> None:
    """Convert checkpoints between sit, official SiT/DiT and diffusers formats (not implemented yet)."""
    _not_yet("convert")


def main() -> None:  # pragma: no cover - entry for `python -m`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
