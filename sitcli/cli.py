"""The `sit` command line: parse flags, call the library, print results.

Each command gathers its flags into the library's own arguments or config object, makes one
library call and prints what came back; choices shown in the help (sampler methods, diffusion
coefficients) are read from the transport's registries.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from sitcli.cli_choices import (METHOD_HELP, SAMPLE_PANELS, TRAIN_PANELS, listed as _listed, panels, W_HELP, Convention, DiffusionCoefficient, Interpolant, LastStep,
                                LikelihoodMethod, LossWeight, Method, Objective, OdeMethod, Precision, Prediction, Sampler, Spacing,
                                TimeDensity, methods_by_kind, plain)
from sitcli.cli_errors import console, user_errors
from sitcli.errors import InputError
from sitcli.runtime import PRECISIONS
from sitcli.transport import INTERPOLANTS, LAST_STEPS, LIKELIHOOD_METHODS, LOSS_WEIGHTS, MEANFLOW_METHODS, ODE_METHODS, PREDICTIONS, SDE_METHODS
from sitcli.transport.time_conventions import CONVENTIONS
from sitcli.transport.time_grids import SPACINGS
from sitcli.transport.time_sampling import TIME_DENSITIES

app = typer.Typer(
    help="Scalable Interpolant Transformers: train, sample, evaluate (FID) and convert SiT models.",
    no_args_is_help=True,
    add_completion=True,  # sit --install-completion: bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
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


@app.command()
@panels(**TRAIN_PANELS)
@user_errors
def train(
    data: str | None = typer.Option(None, "--data", help="'digits' (built in, the default), an image folder with one sub-folder per class, or a latent cache from `sit cache-latents`."),
    out: str | None = typer.Option(None, "--out", help="Run folder to create (default runs/<data name>); an existing run is refused unless you --resume it."),
    resume: str | None = typer.Option(None, "--resume", help="Continue this run folder from its newest complete checkpoint (settings come from its config.json; --steps may be raised)."),
    model: str | None = typer.Option(None, "--model", help="SiT-{Ti,S,B,L,XL}/{2,4,8} (default: SiT-Ti/4 on digits, SiT-XL/2 otherwise)."),
    image_size: int | None = typer.Option(None, "--image-size", help="Side of the center-cropped images (default: 8 on digits, 256 otherwise)."),
    vae: str | None = typer.Option(None, "--vae", help="Local diffusers AutoencoderKL folder: train in its latent space (a latent cache records its own)."),
    interpolant: Interpolant | None = typer.Option(None, "--interpolant", case_sensitive=False, help=f"{_listed(INTERPOLANTS)} (default linear; the official code's --path-type)."),
    prediction: Prediction | None = typer.Option(None, "--prediction", "--pred", case_sensitive=False, help=f"What the model predicts: {_listed(PREDICTIONS)} (default velocity)."),
    loss_weight: LossWeight | None = typer.Option(None, "--loss-weight", case_sensitive=False, help=f"{_listed(LOSS_WEIGHTS)} (default none)."),
    train_eps: float | None = typer.Option(None, "--train-eps", help="Keep training times this far from singular ends (default: per interpolant)."),
    sample_eps: float | None = typer.Option(None, "--sample-eps", help="The same for sampling and likelihoods."),
    num_timesteps: int | None = typer.Option(None, "--num-timesteps", help="Discrete time: train on this many grid points (default continuous)."),
    time_density: TimeDensity | None = typer.Option(None, "--time-density", case_sensitive=False, help=f"Density of training times u in [0, 1] (sit's time, 0 noise), stretched over the train-eps interval: {'|'.join(TIME_DENSITIES)} (default uniform). In discrete time the grid points are weighted by it."),
    logit_mean: float | None = typer.Option(None, "--logit-mean", help="logit-normal: mean m of logit(u) (default 0). A mean m in SD3's convention (t = 1 noise) is -m here."),
    logit_std: float | None = typer.Option(None, "--logit-std", help="logit-normal: std of logit(u) (default 1; REPA's and LightningDiT's lognormal is 0, 1)."),
    mode_scale: float | None = typer.Option(None, "--mode-scale", help="mode: SD3's scale c in [-1, 1.75] (default 1.29; 0 is uniform)."),
    objective: Objective | None = typer.Option(None, "--objective", case_sensitive=False, help="flow: the interpolant's regression (default); meanflow: Mean Flows (Geng et al. 2025), the average velocity u(z, t, r) for one-step sampling, its target from one JVP (linear or gvp, velocity, continuous time; t and r from --time-density, the paper's is --time-density logit-normal --logit-mean 0.4 in sit's time)."),
    meanflow_share: float | None = typer.Option(None, "--meanflow-share", help="meanflow: share of (t, r) pairs with r != t, in [0, 1] (default 0.25, the paper's)."),
    meanflow_p: float | None = typer.Option(None, "--meanflow-p", help="meanflow: power p >= 0 of the adaptive weight 1 / (mse + c)^p (default 1; 0 is the plain squared error)."),
    meanflow_c: float | None = typer.Option(None, "--meanflow-c", help="meanflow: c > 0 of the adaptive weight (default 1e-3)."),
    meanflow_omega: float | None = typer.Option(None, "--meanflow-omega", help="meanflow: classifier-free guidance scale omega >= 1 folded into the target, sampled with one evaluation (default 1: none; needs labels and --class-dropout-prob > 0)."),
    lr: float | None = typer.Option(None, "--lr", help="AdamW learning rate (default 1e-4; 1e-3 on digits)."),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help="AdamW weight decay (default 0)."),
    ema_decay: float | None = typer.Option(None, "--ema-decay", help="EMA decay per step (default 0.9999; 0.995 on digits)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Global batch size over all ranks (default 256; 128 on digits)."),
    steps: int | None = typer.Option(None, "--steps", help="Training steps (default 400000; 2000 on digits)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Passes over the data, instead of --steps."),
    grad_clip: float | None = typer.Option(None, "--grad-clip", help="Clip the gradient norm to this value (default off)."),
    precision: Precision | None = typer.Option(None, "--precision", case_sensitive=False, help=f"{_listed(PRECISIONS)}: bf16 autocast; fp16 on CUDA only, with a gradient scaler."),
    compile: bool | None = typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
    fused_adamw: bool | None = typer.Option(None, "--fused-adamw/--no-fused-adamw", help="AdamW as one fused kernel: a faster optimiser step, weights not bit-identical to the default (~3e-8 per step)."),
    tf32: bool | None = typer.Option(None, "--tf32/--no-tf32", help="TF32 tensor cores for float32 matmuls and convolutions on CUDA (default on, as the official SiT/DiT scripts; --no-tf32 for bit-level reproduction; a run from before this setting resumes without). No effect on CPU."),
    grad_checkpointing: bool | None = typer.Option(None, "--grad-checkpointing/--no-grad-checkpointing", help="Recompute each transformer block's activations in the backward pass: far less activation memory (larger per-GPU batches) for ~1/3 more compute; same loss and gradients."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for initialisation, data order and noise (default 0)."),
    num_workers: int | None = typer.Option(None, "--num-workers", help="Data-loading processes per rank (default 4; 0 on digits)."),
    threads: int | None = typer.Option(None, "--threads", help="torch intra-op threads per rank (default: torch's; 1 on digits, whose tiny matrices gain nothing from more)."),
    log_every: int | None = typer.Option(None, "--log-every", help="Steps between log.csv rows."),
    ckpt_every: int | None = typer.Option(None, "--ckpt-every", help="Steps between checkpoints (one is always written at the end)."),
    sample_every: int | None = typer.Option(None, "--sample-every", help="Steps between EMA sample grids (0: none)."),
    class_dropout_prob: float | None = typer.Option(None, "--class-dropout-prob", help="Label dropout for classifier-free guidance (default 0.1)."),
    repa_encoder: list[str] | None = typer.Option(None, "--repa-encoder", help="REPA alignment: a frozen encoder from a local file (a transformers folder, e.g. DINOv2, or torch hub's dinov2_vit*14*_pretrain.pth); repeat it for several, one path each (a comma is part of a path); on a latent cache, the features it stores (`sit cache-latents --repa-encoder`). Default: off; pip install 'sit[repa]'."),
    repa_depth: int | None = typer.Option(None, "--repa-depth", help="The SiT block (1-based) whose tokens are aligned (default: REPA's 8 for XL and L, 4 for B and S; depth // 3 otherwise)."),
    repa_weight: float | None = typer.Option(None, "--repa-weight", help="Weight lambda of the alignment term (default 0.5)."),
    repa_projector_dim: int | None = typer.Option(None, "--repa-projector-dim", help="Hidden width of the projectors, three linear layers with SiLU to the encoder's width (default 2048)."),
    log: str | None = typer.Option(None, "--log-to", "--log", help="Where the numbers go (--log outside torchrun, which takes it for its --log-dir): a comma list of csv (log.csv, always written), tensorboard (<run>/tensorboard) and wandb (<run>/wandb; WANDB_MODE=offline for no network). Default csv."),
    eval_every: int | None = typer.Option(None, "--eval-every", help="Steps between FIDs of EMA samples during training (default 0: none); the weights stay what they are without it."),
    eval_num: int | None = typer.Option(None, "--eval-num", help="EMA samples per FID, sharded over ranks (default 5000)."),
    eval_ref: str | None = typer.Option(None, "--eval-ref", help="Reference statistics .npz for the FID, from `sit fid REF_IMAGES --save-stats STATS.npz`."),
    eval_method: OdeMethod | None = typer.Option(None, "--eval-method", case_sensitive=False, help=f"ODE method of the evaluation samples: {'|'.join(ODE_METHODS)} (default adams)."),
    eval_steps: int | None = typer.Option(None, "--eval-steps", help="Steps of that method (default 50)."),
    eval_metrics: str | None = typer.Option(None, "--eval-metrics", help="Metrics of each evaluation: fid (always), is (Inception Score), sfid (needs mu_s, sigma_s in --eval-ref); a comma list. Default fid."),
    inception_weights: str | None = typer.Option(None, "--inception-weights", help="Inception weights for --eval-every, as in `sit fid` (default: the torch hub checkpoints folder)."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda if available)."),
) -> None:
    """Train a SiT model; run it under `torchrun --nproc_per_node=K -m sitcli train ...` for DDP.

    Unset flags come from a preset chosen by --data: 'digits' gets the CPU quickstart (SiT-Ti/4 on 8x8, lr 1e-3, EMA 0.995, batch 128, 2000 steps); any other data the paper's settings (SiT-XL/2, 256x256, AdamW lr 1e-4, no weight decay, EMA 0.9999, batch 256). Flags you pass always win.
    """
    flags = plain({k: v for k, v in locals().items() if k not in ("resume", "device")})
    from sitcli.training import TrainingDiverged, config_from_flags
    from sitcli.training import train as run_training

    config = config_from_flags(flags, resume)
    try:
        result = run_training(config, resume=resume is not None, device=device)
    except TrainingDiverged as err:
        console.print(f"[bold red]stopped:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if result.interrupted:
        if result.is_main:
            console.print(f"interrupted at step {result.step}; saved {result.checkpoint}. Continue with: sit train --resume {result.run}", highlight=False)
        raise typer.Exit(130)
    if result.is_main:
        console.print(f"trained {result.run} to step {result.step}; checkpoint {result.checkpoint}", highlight=False)


@app.command()
@panels(**SAMPLE_PANELS)
@user_errors
def sample(
    ckpt: str = typer.Option(..., "--ckpt", help="A run folder (newest checkpoint), a checkpoint folder, a .safetensors weights file, or anything `sit convert` reads (official SiT/DiT .pt, diffusers folder)."),
    out: str | None = typer.Option(None, "--out", help="Folder for the PNGs (default: <run>/samples for a run folder, <name>-samples/ beside a checkpoint file); re-running into it draws only missing indices."),
    model: str | None = typer.Option(None, "--model", help="Check that --ckpt holds this architecture, e.g. SiT-XL/2 (it is read from the weights' shapes)."),
    src_format: str | None = typer.Option(None, "--from", help="Format of --ckpt where it cannot be told: official (SiT .pt) | dit | diffusers | sit (default: detected, as in `sit convert`)."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA weights (default) or the raw ones."),
    sampler: Sampler | None = typer.Option(None, "--sampler", case_sensitive=False, help="ode | sde | meanflow: the probability-flow ODE, the SDE with diffusion coefficient --w, or a mean-flow model's jumps (its default; --steps 1 is one-step generation). Default: meanflow for a mean-flow run, else ode (a mean-flow model's u(z, t, t) is its velocity, so ode and sde run it too)."),
    method: Method | None = typer.Option(None, "--method", case_sensitive=False, help=METHOD_HELP),
    steps: int | None = typer.Option(None, "--steps", help="Steps of a fixed-grid solver (default 50 ODE, 250 SDE), or mean-flow jumps (default 1)."),
    atol: float = typer.Option(1e-6, "--atol", help="Absolute tolerance of adaptive ODE solvers."),
    rtol: float = typer.Option(1e-3, "--rtol", help="Relative tolerance of adaptive ODE solvers."),
    w: DiffusionCoefficient = typer.Option("sigma", "--w", case_sensitive=False, help=W_HELP + " Default sigma."),
    w_norm: float = typer.Option(1.0, "--w-norm", help="Scale of w(t) (the official code's --diffusion-norm)."),
    last_step: LastStep = typer.Option("euler", "--last-step", case_sensitive=False, help=f"SDE last step: {_listed(LAST_STEPS)}. euler (default): a probability-flow ODE step, right for every w(t); mean: the official code's drift step, which narrows samples for large w."),
    last_step_size: float = typer.Option(0.04, "--last-step-size", help="Length in time of the SDE last step."),
    cfg_scale: float = typer.Option(1.0, "--cfg-scale", help="Classifier-free guidance scale (1 = none)."),
    cfg_interval: tuple[float, float] = typer.Option((0.0, 1.0), "--cfg-interval", help="Guide (classifier-free or autoguidance) only for LO <= t <= HI (t = 0 noise, 1 data), or LO, HI in --cfg-interval-in."),
    cfg_channels: str = typer.Option("all", "--cfg-channels", help="all, or 3 to guide the first 3 latent channels like the official checkpoints' numbers."),
    cfg_interval_in: Convention = typer.Option("t", "--cfg-interval-in", case_sensitive=False, help=f"Convention of --cfg-interval: {'|'.join(CONVENTIONS)}. With r = sigma_t / alpha_t of the model's interpolant: repa is REPA's time r / (1 + r) (1 - t for linear; REPA's --guidance-high 0.7 is --cfg-interval 0 0.7 --cfg-interval-in repa), sigma is EDM's sigma = r, logsnr is -2 log r."),
    guidance_model: str | None = typer.Option(None, "--guidance-model", help="Autoguidance: a weaker checkpoint (e.g. an earlier one of the run, same shape, classes, interpolant and prediction) as the guide; out = weak + W (model - weak). Two networks per step: NFE counts both."),
    guidance_scale: float = typer.Option(1.0, "--guidance-scale", help="Autoguidance scale W (1 = none); needs --guidance-model, excludes --cfg-scale."),
    spacing: Spacing | None = typer.Option(None, "--spacing", case_sensitive=False, help=f"Time grid of fixed-grid methods, adams and the SDE: {'|'.join(SPACINGS)} (default: uniform; adams cosine). edm: EDM's rho-spaced sigma = sigma_t / alpha_t (within EDM's 0.002 .. 80)."),
    time_shift: float = typer.Option(1.0, "--time-shift", help="Shift S of the time grid, SD3's t' = S t / (1 + (S - 1) t) with t = 1 noise, i.e. t / (S + (1 - S) t) in sit's time; S > 1 spends more steps near noise (1 = none; not for adaptive methods)."),
    edm_rho: float = typer.Option(7.0, "--edm-rho", help="rho of --spacing edm (EDM: 7)."),
    num: int = typer.Option(64, "--num-samples", "--num", help="Number of images (indices 0..N-1). Spelled --num-samples under torchrun, which takes --num for its own --numa-binding."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass per rank (does not change the images)."),
    seed: int = typer.Option(0, "--seed", help="Base seed; image i uses its own seed derived from (seed, i)."),
    precision: Precision = typer.Option("fp32", "--precision", case_sensitive=False, help=f"{_listed(PRECISIONS)}: bf16 autocast; fp16 on CUDA only."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model: fused kernels, a one-off build (about a minute for SiT-B/2 on a CPU); outputs differ from eager by float round-off."),
    tf32: bool = typer.Option(True, "--tf32/--no-tf32", help="TF32 tensor cores for float32 matmuls and convolutions on CUDA (default on, as the official sampling script; --no-tf32 for bit-level reproduction). No effect on CPU."),
    class_labels: str | None = typer.Option(None, "--class-labels", help="One label for all (3) or a comma list cycled over indices (1,4,7); default uniform random (see labels.csv)."),
    npz: bool = typer.Option(False, "--npz", help="Also write OUT/samples.npz (arr_0: N x H x W x 3 uint8, the ADM evaluator format)."),
    grid: str | None = typer.Option(None, "--grid", help="Also write a grid of the first 100 images to this PNG."),
    vae: str | None = typer.Option(None, "--vae", help="VAE folder for a latent model (default: the one the run was trained with)."),
    threads: int | None = typer.Option(None, "--threads", help="torch intra-op threads (default: the run's --threads setting)."),
    interpolant: Interpolant | None = typer.Option(None, "--interpolant", case_sensitive=False, help=f"For a checkpoint that does not record it (a bare weights file, a raw official .pt): {_listed(INTERPOLANTS)} (default linear)."),
    prediction: Prediction | None = typer.Option(None, "--prediction", "--pred", case_sensitive=False, help=f"Likewise: {_listed(PREDICTIONS)} (default velocity)."),
    sample_eps: float | None = typer.Option(None, "--sample-eps", help="Keep the sampler this far from singular ends of [0, 1] (a run's config.json fixes it)."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda if available)."),
) -> None:
    """Sample images from a trained SiT model, one PNG per index; shards over ranks under torchrun."""
    flags = plain({k: v for k, v in locals().items() if k != "device"})
    from sitcli.config import SampleConfig
    from sitcli.sample import sample as run_sampling

    config = SampleConfig(**flags)
    try:
        result = run_sampling(config, device=device)
    except KeyboardInterrupt:  # every finished image is already on disk
        console.print("interrupted; run the same command again to draw the missing images", highlight=False)
        raise typer.Exit(130) from None
    if not result.is_main:
        return
    console.print(
        f"{result.new} new images in {result.out} ({result.total} in all); NFE per sample {result.nfe_per_sample:.1f}; "
        f"{result.images_per_s:.1f} images/s", highlight=False)
    for path in (result.npz, result.grid):
        if path is not None:
            console.print(f"wrote {path}", highlight=False)


@app.command()
@user_errors
def nll(
    ckpt: str = typer.Option(..., "--ckpt", help="A pixel-space model: a run folder, checkpoint folder, weights file, or anything `sit sample` reads."),
    model: str | None = typer.Option(None, "--model", help="Check that --ckpt holds this architecture, e.g. SiT-S/2."),
    data: str | None = typer.Option(None, "--data", help="Data to score (default: the run's training data)."),
    num: int | None = typer.Option(None, "--num-samples", "--num", help="Score this many images, a seeded random subset (default 1000)."),
    limit: int | None = typer.Option(None, "--limit", hidden=True, help="Old spelling of --num."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per likelihood solve."),
    method: LikelihoodMethod = typer.Option("dopri5", "--method", case_sensitive=False, help=f"ODE method: {methods_by_kind(LIKELIHOOD_METHODS)}."),
    steps: int = typer.Option(100, "--steps", help="Steps of a fixed-grid method."),
    atol: float = typer.Option(1e-5, "--atol", help="Absolute tolerance."),
    rtol: float = typer.Option(1e-5, "--rtol", help="Relative tolerance."),
    divergence: str | None = typer.Option(None, "--divergence", help="exact | hutchinson (default: exact up to 1024 dimensions)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the subset, the dequantization noise and Hutchinson probes."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA weights (default) or the raw ones."),
    precision: Precision = typer.Option("fp32", "--precision", case_sensitive=False, help=f"{_listed(PRECISIONS[:2])}."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda if available)."),
) -> None:
    """Bits per dimension of a data set under a trained model (ODE likelihood, uniform dequantization)."""
    from sitcli.nll import nll as run_nll

    num = next((v for v in (num, limit) if v is not None), 1000)  # None is unset: 0 is refused, not the default
    result = run_nll(ckpt, data, num, batch_size, method.value, steps, atol, rtol, divergence, seed, ema,
                     precision.value, device, model=model)
    typer.echo(f"{result.bits_per_dim:.4f} ± {result.std_error:.4f} bits/dim over {result.num} images ({result.dims} dimensions)")


@app.command("cache-latents")
@user_errors
def cache_latents(
    data: str = typer.Option(..., "--data", help="Image folder with one sub-folder per class."),
    vae: str = typer.Option(..., "--vae", help="Local diffusers AutoencoderKL folder."),
    out: str = typer.Option(..., "--out", help="Folder for the cache; then train with `sit train --data OUT`."),
    image_size: int = typer.Option(256, "--image-size", help="Side of the center-cropped images."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per VAE forward pass."),
    num_workers: int = typer.Option(4, "--num-workers", help="Image-decoding processes."),
    seed: int = typer.Option(0, "--seed", help="Seed for the VAE posterior samples (image i draws its own noise, seeded by (seed, i))."),
    shard_size: int = typer.Option(4096, "--shard-size", help="Images per shard: the unit that ranks share out and that an interrupted extraction keeps."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda if available)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out, replacing a cache there (its other files are left alone)."),
    repa_encoder: list[str] | None = typer.Option(None, "--repa-encoder", help="Also store this frozen encoder's patch tokens (image and mirror) for `sit train --repa-encoder` on the cache; repeat for several. A shard holds them in memory: lower --shard-size for wide encoders."),
    repa_grid: int | None = typer.Option(None, "--repa-grid", help="Token grid side of the stored features (default: latent side // 2, SiT-*/2's grid; DINOv2 is fed grid * 14 pixels)."),
    repa_dtype: str = typer.Option("float16", "--repa-dtype", help="Storage of the features: float16 (half the disk; the loss moves by ~1e-3 relative) or float32 (what the encoder gives)."),
) -> None:
    """Encode an image folder once with the VAE (each image and its mirror image), and optionally REPA encoders' features, for fast latent training.

    Under `torchrun --nproc_per_node=K -m sitcli cache-latents ...` the K ranks encode disjoint shards (the cache is bit for bit the one-process cache); run the same command again after an interruption and only unfinished shards are encoded.
    """
    from sitcli.latent_cache import cache_latents as run_cache

    result = run_cache(data, vae, image_size, out, batch_size, num_workers, seed, device, shard_size=shard_size, overwrite=overwrite,
                       repa_encoder=repa_encoder or [], repa_grid=repa_grid, repa_dtype=repa_dtype)
    if result.is_main:
        reused = f" ({result.reused_shards} of {result.shards} shards kept from an earlier run)" if result.reused_shards else ""
        console.print(f"latent cache of {result.count} images written to {result.out}{reused}; train with: sit train --data {result.out}", highlight=False)


@app.command()
@user_errors
def fid(
    a: str = typer.Argument(..., metavar="A", help="Reference set: image folder, images .npz (arr_0, N x H x W x 3 uint8) or stats .npz (mu, sigma)."),
    b: str | None = typer.Argument(None, metavar="B", help="Sample set, same kinds. Optional with --save-stats, or with --metrics is alone."),
    metrics: str | None = typer.Option(None, "--metrics", "-m", help="Comma list of fid, is, sfid, pr, kid, fd_dinov2 (needs --dinov2), or 'all' (the five Inception metrics; default: fid, or none with one input)."),
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
    dinov2: str | None = typer.Option(None, "--dinov2", help="DINOv2 encoder for --metrics fd_dinov2 (ViT-L/14 in the paper): a local transformers folder or torch hub's dinov2_vitl14_pretrain.pth (pip install 'sit[repa]')."),
    fast: bool = typer.Option(
        False, "--fast",
        help="Fold Inception's batch norms into its convolutions and run it channels-last: ~1.5x on CPU; "
        "features move by float32 round-off (~1e-7), so statistics are no longer bit-for-bit pytorch-fid's.",
    ),
    tf32: bool = typer.Option(False, "--tf32", help="Let CUDA run Inception's float32 convolutions and matmuls in TF32: faster on A100/H100, features move by ~1e-3 (default: true float32, pytorch-fid's numbers on every GPU)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --save-stats or --json file (only once the new one is complete)."),
) -> None:
    """Compute FID and related metrics between a reference set A and a sample set B.

    FID reproduces pytorch-fid: same Inception-v3 weights, same preprocessing (PIL convert('RGB'), bilinear resize to 299x299 with align_corners=False, scale to [-1, 1]).

    sFID: the ADM evaluator's spatial features (Mixed_6d 1x1 branch, first 7 channels, 17x17). IS: of B, from the 1008-way logits. Precision/recall: k=3 neighbours; precision is B inside A's manifold. KID: unbiased polynomial-kernel MMD over random subsets.
    """
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from sitcli.evaluate import evaluate, inputs

    inputs.check_destination(json_out, overwrite, "--json")
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
        TimeRemainingColumn(), console=console, transient=True,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label if " " in label else f"Inception on {label}", total=total)
            bar.update(tasks[label], completed=done)

        result = evaluate(
            a, b, metrics, save_stats=save_stats, inception_weights=inception_weights, batch_size=batch_size,
            num_workers=num_workers, device=device, is_splits=is_splits, pr_subset=pr_subset,
            kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed, fast=fast, tf32=tf32, dinov2=dinov2, progress=progress,
            overwrite=overwrite,
        )
    for line in result["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    m = result["metrics"]
    rows = [
        ("FID", "fid", None), ("sFID", "sfid", None), ("Inception Score", "is", "is_std"),
        ("Precision", "precision", None), ("Recall", "recall", None), ("KID", "kid", "kid_std"),
        ("FD-DINOv2", "fd_dinov2", None),
    ]
    table = Table(title="sit fid")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for title, key, spread in rows:
        if key in m:
            table.add_row(title, f"{m[key]:.6g}" + (f" ± {m[spread]:.2g}" if spread else ""))
    for label, info in result["inputs"].items():
        count = f", {info['num_images']} images" if info["num_images"] is not None else ""
        table.add_row(f"[dim]{label}[/]", f"[dim]{escape(info['path'])} ({info['kind']}{count})[/]")
    Console().print(table)
    if result["saved_stats"]:
        console.print(f"statistics of A written to {result['saved_stats']}", highlight=False, markup=False)
    if json_out:
        console.print(f"results written to {inputs.write_json(json_out, result)}", highlight=False, markup=False)


@app.command()
@user_errors
def convert(
    src: str = typer.Argument(..., metavar="SRC", help="Checkpoint to read: a .pt file, a sit run/checkpoint folder or .safetensors, or a diffusers folder."),
    dst: str = typer.Argument(..., metavar="DST", help="File (official/dit) or folder (sit, diffusers) to create."),
    src_format: str | None = typer.Option(None, "--from", help="sit | official | dit | diffusers (default: detected; SiT and DiT .pt files are told apart by their training args or a SiT-/DiT- file name)."),
    dst_format: str | None = typer.Option(None, "--to", help="sit | official | dit | diffusers (default: official for a DST ending in .pt)."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Take the EMA weights (default) or the raw ones from a training checkpoint or run (a sit run keeps both)."),
    use: str | None = typer.Option(None, "--use", hidden=True, help="Old spelling: --use ema | model."),
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
    from sitcli.formats.architecture import describe

    if use is not None and use not in ("ema", "model"):
        raise InputError(f"--use {use!r} is not a weight set: pass --ema or --no-ema")
    # Large models take minutes (reading, writing, and the diffusers check forward): show that work goes on.
    with console.status(f"converting {escape(str(src))}", spinner="dots"):
        result = run_convert(src, dst, src_format, dst_format, ema if use is None else use == "ema", diffusers_class,
                             num_heads, overwrite, check)
    kind = "DiT (DDPM, noise prediction)" if result.kind == "dit" else "SiT"
    console.print(f"read {result.src} as {result.src_format}: {kind} weights, {describe(result.arch)}", highlight=False, soft_wrap=True)
    console.print(f"wrote {result.dst} as {result.dst_format} ({result.weights} weights)", highlight=False, soft_wrap=True)
    if result.deviation is not None:
        console.print(f"check: {result.deviation}", highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    for line in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)


@app.command()
def methods() -> None:
    """List the sampler methods with their model evaluations (NFE) per step and time grid."""
    from rich.table import Table

    table = Table("sampler", "method", "NFE per step", "what it is", title="sit sample --method")
    for sampler, registry, grid in (("ode", ODE_METHODS, ""), ("sde", SDE_METHODS, ", uniform grid"), ("meanflow", MEANFLOW_METHODS, "")):
        for m in registry.values():
            table.add_row(sampler, m.name, str(m.nfe_per_step or "adaptive"), m.summary + grid)
    Console().print(table)


def main() -> None:  # pragma: no cover - entry for `python -m`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
