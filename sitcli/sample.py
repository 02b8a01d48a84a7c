"""Sampling: images from a trained model, one PNG per global index, resumable and shardable.

Every index i has its own random streams, seeded from (seed, i): its class label (when labels are
random), its starting noise and, for the SDE, its Brownian increments. An image therefore does not
depend on the batch it was drawn in, on the number of ranks, or on restarts; re-running into the
same folder only draws the missing indices. (With an adaptive ODE solver the step sizes are chosen
per batch, so images agree only up to the solver tolerance across batch sizes.)
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sitcli import checkpoint, distributed
from sitcli.errors import InputError
from sitcli.guidance import ClassifierFreeGuidance
from sitcli.images import make_grid, open_vae, read_png, to_images, to_pil
from sitcli.models import SiT_models
from sitcli.train import TrainConfig
from sitcli.transport import ADAPTIVE_METHODS, FIXED_GRID_METHODS, LAST_STEPS, MULTISTEP_METHODS, SDE_METHODS, Transport, sample_ode, sample_sde
from sitcli.transport.diffusion import check_diffusion_coefficient

SETTINGS_FILE = "sample.json"
# Settings that do not change any image: they may differ when a folder is filled in several runs.
FREE_SETTINGS = {"out", "num", "batch_size", "npz", "grid", "threads", "extra"}


@dataclass
class SampleConfig:
    """Every sampling setting (``sample.json`` in the output folder is ``asdict`` of this)."""

    ckpt: str
    out: str | None = None  # default: <run>/samples
    model: str | None = None  # only for a bare weights file
    src_format: str | None = None  # format of ckpt (sit convert's --from); None: detected
    ema: bool = True
    sampler: str = "ode"
    method: str | None = None  # ode: adams; sde: euler
    steps: int | None = None  # ode: 50; sde: 250
    atol: float = 1e-6
    rtol: float = 1e-3
    w: str = "sigma"
    w_norm: float = 1.0
    last_step: str = "mean"
    last_step_size: float = 0.04
    cfg_scale: float = 1.0
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    cfg_channels: str = "all"
    num: int = 64
    batch_size: int = 64
    seed: int = 0
    precision: str = "fp32"
    compile: bool = False  # torch.compile the model (fused kernels; float round-off differences)
    class_labels: str | None = None  # "3", "1,4,7" (cycled), or None for uniform random labels
    npz: bool = False
    grid: str | None = None
    vae: str | None = None
    threads: int | None = None  # torch intra-op threads; None: the run's setting, 0: torch's default
    # Only for a bare weights file (a run's config.json fixes them):
    interpolant: str | None = None
    prediction: str | None = None
    sample_eps: float | None = None

    def __post_init__(self):
        if self.sampler not in ("ode", "sde"):
            raise InputError(f"unknown sampler {self.sampler!r}; choose ode or sde")
        self.method = self.method or ("adams" if self.sampler == "ode" else "euler")
        self.steps = self.steps or (50 if self.sampler == "ode" else 250)
        self.cfg_interval = tuple(float(v) for v in self.cfg_interval)
        if self.num < 1 or self.batch_size < 1:
            raise InputError("--num and --batch-size must be at least 1")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise InputError(f"unknown precision {self.precision!r}; choose fp32 or bf16 (fp16 on CUDA)")
        methods = [*FIXED_GRID_METHODS, *MULTISTEP_METHODS, *ADAPTIVE_METHODS] if self.sampler == "ode" else list(SDE_METHODS)
        if self.method not in methods:
            raise InputError(f"unknown {self.sampler.upper()} method {self.method!r}; choose one of {', '.join(methods)}")
        if self.sampler == "sde":
            self.w = check_diffusion_coefficient(self.w)
            if self.last_step not in LAST_STEPS:
                raise InputError(f"unknown --last-step {self.last_step!r}; choose one of {', '.join(LAST_STEPS)}")
        if self.cfg_channels != "all" and not (str(self.cfg_channels).isdigit() and int(self.cfg_channels) > 0):
            raise InputError(f"--cfg-channels {self.cfg_channels!r}: pass 'all' or a number of channels such as 3")


#################################################################################
#                                Loading a model                                #
#################################################################################


@dataclass
class Trained:
    """A model ready for inference with what sampling needs to know about it."""

    model: torch.nn.Module  # called as model(x, t, y) in sit's time (t = 0 noise, 1 data)
    config: TrainConfig  # the settings it was trained with (shapes, classes, latent space)
    transport: Transport
    weights: Path  # the file or folder the weights came from


def load_trained(ckpt: str, model: str | None = None, ema: bool = True, src_format: str | None = None,
                 **transport: object) -> Trained:
    """Load ``ckpt`` for inference: a run folder (newest checkpoint), a checkpoint folder, a bare
    .safetensors file (needs ``model``; ``transport`` settings interpolant / prediction / sample_eps
    apply to it), or what ``sit convert`` reads (official SiT/DiT .pt files, diffusers folders,
    runs converted from DiT), through ``convert.load_for_sampling``; ``src_format`` names the
    format (official | dit | diffusers | sit) where it cannot be detected.
    """
    from sitcli.convert import is_foreign_checkpoint, load_for_sampling

    transport = {k: v for k, v in transport.items() if v is not None}
    if Path(ckpt).exists() and (src_format not in (None, "sit") or is_foreign_checkpoint(ckpt)):
        net, tr, info = load_for_sampling(ckpt, use="ema" if ema else "model", src_format=src_format,
                                          sample_eps=transport.get("sample_eps"))
        if info["config"] is not None:
            cfg = TrainConfig.from_dict(info["config"], source=str(ckpt))
        else:  # an architecture outside the size table: only the shapes matter here
            cfg = TrainConfig(data="external", **{k: info[k] for k in ("in_channels", "input_size", "num_classes",
                                                                       "image_size", "latent_scale", "vae")})
        if model is not None and info["config"] is not None and model != cfg.model:
            raise InputError(f"{ckpt} holds a {cfg.model}, not a {model}; drop --model")
        return Trained(net.eval(), cfg, tr, Path(ckpt))
    weights, run = checkpoint.resolve_weights(ckpt, ema)
    if run is not None:
        cfg = TrainConfig.from_dict(checkpoint.read_config(run), source=f"{run}/{checkpoint.CONFIG}")
        for name, value in [("model", model), *transport.items()]:
            if value is not None and value != getattr(cfg, name):
                raise InputError(f"{run} was trained with {name}={getattr(cfg, name)}; drop --{name.replace('_', '-')} {value}")
    elif model is None:
        raise InputError(f"--ckpt {ckpt} is a bare weights file; pass --model (e.g. SiT-XL/2) to say its architecture")
    state = checkpoint.load_weights(weights)
    if run is None:
        cfg = config_from_state_dict(state, model, str(weights), **transport)
    net = cfg.build_model()
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(
            f"{weights} does not match {cfg.model} (missing {len(missing)} tensors, e.g. {missing[:1]}; "
            f"unexpected {len(unexpected)}, e.g. {unexpected[:1]}); pass the --model it was trained as"
        )
    return Trained(net.eval().requires_grad_(False), cfg, cfg.transport(), weights)


def config_from_state_dict(state: dict[str, torch.Tensor], model: str, source: str, **settings: object) -> TrainConfig:
    """Settings for a bare SiT state dict: shapes give image size, channels and classes."""
    if model not in SiT_models:
        raise InputError(f"unknown model {model!r}; choose one of {', '.join(SiT_models)}")
    try:
        hidden, in_channels, patch, _ = state["x_embedder.proj.weight"].shape
        num_patches = state["pos_embed"].shape[1]
        num_classes = state["y_embedder.embedding_table.weight"].shape[0] - 1
        out_features = state["final_layer.linear.weight"].shape[0]
    except KeyError as err:
        raise InputError(f"{source} is not a SiT/DiT state dict (no {err.args[0]}); convert it with `sit convert`") from None
    reference = SiT_models[model](input_size=patch * 2, in_channels=in_channels, num_classes=1)
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    expected = (reference.x_embedder.proj.weight.shape[0], reference.patch_size, len(reference.blocks))
    if (hidden, patch, depth) != expected:
        raise InputError(
            f"{source} is a different architecture than {model} (hidden {hidden}, patch {patch}, depth {depth}; "
            f"{model} has {expected[0]}, {expected[1]}, {expected[2]}); pass the matching --model"
        )
    input_size = int(math.isqrt(num_patches)) * patch
    latent = in_channels == 4  # the official checkpoints' SD-VAE latents; 1 or 3 channels are pixels
    return TrainConfig(
        data="external", model=model, in_channels=in_channels, input_size=input_size,
        image_size=input_size * 8 if latent else input_size, num_classes=num_classes,
        learn_sigma=out_features == 2 * patch * patch * in_channels, latent_scale=0.18215 if latent else None, **settings,
    )


def _autocast_model(model: torch.nn.Module, precision: str, device: torch.device):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def call(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            return model(x, t, y)

    return call


#################################################################################
#                                  Per-index seeds                              #
#################################################################################


def index_generator(seed: int, index: int, device: str | torch.device = "cpu", stream: int = 0) -> torch.Generator:
    """The generator of sample ``index``: seeded by (seed, index, stream) alone."""
    if not 0 <= seed < 2**30 or not 0 <= index < 2**32:
        raise InputError(f"--seed must lie in [0, {2**30}) and sample indices below 2**32")
    return torch.Generator(device).manual_seed((stream << 62) | (seed << 32) | index)


def labels_and_noise(seed: int, indices: list[int], shape: tuple[int, ...], num_classes: int, class_labels: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-index class labels and starting noise (CPU), the same on every device and batch split.

    A random label is always drawn first, so the noise of an index does not depend on ``class_labels``.
    """
    fixed = parse_class_labels(class_labels, num_classes)
    labels, noise = [], []
    for i in indices:
        g = index_generator(seed, i)
        drawn = int(torch.randint(0, max(num_classes, 1), (1,), generator=g))
        labels.append(fixed[i % len(fixed)] if fixed else drawn)
        noise.append(torch.randn(shape, generator=g))
    return torch.tensor(labels, dtype=torch.long), torch.stack(noise)


def parse_class_labels(class_labels: str | None, num_classes: int) -> list[int]:
    if class_labels is None or str(class_labels).strip() == "":
        return []
    try:
        labels = [int(v) for v in str(class_labels).split(",")]
    except ValueError:
        raise InputError(f"--class-labels {class_labels!r}: pass one label (3) or a comma list (1,4,7)") from None
    bad = [v for v in labels if not 0 <= v < num_classes]
    if bad:
        raise InputError(f"--class-labels {bad[0]} is out of range: the model has classes 0..{num_classes - 1}")
    return labels


#################################################################################
#                                    The job                                    #
#################################################################################


@dataclass
class SampleResult:
    out: Path
    new: int  # images drawn by this call (all ranks)
    total: int
    nfe_per_sample: float
    images_per_s: float
    npz: Path | None = None
    grid: Path | None = None
    is_main: bool = True  # rank 0 (the one that reports)


def sample(cfg: SampleConfig, progress: bool = True, device: str | None = None) -> SampleResult:
    """Draw the missing images of ``cfg.out`` (indices 0..num-1), sharded over torchrun ranks."""
    dist = distributed.setup(device)
    threads = torch.get_num_threads()
    try:
        return _sample(cfg, progress, dist)
    finally:
        torch.set_num_threads(threads)
        distributed.teardown(dist)


def _sample(cfg: SampleConfig, progress: bool, dist: distributed.Dist) -> SampleResult:
    if cfg.precision == "fp16" and dist.device.type != "cuda":
        raise InputError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    trained = load_trained(cfg.ckpt, cfg.model, cfg.ema, cfg.src_format, interpolant=cfg.interpolant, prediction=cfg.prediction,
                           sample_eps=cfg.sample_eps)
    tcfg, transport = trained.config, trained.transport
    if cfg.threads if cfg.threads is not None else tcfg.threads:
        torch.set_num_threads(cfg.threads if cfg.threads is not None else tcfg.threads)
    model = trained.model.to(dist.device)
    if cfg.compile:
        model = torch.compile(model)
    vae = open_vae(tcfg, cfg.vae, dist.device)
    conditional = tcfg.num_classes > 0
    if not conditional and (cfg.cfg_scale != 1.0 or cfg.class_labels):
        raise InputError("the model is unconditional: drop --cfg-scale and --class-labels")
    fn = _autocast_model(model, cfg.precision, dist.device)
    if cfg.cfg_scale != 1.0:
        channels = cfg.cfg_channels if cfg.cfg_channels == "all" else int(cfg.cfg_channels)
        fn = ClassifierFreeGuidance(fn, cfg.cfg_scale, null_class=tcfg.num_classes, channels=channels, interval=cfg.cfg_interval)
    shape = (tcfg.in_channels, tcfg.input_size, tcfg.input_size)

    out = Path(cfg.out or _default_out(cfg.ckpt))
    settings = {k: v for k, v in asdict(cfg).items() if k not in FREE_SETTINGS}
    settings["cfg_interval"] = list(settings["cfg_interval"])
    settings["ckpt"] = str(trained.weights.resolve())  # images from another checkpoint must not share the folder
    _check_folder(out, settings)
    width = max(6, len(str(cfg.num - 1)))
    names = [out / f"{i:0{width}d}.png" for i in range(cfg.num)]
    all_labels, _ = labels_and_noise(cfg.seed, list(range(cfg.num)), (0,), max(tcfg.num_classes, 1), cfg.class_labels)
    todo = [i for i in range(cfg.num) if not names[i].is_file()]
    distributed.barrier()  # every rank has listed the folder before any rank writes to it
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.write_json(out / SETTINGS_FILE, settings)
        checkpoint.atomic_write_text(out / "labels.csv", "index,label\n" + "".join(f"{i},{int(v)}\n" for i, v in enumerate(all_labels)))
    distributed.barrier()

    mine = todo[dist.rank :: dist.world_size]
    nfe_total, batches_done, drawn, seconds = 0, 0, 0, 0.0
    bar = Progress(TextColumn("[bold]sample[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), disable=not (progress and dist.is_main))
    with bar:
        task = bar.add_task("sample", total=len(mine))
        for start in range(0, len(mine), cfg.batch_size):
            idx = mine[start : start + cfg.batch_size]
            y, x0 = labels_and_noise(cfg.seed, idx, shape, max(tcfg.num_classes, 1), cfg.class_labels)
            kwargs = {"y": y.to(dist.device) if conditional else None}
            began = time.perf_counter()
            x0 = x0.to(dist.device)
            if cfg.sampler == "ode":
                x, nfe = sample_ode(transport, fn, x0, cfg.method, cfg.steps, cfg.atol, cfg.rtol, model_kwargs=kwargs)
            else:
                gens = [index_generator(cfg.seed, i, dist.device, stream=1) for i in idx]
                x, nfe = sample_sde(transport, fn, x0, cfg.method, cfg.steps, cfg.w, cfg.w_norm, cfg.last_step,
                                    cfg.last_step_size, generator=gens, model_kwargs=kwargs)
            images = to_images(x, tcfg, vae)
            seconds += time.perf_counter() - began
            for i, image in zip(idx, images):
                checkpoint.atomic_save_image(names[i], to_pil(image))
            nfe_total, batches_done, drawn = nfe_total + nfe, batches_done + 1, drawn + len(idx)
            bar.update(task, advance=len(idx))
    stats = distributed.all_reduce_sum(torch.tensor([float(nfe_total), float(batches_done), float(drawn), seconds]))
    nfe_total, batches_done, drawn, seconds = stats.tolist()
    result = SampleResult(out, int(drawn), cfg.num, nfe_total / max(batches_done, 1),
                          drawn / max(seconds / dist.world_size, 1e-9), is_main=dist.is_main)
    if dist.is_main and (cfg.npz or cfg.grid):
        images = np.stack([np.asarray(read_png(p)) for p in names])
        if images.ndim == 3:
            images = images[..., None]
        if cfg.npz:
            result.npz = out / "samples.npz"
            rgb = images if images.shape[-1] == 3 else np.repeat(images, 3, axis=-1)
            checkpoint.atomic_save_npz(result.npz, arr_0=rgb)
        if cfg.grid:
            result.grid = Path(cfg.grid)
            checkpoint.atomic_save_image(result.grid, make_grid(images[:100]))
    distributed.barrier()
    return result


def _default_out(ckpt: str) -> Path:
    path = Path(ckpt)
    return path / "samples" if checkpoint.is_run(path) else path.with_suffix("").parent / f"{path.stem}-samples"


def _check_folder(out: Path, settings: dict) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; pass a folder")
    saved_path = out / SETTINGS_FILE
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text())
        changed = sorted(k for k in settings if saved.get(k) != settings[k])
        if changed:
            raise InputError(f"{out} holds samples drawn with other settings ({', '.join(changed)} differ); pick a new --out")
    elif out.is_dir() and any(out.iterdir()):
        raise InputError(f"--out {out} exists, is not empty and holds no {SETTINGS_FILE}; pick a new --out")


class TrainingPreview:
    """EMA sample grids during training: the same noise and labels every time, so progress shows."""

    def __init__(self, cfg: TrainConfig, folder: Path, vae=None, steps: int = 25):
        self.cfg, self.folder, self.vae, self.steps = cfg, Path(folder), vae, steps
        classes = max(cfg.num_classes, 1)
        self.ncol = classes if classes <= 16 else 8
        n = classes * 8 if classes <= 16 else 32
        self.y, self.x0 = labels_and_noise(cfg.seed, list(range(n)), (cfg.in_channels, cfg.input_size, cfg.input_size),
                                           classes, ",".join(str(i % classes) for i in range(n)) if classes <= 16 else None)
        if self.vae is None and cfg.latent_scale is not None and cfg.vae:
            from sitcli.autoencoder import load_vae

            self.vae = load_vae(cfg.vae)

    @torch.no_grad()
    def save(self, ema: torch.nn.Module, step: int) -> Path | None:
        if self.cfg.latent_scale is not None and self.vae is None:
            return None  # latents without a VAE to decode them: nothing to look at
        device = next(ema.parameters()).device
        kwargs = {"y": self.y.to(device) if self.cfg.num_classes > 0 else None}
        x, _ = sample_ode(self.cfg.transport(), ema, self.x0.to(device), "heun", self.steps, model_kwargs=kwargs)
        path = self.folder / f"{step:07d}.png"
        checkpoint.atomic_save_image(path, make_grid(to_images(x, self.cfg, self.vae), ncol=self.ncol))
        return path
