"""`sit train`: flags -> TrainConfig -> ``training.train`` -> one line."""

from __future__ import annotations

import typer

from sitcli.cli.choices import (Interpolant, LabelSampling, LossWeight, Objective, OdeMethod, Precision, Prediction,
                                TimeDensity, plain)
from sitcli.cli.errors import console

DATA, MODEL, TRANSPORT, MEANFLOW = "Data and run", "Model", "Transport", "Few-step objectives"
LATENT = "Latent space (RAE, statistics)"
OPTIM, REPA, LOGS, SPEED = "Optimisation", "Representation alignment", "Logs, checkpoints and evaluation", "Speed"


def train(
    data: str | None = typer.Option(
        None,
        "--data",
        rich_help_panel=DATA,
        help="digits (the default), an image folder (a sub-folder per class) or a cache.",
    ),
    out: str | None = typer.Option(
        None, "--out", rich_help_panel=DATA, help="Run folder to create (default runs/DATA_NAME)."
    ),
    resume: str | None = typer.Option(
        None, "--resume", rich_help_panel=DATA, help="Continue this run folder from its newest intact checkpoint."
    ),
    image_size: int | None = typer.Option(
        None, "--image-size", rich_help_panel=DATA, help="Side of the center-cropped images (8 on digits, else 256)."
    ),
    vae: str | None = typer.Option(
        None, "--vae", rich_help_panel=DATA, help="Local diffusers AutoencoderKL folder: train in its latent space."
    ),
    seed: int | None = typer.Option(
        None, "--seed", rich_help_panel=DATA, help="Seed of initialisation, data order and noise (default 0)."
    ),
    device: str | None = typer.Option(
        None, "--device", rich_help_panel=DATA, help="cpu or cuda (default: cuda if available)."
    ),
    rae_encoder: str | None = typer.Option(
        None, "--rae-encoder", rich_help_panel=LATENT, help="Instead of --vae: an RAE's DINOv2 (folder or hub .pth)."
    ),
    rae_decoder: str | None = typer.Option(
        None, "--rae-decoder", rich_help_panel=LATENT, help="Its decoder (RAE's model.pt or a train-decoder run)."
    ),
    rae_patch: int | None = typer.Option(
        None, "--rae-patch", rich_help_panel=LATENT, help="The RAE decoder's patch, when no decoder is given (16)."
    ),
    latent_stats: str | None = typer.Option(
        None, "--latent-stats", rich_help_panel=LATENT, help="Latent statistics (sit latent-stats; RAE's stat.pt)."
    ),
    time_shift: str | None = typer.Option(
        None, "--time-shift", rich_help_panel=LATENT, help="Shift training times by S, or 'dimension' (RAE's)."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        rich_help_panel=MODEL,
        help="SiT-{Ti,S,B,L,XL}/{1,2,4,8} or DiTDH-{Ti,S,XL} (SiT-Ti/4 on digits, else SiT-XL/2).",
    ),
    head_width: int | None = typer.Option(
        None, "--head-width", rich_help_panel=MODEL, help="DiTDH-*: width of the DDT head (2048)."
    ),
    head_depth: int | None = typer.Option(
        None, "--head-depth", rich_help_panel=MODEL, help="DiTDH-*: blocks of the DDT head (2)."
    ),
    class_dropout_prob: float | None = typer.Option(
        None, "--class-dropout-prob", rich_help_panel=MODEL, help="Label dropout for classifier-free guidance (0.1)."
    ),
    grad_checkpointing: bool | None = typer.Option(
        None,
        "--grad-checkpointing/--no-grad-checkpointing",
        rich_help_panel=MODEL,
        help="Recompute block activations in backward: less memory.",
    ),
    interpolant: Interpolant | None = typer.Option(
        None,
        "--interpolant",
        case_sensitive=False,
        rich_help_panel=TRANSPORT,
        help="The path from noise to data (official: --path-type).",
    ),
    prediction: Prediction | None = typer.Option(
        None, "--prediction", "--pred", case_sensitive=False, rich_help_panel=TRANSPORT, help="What the model predicts."
    ),
    loss_weight: LossWeight | None = typer.Option(
        None, "--loss-weight", case_sensitive=False, rich_help_panel=TRANSPORT, help="Weight of the loss over time."
    ),
    train_eps: float | None = typer.Option(
        None, "--train-eps", rich_help_panel=TRANSPORT, help="Keep training times this far from singular ends."
    ),
    sample_eps: float | None = typer.Option(
        None, "--sample-eps", rich_help_panel=TRANSPORT, help="The same for sampling and likelihoods."
    ),
    num_timesteps: int | None = typer.Option(
        None, "--num-timesteps", rich_help_panel=TRANSPORT, help="Discrete time: train on this many grid points."
    ),
    time_density: TimeDensity | None = typer.Option(
        None,
        "--time-density",
        case_sensitive=False,
        rich_help_panel=TRANSPORT,
        help="Density of training times, in sit's time (0 noise).",
    ),
    logit_mean: float | None = typer.Option(
        None, "--logit-mean", rich_help_panel=TRANSPORT, help="logit-normal: mean of logit(t) (0; SD3's m is -m here)."
    ),
    logit_std: float | None = typer.Option(
        None, "--logit-std", rich_help_panel=TRANSPORT, help="logit-normal: std of logit(t) (1)."
    ),
    mode_scale: float | None = typer.Option(
        None, "--mode-scale", rich_help_panel=TRANSPORT, help="mode: SD3's scale in [-1, 1.75] (1.29)."
    ),
    objective: Objective | None = typer.Option(
        None,
        "--objective",
        case_sensitive=False,
        rich_help_panel=MEANFLOW,
        help="flow (default), meanflow, or a fine-tuning: dmf, imf, alphaflow (see the README).",
    ),
    meanflow_share: float | None = typer.Option(
        None, "--meanflow-share", rich_help_panel=MEANFLOW, help="Share of (t, r) pairs with r != t (0.25; DMF: 0.5)."
    ),
    meanflow_p: float | None = typer.Option(
        None, "--meanflow-p", rich_help_panel=MEANFLOW, help="Power p of the adaptive weight 1 / (mse + c)^p (1)."
    ),
    meanflow_c: float | None = typer.Option(
        None, "--meanflow-c", rich_help_panel=MEANFLOW, help="c of the adaptive weight (1e-3)."
    ),
    meanflow_omega: float | None = typer.Option(
        None, "--meanflow-omega", rich_help_panel=MEANFLOW, help="Guidance scale folded into the target (1: none)."
    ),
    init_from: str | None = typer.Option(
        None, "--init-from", rich_help_panel=MEANFLOW, help="Start from this flow checkpoint (any `sit sample` reads)."
    ),
    dmf_depth: int | None = typer.Option(
        None, "--dmf-depth", rich_help_panel=MEANFLOW, help="DMF: the first N blocks see t, the rest r (5/7 of depth)."
    ),
    dmf_guidance_interval: tuple[float, float] | None = typer.Option(
        None, "--dmf-guidance-interval", rich_help_panel=MEANFLOW, help="dmf: guide for LO <= t <= HI (0 1)."
    ),
    imf_omega_max: float | None = typer.Option(
        None, "--imf-omega-max", rich_help_panel=MEANFLOW, help="imf: omega drawn in [1, W], fed to the model (1)."
    ),
    imf_omega_beta: float | None = typer.Option(
        None, "--imf-omega-beta", rich_help_panel=MEANFLOW, help="imf: omega's density is omega^-beta (1)."
    ),
    velocity_head_depth: int | None = typer.Option(
        None, "--velocity-head-depth", rich_help_panel=MEANFLOW, help="imf: blocks of the velocity head (depth/4)."
    ),
    alphaflow_start: int | None = typer.Option(
        None, "--alphaflow-start", rich_help_panel=MEANFLOW, help="alphaflow: the step where alpha leaves 1 (0)."
    ),
    alphaflow_end: int | None = typer.Option(
        None, "--alphaflow-end", rich_help_panel=MEANFLOW, help="alphaflow: the step where alpha reaches 0 (--steps)."
    ),
    alphaflow_gamma: float | None = typer.Option(
        None, "--alphaflow-gamma", rich_help_panel=MEANFLOW, help="alphaflow: steepness of alpha's sigmoid (25)."
    ),
    lr: float | None = typer.Option(
        None, "--lr", rich_help_panel=OPTIM, help="AdamW learning rate (1e-4; 1e-3 digits)."
    ),
    weight_decay: float | None = typer.Option(
        None, "--weight-decay", rich_help_panel=OPTIM, help="AdamW weight decay (0)."
    ),
    ema_decay: float | None = typer.Option(
        None, "--ema-decay", rich_help_panel=OPTIM, help="EMA decay per step (0.9999; 0.995 on digits)."
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", rich_help_panel=OPTIM, help="Global batch size over all ranks (256; 128 on digits)."
    ),
    steps: int | None = typer.Option(
        None, "--steps", rich_help_panel=OPTIM, help="Training steps (400000; 2000 on digits)."
    ),
    epochs: int | None = typer.Option(
        None, "--epochs", rich_help_panel=OPTIM, help="Passes over the data, instead of --steps."
    ),
    grad_clip: float | None = typer.Option(
        None, "--grad-clip", rich_help_panel=OPTIM, help="Clip the gradient norm to this value (default off)."
    ),
    fused_adamw: bool | None = typer.Option(
        None,
        "--fused-adamw/--no-fused-adamw",
        rich_help_panel=OPTIM,
        help="One fused AdamW kernel: faster, not bit-identical.",
    ),
    repa_encoder: list[str] | None = typer.Option(
        None, "--repa-encoder", rich_help_panel=REPA, help="A frozen encoder's local file or folder (repeatable)."
    ),
    repa_depth: int | None = typer.Option(
        None, "--repa-depth", rich_help_panel=REPA, help="The 1-based block whose tokens are aligned."
    ),
    repa_weight: float | None = typer.Option(
        None, "--repa-weight", rich_help_panel=REPA, help="Weight of the alignment term (0.5)."
    ),
    repa_projector_dim: int | None = typer.Option(
        None, "--repa-projector-dim", rich_help_panel=REPA, help="Hidden width of the projectors (2048)."
    ),
    log: str | None = typer.Option(
        None, "--log-to", "--log", rich_help_panel=LOGS, help="Comma list of csv, tensorboard, wandb (csv always)."
    ),
    log_every: int | None = typer.Option(None, "--log-every", rich_help_panel=LOGS, help="Steps between log rows."),
    ckpt_every: int | None = typer.Option(
        None, "--ckpt-every", rich_help_panel=LOGS, help="Steps between checkpoints (one is written at the end)."
    ),
    sample_every: int | None = typer.Option(
        None, "--sample-every", rich_help_panel=LOGS, help="Steps between EMA sample grids (0: none)."
    ),
    eval_every: int | None = typer.Option(
        None, "--eval-every", rich_help_panel=LOGS, help="Steps between FIDs of EMA samples (0: none)."
    ),
    eval_num: int | None = typer.Option(
        None, "--eval-num", rich_help_panel=LOGS, help="EMA samples per FID, over all ranks (5000)."
    ),
    eval_ref: str | None = typer.Option(
        None, "--eval-ref", rich_help_panel=LOGS, help="Reference statistics .npz from `sit fid --save-stats`."
    ),
    eval_method: OdeMethod | None = typer.Option(
        None,
        "--eval-method",
        case_sensitive=False,
        rich_help_panel=LOGS,
        help="ODE method of the evaluation samples (adams).",
    ),
    eval_steps: int | None = typer.Option(
        None, "--eval-steps", rich_help_panel=LOGS, help="Steps of that method (50)."
    ),
    eval_metrics: str | None = typer.Option(
        None, "--eval-metrics", rich_help_panel=LOGS, help="Comma list of fid (always), is, sfid."
    ),
    inception_weights: str | None = typer.Option(
        None, "--inception-weights", rich_help_panel=LOGS, help="Inception weights for --eval-every, as for `sit fid`."
    ),
    eval_labels: LabelSampling | None = typer.Option(
        None, "--eval-labels", case_sensitive=False, rich_help_panel=LOGS,
        help="random, or balanced: --eval-num / classes of each class.",
    ),
    ema_snapshots_every: int | None = typer.Option(
        None, "--ema-snapshots-every", rich_help_panel=OPTIM, help="Steps between post-hoc EMA snapshots (0: none)."
    ),
    ema_sigma_rels: list[float] | None = typer.Option(
        None, "--ema-sigma-rels", rich_help_panel=OPTIM, help="A width the snapshots track (repeatable; 0.05 and 0.1)."
    ),
    precision: Precision | None = typer.Option(
        None, "--precision", case_sensitive=False, rich_help_panel=SPEED, help="bf16 autocast; fp16 on CUDA only."
    ),
    compile: bool | None = typer.Option(
        None, "--compile/--no-compile", rich_help_panel=SPEED, help="torch.compile the model."
    ),
    tf32: bool | None = typer.Option(
        None, "--tf32/--no-tf32", rich_help_panel=SPEED, help="TF32 matmuls on CUDA (default on; no effect on CPU)."
    ),
    num_workers: int | None = typer.Option(
        None, "--num-workers", rich_help_panel=SPEED, help="Data-loading processes per rank (4; 0 on digits)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", rich_help_panel=SPEED, help="torch threads per rank (torch's; 1 on digits)."
    ),
) -> None:
    """Train a SiT model; run it under `torchrun --nproc_per_node=K -m sitcli train ...` for DDP.

    Unset flags come from a preset chosen by --data: digits gets the CPU quickstart (SiT-Ti/4 on 8x8, lr 1e-3,
    EMA 0.995, batch 128, 2000 steps); any other data the paper's settings (SiT-XL/2, 256x256, AdamW lr 1e-4, no
    weight decay, EMA 0.9999, batch 256). Flags you pass always win; config.json records the resolved values.
    Mean flows (--objective meanflow) and the few-step objectives need velocity prediction, the linear or GVP
    interpolant and continuous time. --init-from starts the run from a trained flow model's EMA weights (its size,
    data shape and transport must be the run's); dmf, imf and alphaflow are meant to fine-tune one. --dmf-depth
    counts the blocks that see t (DMF's meaning: DMF-XL/2 uses 20 of 28); the rest and the final layer see r.
    REPA's encoders are local transformers folders (e.g. DINOv2) or torch hub's DINOv2 .pth files
    (pip install 'sit[repa]'); on a latent cache, the features it stores.
    RAE: --rae-encoder DINOV2 --latent-stats STATS (RAE's stat.pt, or `sit latent-stats`) trains in its
    latent space, encoding on the fly (or --data a cache from `sit cache-latents --rae-encoder`);
    --time-shift dimension shifts the training times by RAE's sqrt(C*H*W/4096) (6.928 for 768x16x16), which
    `sit sample` then uses by default; --model DiTDH-XL is RAE's DiT with the wide DDT head. --log-to is spelled
    --log outside torchrun, which takes --log for its --log-dir.
    """
    flags = plain({k: v for k, v in locals().items() if k not in ("resume", "device")})  # first: only the flags
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
            console.print(
                f"interrupted at step {result.step}; saved {result.checkpoint}. "
                f"Continue with: sit train --resume {result.run}",
                highlight=False,
            )
        raise typer.Exit(130)
    if result.is_main:
        console.print(f"trained {result.run} to step {result.step}; checkpoint {result.checkpoint}", highlight=False)
