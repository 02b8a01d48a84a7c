"""`sit sample` and `sit methods`: flags -> SampleConfig -> ``sample.sample`` -> a few lines."""

from __future__ import annotations

import typer
from rich.console import Console

from sitcli.cli.choices import (Convention, DiffusionCoefficient, Interpolant, LabelSampling, LastStep, Method,
                                Precision, Prediction, RecipeName, Sampler, Spacing, plain)
from sitcli.cli.errors import console

CKPT, SAMPLER, GUIDANCE, OUTPUT, SPEED = "Checkpoint", "Sampler", "Guidance", "Output", "Speed"


def sample(
    ctx: typer.Context,
    recipe: RecipeName | None = typer.Option(
        None, "--recipe", rich_help_panel=SAMPLER, help="A published sampler's settings (`sit recipes`); flags win."
    ),
    ckpt: str = typer.Option(
        ...,
        "--ckpt",
        rich_help_panel=CKPT,
        help="A run, checkpoint folder, .safetensors, official .pt or diffusers folder.",
    ),
    model: str | None = typer.Option(
        None, "--model", rich_help_panel=CKPT, help="Check that --ckpt holds this architecture, e.g. SiT-XL/2."
    ),
    src_format: str | None = typer.Option(
        None, "--from", rich_help_panel=CKPT, help="official | dit | diffusers | sit, where it cannot be told."
    ),
    ema: bool = typer.Option(True, "--ema/--no-ema", rich_help_panel=CKPT, help="The EMA weights or the raw ones."),
    vae: str | None = typer.Option(
        None, "--vae", rich_help_panel=CKPT, help="VAE folder of a latent model (default: the run's)."
    ),
    rae_encoder: str | None = typer.Option(
        None, "--rae-encoder", rich_help_panel=CKPT, help="An RAE model's DINOv2 (default: the run's)."
    ),
    rae_decoder: str | None = typer.Option(
        None, "--rae-decoder", rich_help_panel=CKPT, help="An RAE model's decoder (default: the run's)."
    ),
    latent_stats: str | None = typer.Option(
        None, "--latent-stats", rich_help_panel=CKPT, help="Latent statistics, for a model that records none."
    ),
    interpolant: Interpolant | None = typer.Option(
        None,
        "--interpolant",
        case_sensitive=False,
        rich_help_panel=CKPT,
        help="For a checkpoint that does not record it (linear).",
    ),
    prediction: Prediction | None = typer.Option(
        None, "--prediction", "--pred", case_sensitive=False, rich_help_panel=CKPT, help="Likewise (velocity)."
    ),
    sample_eps: float | None = typer.Option(
        None, "--sample-eps", rich_help_panel=CKPT, help="Likewise: keep this far from singular ends."
    ),
    dmf_depth: int | None = typer.Option(
        None, "--dmf-depth", rich_help_panel=CKPT, help="Likewise: a DMF model's blocks that see t (DMF-XL/2: 20)."
    ),
    omega: float | None = typer.Option(
        None, "--omega", rich_help_panel=GUIDANCE, help="Guidance scale fed to a model with an omega input (imf)."
    ),
    sampler: Sampler | None = typer.Option(
        None,
        "--sampler",
        case_sensitive=False,
        rich_help_panel=SAMPLER,
        help="ode, sde or meanflow (default: meanflow for such a model, else ode).",
    ),
    method: Method | None = typer.Option(
        None,
        "--method",
        case_sensitive=False,
        rich_help_panel=SAMPLER,
        help="adams (ODE), euler (SDE), jump (meanflow); see `sit methods`.",
    ),
    steps: int | None = typer.Option(
        None, "--steps", rich_help_panel=SAMPLER, help="Steps: 50 ODE, 250 SDE, 1 mean-flow jump."
    ),
    atol: float = typer.Option(1e-6, "--atol", rich_help_panel=SAMPLER, help="Absolute tolerance of adaptive ODEs."),
    rtol: float = typer.Option(1e-3, "--rtol", rich_help_panel=SAMPLER, help="Relative tolerance of adaptive ODEs."),
    w: DiffusionCoefficient = typer.Option(
        "sigma",
        "--w",
        case_sensitive=False,
        rich_help_panel=SAMPLER,
        help="The SDE's diffusion coefficient w(t) (official: --diffusion-form).",
    ),
    w_norm: float = typer.Option(
        1.0, "--w-norm", rich_help_panel=SAMPLER, help="Scale of w(t) (official: --diffusion-norm)."
    ),
    last_step: LastStep = typer.Option(
        "euler",
        "--last-step",
        case_sensitive=False,
        rich_help_panel=SAMPLER,
        help="How the SDE crosses its last step (mean: the official code's).",
    ),
    last_step_size: float = typer.Option(
        0.04, "--last-step-size", rich_help_panel=SAMPLER, help="Length in time of the SDE's last step."
    ),
    spacing: Spacing | None = typer.Option(
        None,
        "--spacing",
        case_sensitive=False,
        rich_help_panel=SAMPLER,
        help="Time grid of fixed-step methods (uniform; adams: cosine).",
    ),
    time_shift: str | None = typer.Option(
        None,
        "--time-shift",
        rich_help_panel=SAMPLER,
        help="SD3's shift S of the grid (S > 1: more steps near noise), or dimension (the run's).",
    ),
    edm_rho: float = typer.Option(7.0, "--edm-rho", rich_help_panel=SAMPLER, help="rho of --spacing edm (7)."),
    solver: str | None = typer.Option(
        None, "--solver", rich_help_panel=SAMPLER, help="--method searched: the file from `sit search-solver`."
    ),
    cfg_scale: float = typer.Option(
        1.0, "--cfg-scale", rich_help_panel=GUIDANCE, help="Classifier-free guidance scale (1: none)."
    ),
    cfg_interval: tuple[float, float] = typer.Option(
        (0.0, 1.0),
        "--cfg-interval",
        rich_help_panel=GUIDANCE,
        help="Guide only for LO <= t <= HI (in --cfg-interval-in).",
    ),
    cfg_interval_in: Convention = typer.Option(
        "t",
        "--cfg-interval-in",
        case_sensitive=False,
        rich_help_panel=GUIDANCE,
        help="The time convention of --cfg-interval.",
    ),
    cfg_channels: str = typer.Option(
        "all",
        "--cfg-channels",
        rich_help_panel=GUIDANCE,
        help="all, or 3 to guide 3 latent channels as the official numbers.",
    ),
    guidance_model: str | None = typer.Option(
        None, "--guidance-model", rich_help_panel=GUIDANCE, help="Autoguidance: a weaker checkpoint of the same shape."
    ),
    guidance_scale: float = typer.Option(
        1.0, "--guidance-scale", rich_help_panel=GUIDANCE, help="Autoguidance scale (1: none)."
    ),
    class_labels: str | None = typer.Option(
        None,
        "--class-labels",
        rich_help_panel=GUIDANCE,
        help="One label (3) or a list cycled over indices (1,4,7); default random.",
    ),
    labels: LabelSampling = typer.Option(
        "random",
        "--labels",
        case_sensitive=False,
        rich_help_panel=GUIDANCE,
        help="random, or balanced: exactly N / classes of each class (N a multiple).",
    ),
    out: str | None = typer.Option(
        None,
        "--out",
        rich_help_panel=OUTPUT,
        help="Folder for the PNGs (default RUN/samples); reruns add missing ones.",
    ),
    num: int = typer.Option(
        64,
        "--num-samples",
        "--num",
        rich_help_panel=OUTPUT,
        help="Number of images, indices 0..N-1 (--num-samples under torchrun).",
    ),
    batch_size: int = typer.Option(
        64, "--batch-size", rich_help_panel=OUTPUT, help="Images per forward pass per rank (the images stay the same)."
    ),
    seed: int = typer.Option(0, "--seed", rich_help_panel=OUTPUT, help="Base seed; image i has its own (seed, i)."),
    npz: bool = typer.Option(
        False, "--npz", rich_help_panel=OUTPUT, help="Also write OUT/samples.npz (the ADM evaluator's format)."
    ),
    grid: str | None = typer.Option(
        None, "--grid", rich_help_panel=OUTPUT, help="Also write a grid of the first 100 images to this image file."
    ),
    precision: Precision = typer.Option(
        "fp32", "--precision", case_sensitive=False, rich_help_panel=SPEED, help="bf16 autocast; fp16 on CUDA only."
    ),
    compile: bool = typer.Option(False, "--compile", rich_help_panel=SPEED, help="torch.compile the model."),
    tf32: bool = typer.Option(
        True, "--tf32/--no-tf32", rich_help_panel=SPEED, help="TF32 matmuls on CUDA (default on; no effect on CPU)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", rich_help_panel=SPEED, help="torch threads (default: the run's setting)."
    ),
    device: str | None = typer.Option(
        None, "--device", rich_help_panel=SPEED, help="cpu or cuda (default: cuda if available)."
    ),
) -> None:
    """Sample images from a trained SiT model, one PNG per index; shards over ranks under torchrun.

    The SDE is dX = [v + w(t) s] dt + sqrt(2 w(t)) dW (the SiT paper's w_t is 2 w(t)). Its last step is a
    probability-flow ODE step by default, right for every w(t); --last-step mean is the official code's drift step.
    --cfg-interval-in: repa is REPA's time 1 - t (the model's own time reversed, for every path); with
    r = sigma_t / alpha_t of the model's interpolant, sigma is EDM's sigma = r and logsnr is -2 log r.
    --time-shift S maps SD3's t' = S t / (1 + (S - 1) t) (t = 1 noise) onto sit's time; adaptive ODE methods
    choose their own steps and refuse it.
    dpm++2m, dpm++3m and unipc step in the log-SNR on a uniform grid (logsnr on VP); --method searched runs a
    solver searched for these weights by `sit search-solver` (--solver FILE; its steps and times are in the file).
    """
    flags = plain({k: v for k, v in locals().items() if k not in ("device", "ctx", "recipe")})  # first: the flags
    from sitcli.sample_config import SampleConfig
    from sitcli.sample import sample as run_sampling

    if recipe is None:
        config = SampleConfig(**flags)
    else:
        # The flags the user typed (click's ParameterSource, compared by name: typer ships its own copy of click).
        typed = {k: v for k, v in flags.items()
                 if getattr(ctx.get_parameter_source(k), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}
        config = SampleConfig.from_recipe(recipe.value, typed, defaults=flags)
        _print_recipe(config)
    try:
        result = run_sampling(config, device=device)
    except KeyboardInterrupt:  # every finished image is already on disk
        console.print("interrupted; run the same command again to draw the missing images", highlight=False)
        raise typer.Exit(130) from None
    if not result.is_main:
        return
    console.print(
        f"{result.new} new images in {result.out} ({result.total} in all); NFE per sample "
        f"{result.nfe_per_sample:.1f}; {result.images_per_s:.1f} images/s",
        highlight=False,
    )
    for path in (result.npz, result.grid):
        if path is not None:
            console.print(f"wrote {path}", highlight=False)


def _print_recipe(config) -> None:
    """The recipe as flags with its source, then each setting the command line gave another value (rank 0)."""
    from sitcli.distributed import is_main
    from sitcli.recipes import as_flags, get_recipe

    if not is_main():
        return
    recipe = get_recipe(config.recipe)
    console.print(f"recipe {recipe.name}: {as_flags(recipe.settings)}", highlight=False, soft_wrap=True)
    console.print(f"  for {recipe.checkpoint}; {recipe.result}; source: {recipe.source}", highlight=False,
                  soft_wrap=True)
    if recipe.lacks:
        console.print(f"  gaps: {recipe.lacks}", highlight=False, soft_wrap=True)
    for name, value in config.recipe_overrides.items():
        console.print(f"  override: {as_flags({name: value})} (the recipe's {as_flags({name: recipe.settings[name]})})",
                      highlight=False, soft_wrap=True)


def recipes() -> None:
    """List the named sampling recipes: the published result each redoes, its checkpoint, source and gaps."""
    from rich.markup import escape

    from sitcli.recipes import RECIPES, as_flags

    out = Console(soft_wrap=True, highlight=False)
    for r in RECIPES.values():
        out.print(f"[bold]{r.name}[/]  {escape(r.summary)}")
        needs = " ".join(f"--{n.replace('_', '-')}" for n in r.requires) or "nothing"
        rows = (("result", r.result), ("checkpoint", r.checkpoint), ("settings", as_flags(r.settings)),
                ("source", r.source), ("you add", needs), ("gaps", r.lacks or "none"))
        for label, text in rows:
            out.print(f"  {label + ':':<12}{escape(text)}")
        out.print()


def methods() -> None:
    """List the sampler methods with their model evaluations (NFE) per step and time grid."""
    from rich.table import Table

    from sitcli.transport import MEANFLOW_METHODS, ODE_METHODS, SDE_METHODS

    table = Table("sampler", "method", "NFE per step", "what it is", title="sit sample --method")
    for kind, registry, grid in (
        ("ode", ODE_METHODS, ""),
        ("sde", SDE_METHODS, ", uniform grid"),
        ("meanflow", MEANFLOW_METHODS, ""),
    ):
        for m in registry.values():
            table.add_row(kind, m.name, str(m.nfe_per_step or "adaptive"), m.summary + grid)
    Console().print(table)
