"""The `sit` command line: parse flags, build one config, make one library call, print the result.

One module per group of commands (``train``, ``sample``, ``evaluate``, ``convert``, ``ema``, ``solvers``);
``choices`` holds the choice types built from the library's registries, ``errors`` how a failure is reported (one
line, exit 2 or 1).
"""

from __future__ import annotations

import typer

from sitcli.cli import convert, decoder, ema, evaluate, latents, sample, solvers, train
from sitcli.cli.errors import user_errors

app = typer.Typer(
    help="Scalable Interpolant Transformers: train, sample, evaluate (FID) and convert SiT models.",
    no_args_is_help=True,
    add_completion=True,  # sit --install-completion: bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # a docstring's paragraphs wrap to the terminal; blank lines separate them
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"sit {version('sit')}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version of sit and exit.")) -> None:
    """Scalable Interpolant Transformers: train, sample, evaluate (FID) and convert SiT models."""


for name, command in (("train", train.train), ("sample", sample.sample), ("nll", evaluate.nll),
                      ("cache-latents", convert.cache_latents), ("fid", evaluate.fid), ("convert", convert.convert),
                      ("ema", ema.ema), ("search-solver", solvers.search_solver),
                      ("latent-stats", latents.latent_stats), ("train-decoder", decoder.train_decoder)):
    app.command(name)(user_errors(command))
app.command("methods")(sample.methods)
app.command("recipes")(sample.recipes)


def main() -> None:  # pragma: no cover - the entry of `python -m sitcli`
    app()
