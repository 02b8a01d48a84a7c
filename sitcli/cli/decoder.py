"""`sit train-decoder`: flags -> DecoderTrainConfig -> ``training.decoder.train_decoder`` -> one line."""

from __future__ import annotations

import typer

from sitcli.cli.choices import Precision, plain
from sitcli.cli.errors import console

DATA, LOSS, OPTIM, LOGS = "Data and run", "Loss", "Optimisation", "Logs, checkpoints and rFID"


def train_decoder(
    rae_encoder: str | None = typer.Option(
        None, "--rae-encoder", rich_help_panel=DATA, help="The frozen DINOv2 (transformers folder or hub .pth)."
    ),
    data: str | None = typer.Option(
        None, "--data", rich_help_panel=DATA, help="digits (upsampled, grey) or an image folder (default digits)."
    ),
    out: str | None = typer.Option(None, "--out", rich_help_panel=DATA, help="Run folder to create."),
    resume: str | None = typer.Option(None, "--resume", rich_help_panel=DATA, help="Continue this decoder run."),
    image_size: int | None = typer.Option(None, "--image-size", rich_help_panel=DATA, help="Image side (256)."),
    decoder_size: str | None = typer.Option(
        None, "--decoder-size", rich_help_panel=DATA, help="ViT-XL (RAE's), ViT-L, ViT-B or ViT-Ti (tiny, CPU)."
    ),
    rae_patch: int | None = typer.Option(None, "--rae-patch", rich_help_panel=DATA, help="Decoder patch (16)."),
    seed: int | None = typer.Option(None, "--seed", rich_help_panel=DATA, help="Seed of init, order, noise (0)."),
    noise_tau: float | None = typer.Option(
        None, "--noise-tau", rich_help_panel=LOSS, help="RAE's latent noise: sigma = tau * U[0, 1) (0.8)."
    ),
    lpips: str | None = typer.Option(
        None, "--lpips", rich_help_panel=LOSS, help="Local LPIPS weights (vgg16 .pth + vgg.pth): adds the term."
    ),
    lpips_weight: float | None = typer.Option(None, "--lpips-weight", rich_help_panel=LOSS, help="Its weight (1)."),
    gan: str | None = typer.Option(
        None, "--gan", rich_help_panel=LOSS, help="none, or patch: a small PatchGAN (not RAE's DINO one)."
    ),
    gan_weight: float | None = typer.Option(
        None, "--gan-weight", rich_help_panel=LOSS, help="Weight of the adaptive-weighted GAN term (0.75)."
    ),
    gan_start: int | None = typer.Option(
        None, "--gan-start", rich_help_panel=LOSS, help="Step the GAN term starts (half the steps)."
    ),
    disc_start: int | None = typer.Option(
        None, "--disc-start", rich_help_panel=LOSS, help="Step the discriminator starts training (3/8 of them)."
    ),
    disc_lr: float | None = typer.Option(None, "--disc-lr", rich_help_panel=LOSS, help="Its learning rate (2e-4)."),
    lr: float | None = typer.Option(None, "--lr", rich_help_panel=OPTIM, help="AdamW learning rate (2e-4)."),
    ema_decay: float | None = typer.Option(None, "--ema-decay", rich_help_panel=OPTIM, help="EMA decay (0.9978)."),
    batch_size: int | None = typer.Option(None, "--batch-size", rich_help_panel=OPTIM, help="Global batch (512)."),
    steps: int | None = typer.Option(None, "--steps", rich_help_panel=OPTIM, help="Steps (instead of --epochs)."),
    epochs: int | None = typer.Option(None, "--epochs", rich_help_panel=OPTIM, help="Passes over the data (16)."),
    grad_clip: float | None = typer.Option(None, "--grad-clip", rich_help_panel=OPTIM, help="Clip gradients (off)."),
    precision: Precision | None = typer.Option(
        None, "--precision", case_sensitive=False, rich_help_panel=OPTIM, help="bf16 autocast; fp16 on CUDA only."
    ),
    log_every: int | None = typer.Option(None, "--log-every", rich_help_panel=LOGS, help="Steps per log row (100)."),
    ckpt_every: int | None = typer.Option(
        None, "--ckpt-every", rich_help_panel=LOGS, help="Steps between checkpoints (1000; one at the end)."
    ),
    eval_every: int | None = typer.Option(
        None, "--eval-every", rich_help_panel=LOGS, help="Steps between rFIDs of reconstructions (0: none)."
    ),
    eval_data: str | None = typer.Option(
        None, "--eval-data", rich_help_panel=LOGS, help="Validation images (default: the training data's first)."
    ),
    eval_num: int | None = typer.Option(None, "--eval-num", rich_help_panel=LOGS, help="Images per rFID (1000)."),
    inception_weights: str | None = typer.Option(
        None, "--inception-weights", rich_help_panel=LOGS, help="pytorch-fid's Inception weights, as for sit fid."
    ),
    num_workers: int | None = typer.Option(None, "--num-workers", rich_help_panel=OPTIM, help="Loader processes."),
    threads: int | None = typer.Option(None, "--threads", rich_help_panel=OPTIM, help="torch threads per rank."),
    device: str | None = typer.Option(None, "--device", rich_help_panel=OPTIM, help="cpu or cuda (default: cuda)."),
) -> None:
    """Train an RAE decoder behind a frozen DINOv2: L1, LPIPS (--lpips), a GAN term (--gan patch), RAE's noise.

    The latents are noised as RAE trains its decoders (sigma = tau * u, u ~ U[0, 1) per image). RAE's
    adversarial term uses a frozen DINO ViT-S/8 discriminator, which is not built here: --gan patch trains a
    small PatchGAN instead. --eval-every N reports the rFID (Inception, as `sit fid`), L1 and PSNR of the EMA
    decoder's reconstructions of --eval-num validation images. Use the run with --rae-decoder RUN.
    """
    flags = plain({k: v for k, v in locals().items() if k not in ("resume", "device") and v is not None})
    from sitcli.training.decoder import DecoderTrainConfig, resume_decoder_config
    from sitcli.training.decoder import train_decoder as run_training

    if resume is not None:
        config = resume_decoder_config(resume, flags)
    else:
        if "rae_encoder" not in flags:
            from sitcli.errors import InputError

            raise InputError("sit train-decoder needs --rae-encoder DINOV2 (a transformers folder or hub .pth)")
        config = DecoderTrainConfig(**flags)
    result = run_training(config, resume=resume is not None, device=device)
    if result.interrupted:
        if result.is_main:
            console.print(f"interrupted at step {result.step}; saved {result.checkpoint}. Continue with: sit "
                          f"train-decoder --resume {result.run}", highlight=False)
        raise typer.Exit(130)
    if result.is_main:
        line = f"trained decoder {result.run} to step {result.step}; checkpoint {result.checkpoint}"
        if result.evaluation:
            e = result.evaluation
            line += f"; rFID {e['rfid']:.4g}, L1 {e['l1']:.4g}, PSNR {e['psnr']:.2f} dB"
        console.print(line + f". Sample with --rae-decoder {result.run}", highlight=False)
