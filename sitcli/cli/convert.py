"""`sit convert` and `sit cache-latents`: flags -> ConvertConfig / CacheConfig -> the job -> a few lines."""

from __future__ import annotations

import typer
from rich.markup import escape

from sitcli.cli.errors import console


def convert(
    src: str = typer.Argument(..., metavar="SRC", help="A .pt file, a sit run, checkpoint or .safetensors, or a "
                              "diffusers folder."),
    dst: str = typer.Argument(..., metavar="DST", help="File (official, dit) or folder (sit, diffusers) to create."),
    src_format: str | None = typer.Option(None, "--from",
                                          help="sit | official | dit | diffusers | rae (default: detected)."),
    dst_format: str | None = typer.Option(None, "--to", help="sit | official | dit | diffusers | rae (.pt: official)."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="The EMA weights or the raw ones (a sit run keeps both)."),
    diffusers_class: str = typer.Option("auto", "--diffusers-class", help="--to diffusers: dit | sit | auto."),
    num_heads: int | None = typer.Option(None, "--num-heads", help="Attention heads, for a width not in the table."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing DST once the new one is complete."),
    check: bool = typer.Option(True, "--check/--no-check", help="Measure a diffusers model against sit's output."),
    dmf_depth: int | None = typer.Option(None, "--dmf-depth", help="A DMF file's blocks that see t, where it does "
                                         "not say (DMF-XL/2: 20)."),
) -> None:
    """Convert checkpoints between sit, the official SiT/DiT code and diffusers.

    Weights are copied unchanged, so round trips are bit-exact. DiT weights stay DiT: `sit sample --ckpt` runs them
    with the discrete DDPM transport (noise prediction, DiT timesteps). SiT and DiT .pt files are told apart by
    their training args or a SiT-/DiT- file name. --diffusers-class auto writes DiT weights as diffusers'
    DiTTransformer2DModel and SiT weights as sit's SiTTransformer2DModel. diffusers' DiT embeds timesteps with
    other frequencies than DiT and SiT (exponent i/127, not i/128), so its outputs differ; the measured
    difference is printed, not hidden. Decoupled MeanFlow's .pt files (kyungmnlee/dmf, 256 px) are read into sit's
    time with their loss-weight head dropped; their released weights do not record --dmf-depth.
    """
    flags = dict(locals())  # first: only the flags
    from sitcli.convert import ConvertConfig
    from sitcli.convert import convert as run_convert
    from sitcli.formats.architecture import describe

    config = ConvertConfig(**flags)
    # Large models take minutes (reading, writing, and the diffusers check forward): show that work goes on.
    with console.status(f"converting {escape(str(src))}", spinner="dots"):
        result = run_convert(config)
    kind = "DiT (DDPM, noise prediction)" if result.kind == "dit" else "SiT"
    console.print(f"read {result.src} as {result.src_format}: {kind} weights, {describe(result.arch)}",
                  highlight=False, soft_wrap=True)
    console.print(f"wrote {result.dst} as {result.dst_format} ({result.weights} weights)", highlight=False,
                  soft_wrap=True)
    if result.deviation is not None:
        console.print(f"check: {result.deviation}", highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    for line in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


def cache_latents(
    data: str = typer.Option(..., "--data", help="Image folder with one sub-folder per class."),
    vae: str | None = typer.Option(None, "--vae", help="Local diffusers AutoencoderKL folder."),
    out: str = typer.Option(..., "--out", help="Folder for the cache; then `sit train --data OUT`."),
    image_size: int = typer.Option(256, "--image-size", help="Side of the center-cropped images."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per VAE forward pass."),
    num_workers: int = typer.Option(4, "--num-workers", help="Image-decoding processes."),
    seed: int = typer.Option(0, "--seed", help="Seed of the VAE posterior samples (image i: its own)."),
    shard_size: int = typer.Option(4096, "--shard-size", help="Images per shard, the unit of ranks and of resuming."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a cache in a non-empty --out."),
    repa_encoder: list[str] | None = typer.Option(None, "--repa-encoder",
                                                  help="Also store this encoder's patch tokens (repeatable)."),
    repa_grid: int | None = typer.Option(None, "--repa-grid", help="Token grid side of them (latent side // 2)."),
    repa_dtype: str = typer.Option("float16", "--repa-dtype", help="float16 (half the disk) or float32."),
    rae_encoder: str | None = typer.Option(None, "--rae-encoder", help="Instead of --vae: an RAE's DINOv2 "
                                           "(transformers folder or hub .pth)."),
    rae_patch: int | None = typer.Option(None, "--rae-patch", help="The RAE decoder's patch in pixels (16)."),
    latent_stats: str | None = typer.Option(None, "--latent-stats", help="Statistics to record beside the cache "
                                            "(sit's, RAE's stat.pt)."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda if available)."),
) -> None:
    """Encode an image folder once with the VAE (each image and its mirror), and REPA encoders' features if asked.

    --rae-encoder stores an RAE's raw latents (its DINOv2's patch tokens, final LayerNorm without affine) instead:
    768 x 16 x 16 float16 for DINOv2-B at 256 pixels, 0.8 MB per image and mirror (about 1 TB for ImageNet;
    RAE itself encodes on the fly, `sit train --data IMAGES --rae-encoder ...`). Such latents need statistics:
    --latent-stats FILE copies a file beside the cache, or `sit latent-stats CACHE` computes them.

    Under `torchrun --nproc_per_node=K -m sitcli cache-latents ...` the K ranks encode disjoint shards (the cache
    is bit for bit the one-process cache); run the same command again after an interruption and only unfinished
    shards are encoded. A shard holds the REPA features in memory: lower --shard-size for wide encoders.
    """
    flags = {k: v for k, v in locals().items() if k != "device"}  # first: only the flags
    from sitcli.data.latent_cache import CacheConfig
    from sitcli.data.latent_cache import cache_latents as run_cache

    result = run_cache(CacheConfig(**{**flags, "repa_encoder": repa_encoder or []}), device=device)
    if result.is_main:
        reused = f" ({result.reused_shards} of {result.shards} shards kept from an earlier run)" \
            if result.reused_shards else ""
        console.print(f"latent cache of {result.count} images written to {result.out}{reused}; "
                      f"train with: sit train --data {result.out}", highlight=False)
