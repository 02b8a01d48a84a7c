"""`sit latent-stats`: flags -> LatentStatsConfig -> ``latent_stats.latent_stats`` -> one line."""

from __future__ import annotations

import typer

from sitcli.cli.errors import console


def latent_stats(
    data: str = typer.Argument(..., metavar="DATA", help="A latent cache, or an image folder (with an autoencoder)."),
    out: str | None = typer.Option(None, "--out", help="The .safetensors to write (default: beside a cache)."),
    kind: str = typer.Option("element", "--kind", help="element (per C, H, W: RAE's) or channel (LightningDiT's)."),
    eps: float | None = typer.Option(None, "--eps", help="Added to the variance (1e-5 element, 0 channel)."),
    unbiased: bool = typer.Option(False, "--unbiased/--population", help="The variance's divisor: n - 1 or n."),
    vae: str | None = typer.Option(None, "--vae", help="An image folder's AutoencoderKL folder."),
    rae_encoder: str | None = typer.Option(None, "--rae-encoder", help="An image folder's RAE encoder (DINOv2)."),
    rae_patch: int | None = typer.Option(None, "--rae-patch", help="The RAE decoder's patch in pixels (16)."),
    image_size: int = typer.Option(256, "--image-size", help="Side of an image folder's center crops."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per batch (per rank)."),
    seed: int = typer.Option(0, "--seed", help="Seed of a VAE's posterior samples (as sit cache-latents)."),
    num: int | None = typer.Option(None, "--num-images", help="Only the first N images (default: all)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing statistics file."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda if available)."),
) -> None:
    """Compute the mean and variance of an autoencoder's latents and write them as a statistics file.

    Over a cache (`sit cache-latents`) the file goes beside it and the cache's manifest records it, so
    `sit train --data CACHE` normalises with it. Over an image folder pass --vae or --rae-encoder and --out.
    Every image counts with its mirror. Under `torchrun --nproc_per_node=K -m sitcli latent-stats ...` the ranks
    share the batches and their sums are merged exactly.
    """
    flags = {k: v for k, v in locals().items() if k != "device"}  # first: only the flags
    from sitcli.latent_stats import LatentStatsConfig
    from sitcli.latent_stats import latent_stats as run_stats

    result = run_stats(LatentStatsConfig(**flags), device=device)
    if result.is_main:
        note = "; the cache's manifest records it" if result.recorded else ""
        console.print(f"wrote {result.out}: {result.describe} from {result.count} latents{note}", highlight=False)
