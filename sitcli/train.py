"""Training: one linear loop, data -> loss -> step -> EMA -> log -> checkpoint, on 1 or K ranks.

    from sitcli.train import TrainConfig, train
    train(TrainConfig(data="digits"))          # the quickstart: runs/digits
    train(resume_config("runs/digits", {"steps": 5000}), resume=True)

Defaults. ``TrainConfig`` fields left as None are filled from a preset chosen by the data:
``--data digits`` gets the quickstart preset (a tiny model that trains on a CPU in minutes); any
other data gets the paper's settings (SiT-XL/2, AdamW lr 1e-4 without weight decay, EMA 0.9999,
global batch 256, 256x256 images). A value you pass always wins.

Under torchrun every rank runs this loop on its slice of each global batch (``batch_size`` is
global) and DDP averages the gradients; rank 0 writes the run folder.
"""

from __future__ import annotations

import copy
import math
import signal
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from sitcli import checkpoint, distributed
from sitcli.data import DIGITS, batches, is_latent_cache, open_dataset
from sitcli.errors import InputError
from sitcli.models import SiT_models
from sitcli.train_log import TrainLog, truncate_log
from sitcli.transport import Transport

PRESETS: dict[str, dict] = {
    # A 0.7M-parameter SiT on the native 8x8 digits (4 tokens of 4x4 pixels): recognisable samples
    # after a few CPU minutes. A short run needs a short EMA (0.9999 would still be mostly the
    # initialisation), and one thread: intra-op threading gains little on matrices this small and
    # collapses when the CPU is shared.
    "digits": dict(model="SiT-Ti/4", image_size=8, lr=1e-3, ema_decay=0.995, batch_size=128, steps=2000,
                   num_workers=0, threads=1, log_every=50, ckpt_every=500, sample_every=500),
    # The paper's ImageNet setting.
    "paper": dict(model="SiT-XL/2", image_size=256, lr=1e-4, ema_decay=0.9999, batch_size=256, steps=400_000,
                  num_workers=4, threads=0, log_every=100, ckpt_every=50_000, sample_every=10_000),
}
# Settings that may change when a run is resumed; every other one is fixed by the run's config.json.
# (lr and grad_clip so that a diverged run can go on from its last good checkpoint more gently.)
RESUMABLE = {"steps", "epochs", "lr", "grad_clip", "log_every", "ckpt_every", "sample_every", "num_workers", "threads",
             "precision", "compile", "fused_adamw"}
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Every training setting; ``config.json`` of a run is ``asdict`` of this. None = preset default."""

    data: str = DIGITS  # "digits", an image folder (one sub-folder per class), or a latent cache
    out: str | None = None  # run folder; default runs/<data name>
    model: str | None = None  # a key of models.SiT_models
    image_size: int | None = None
    vae: str | None = None  # local diffusers AutoencoderKL folder: train in its latent space
    class_dropout_prob: float = 0.1
    learn_sigma: bool = True  # keep the official layout (extra output channels, unused)
    interpolant: str = "linear"
    prediction: str = "velocity"
    loss_weight: str | None = None
    train_eps: float | None = None
    sample_eps: float | None = None
    num_timesteps: int | None = None
    lr: float | None = None
    weight_decay: float = 0.0
    ema_decay: float | None = None
    batch_size: int | None = None  # global, over all ranks
    steps: int | None = None
    epochs: int | None = None  # instead of steps: passes over the data
    grad_clip: float | None = None
    precision: str = "fp32"
    compile: bool = False
    fused_adamw: bool = False  # one fused kernel for the optimiser step: faster, not bit-identical (~3e-8)
    seed: int = 0
    num_workers: int | None = None
    threads: int | None = None  # torch intra-op threads per rank; 0: torch's default
    log_every: int | None = None
    ckpt_every: int | None = None
    sample_every: int | None = None  # 0: no sample grids
    # Filled from the data when the run starts (what a sampler needs to rebuild the model):
    in_channels: int | None = None
    input_size: int | None = None
    num_classes: int | None = None
    latent_scale: float | None = None

    def __post_init__(self):
        preset = PRESETS["digits" if self.data == DIGITS else "paper"]
        for name, value in preset.items():
            if getattr(self, name) is None:
                if name == "image_size" and is_latent_cache(self.data):
                    continue  # the cache knows its size
                setattr(self, name, value)
        if self.out is None:
            self.out = str(Path("runs") / (Path(self.data).name or "run"))
        if self.loss_weight == "none":
            self.loss_weight = None

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown or "data" not in values:
            raise InputError(f"{source} is not a sit training config (unknown keys: {', '.join(unknown) or 'none'}; needs 'data')")
        return cls(**values)

    def transport(self) -> Transport:
        return Transport(self.interpolant, self.prediction, self.loss_weight, self.train_eps, self.sample_eps, self.num_timesteps)

    def build_model(self) -> torch.nn.Module:
        return SiT_models[self.model](
            input_size=self.input_size, in_channels=self.in_channels, num_classes=self.num_classes,
            class_dropout_prob=self.class_dropout_prob, learn_sigma=self.learn_sigma,
        )


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing was saved after the last good checkpoint."""


@dataclass
class TrainResult:
    run: Path
    step: int
    checkpoint: Path | None
    interrupted: bool = False
    is_main: bool = True  # rank 0 (the one that reports)


#################################################################################
#                                 Run preparation                               #
#################################################################################


def resume_config(run: str | Path, given: dict | None = None) -> TrainConfig:
    """The config of ``run`` with the flags in ``given`` applied: only RESUMABLE ones may differ."""
    saved = TrainConfig.from_dict(checkpoint.read_config(run), source=f"{run}/{checkpoint.CONFIG}")
    if saved.data == "external":
        raise InputError(f"{run} holds converted weights, not a training run: sample it with `sit sample --ckpt {run}`; it cannot be resumed")
    for name, value in (given or {}).items():
        if value is None or name in ("out", "resume"):
            continue
        if name not in {f.name for f in fields(TrainConfig)}:
            raise InputError(f"unknown setting {name!r}")
        if name in RESUMABLE:
            setattr(saved, name, value)
        elif value != getattr(saved, name):
            flag = "--" + name.replace("_", "-")
            raise InputError(
                f"{run} was trained with {flag} {getattr(saved, name)}; a resumed run keeps its settings: "
                f"drop {flag} {value}, or start a new run with --out"
            )
    if "steps" in (given or {}) and given["steps"] is not None:
        saved.epochs = None
    saved.out = str(run)
    return saved


def _check_settings(cfg: TrainConfig, device: torch.device) -> None:
    if cfg.model not in SiT_models:
        raise InputError(f"unknown model {cfg.model!r}; choose one of {', '.join(SiT_models)}")
    if cfg.precision not in PRECISIONS:
        raise InputError(f"unknown precision {cfg.precision!r}; choose fp32 or bf16 (fp16 on CUDA)")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise InputError("--precision fp16 needs a CUDA GPU (it trains with a gradient scaler); use bf16 or fp32 on CPU")
    if cfg.steps is not None and cfg.steps < 1 or cfg.epochs is not None and cfg.epochs < 1:
        raise InputError("--steps and --epochs must be at least 1")
    for name in ("lr", "batch_size", "log_every", "ckpt_every"):
        if getattr(cfg, name) <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be positive")
    if not 0 <= cfg.ema_decay < 1:
        raise InputError(f"--ema-decay {cfg.ema_decay} must lie in [0, 1), e.g. 0.9999")
    cfg.transport()  # raises InputError for an invalid interpolant / prediction / loss-weight combination


def _check_out(cfg: TrainConfig, resume: bool) -> Path | None:
    """The checkpoint to resume from (None for a new run); refuses anything that would overwrite."""
    run = Path(cfg.out)
    if resume:
        if not checkpoint.is_run(run):
            raise InputError(f"--resume {run}: not a sit run (no config.json); pass the folder `sit train --out` created")
        latest = checkpoint.latest_checkpoint(run)
        if latest is None:
            raise InputError(f"--resume {run}: the run has no complete checkpoint yet; start it again with a new --out")
        done = int(latest.name)
        if done >= cfg.steps:
            raise InputError(f"--resume {run}: the run already finished at step {done}; pass --steps N with N > {done} to train further")
        return latest
    if checkpoint.is_run(run):
        raise InputError(f"{run} is already a run; continue it with --resume {run}, or pick a new --out")
    if run.exists() and (not run.is_dir() or any(run.iterdir())):
        raise InputError(f"--out {run} exists and is not an empty folder; pick a new --out")
    return None


#################################################################################
#                                   The loop                                    #
#################################################################################


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, device: str | None = None) -> TrainResult:
    """Train (or with ``resume``, continue ``cfg.out`` from its newest checkpoint) to ``cfg.steps``.

    Raises InputError for bad settings (before anything is written) and TrainingDiverged when the
    loss stops being finite. Ctrl-C (SIGINT) or SIGTERM saves a checkpoint after the current step
    and returns with ``interrupted=True``.
    """
    dist = distributed.setup(device)
    threads = torch.get_num_threads()
    try:
        return _train(cfg, resume, progress, dist)
    finally:
        torch.set_num_threads(threads)
        distributed.teardown(dist)


def _train(cfg: TrainConfig, resume: bool, progress: bool, dist: distributed.Dist) -> TrainResult:
    from sitcli.sample import TrainingPreview

    _check_settings(cfg, dist.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = Path(cfg.out)
    dataset = open_dataset(cfg.data, None if is_latent_cache(cfg.data) else cfg.image_size)
    info = dataset.info
    vae = None
    if cfg.vae is not None and cfg.data == DIGITS:
        raise InputError("the digits are 1-channel 8x8 images, too small for a VAE: drop --vae and train in pixel space")
    if cfg.vae is not None and not info.latent:
        from sitcli.autoencoder import latent_scale, latent_shape, load_vae

        vae = load_vae(cfg.vae, dist.device)
        channels, size = latent_shape(vae, info.image_size)
        cfg.in_channels, cfg.input_size, cfg.latent_scale = channels, size, latent_scale(vae)
    else:
        cfg.in_channels, cfg.input_size, cfg.latent_scale = info.channels, info.size, info.latent_scale
        cfg.vae = cfg.vae or info.vae
        cfg.image_size = info.image_size
    cfg.num_classes = info.num_classes
    if cfg.epochs is not None:
        cfg.steps = cfg.epochs * (len(dataset) // cfg.batch_size)
    if cfg.input_size % int(cfg.model.rsplit("/", 1)[-1]):
        raise InputError(f"{cfg.model} needs an input size divisible by its patch size; the data gives {cfg.input_size}")
    latest = _check_out(cfg, resume)
    distributed.barrier()  # every rank has checked the folder before rank 0 creates it
    if dist.is_main:
        checkpoint.write_json(run / checkpoint.CONFIG, asdict(cfg))

    # Model and optimiser: same init on every rank; after that each rank has its own RNG streams.
    torch.manual_seed(cfg.seed)
    model = cfg.build_model().to(dist.device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=cfg.fused_adamw or None)  # None: torch's default implementation
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    rank_seed = cfg.seed * dist.world_size + dist.rank
    torch.manual_seed(rank_seed)  # the model's label dropout draws from the global RNG
    noise = torch.Generator(dist.device).manual_seed(rank_seed)  # training times and noise
    step = 0
    if latest is not None:
        state = checkpoint.load_checkpoint(latest, dist.device)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"]["optimizer"])
        for group in opt.param_groups:  # --lr may have been changed for the resumed run
            group["lr"] = cfg.lr
        if scaler is not None and state["optimizer"].get("scaler"):
            scaler.load_state_dict(state["optimizer"]["scaler"])
        _set_rng(state["rng"], noise, dist)
        step = state["state"]["step"]
        if dist.is_main:
            truncate_log(run / "log.csv", step)

    net = model
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    transport = cfg.transport()
    data = batches(dataset, cfg.batch_size, cfg.seed, dist.rank, dist.world_size, step, cfg.num_workers)
    preview = TrainingPreview(cfg, run / "grids", vae) if dist.is_main and cfg.sample_every else None
    autocast = torch.autocast(dist.device.type, dtype=torch.float16 if cfg.precision == "fp16" else torch.bfloat16,
                              enabled=cfg.precision != "fp32")

    def save(step: int) -> Path:
        rng = distributed.all_gather_objects(_get_rng(noise, dist))
        path = None
        if dist.is_main:
            opt_state = {"optimizer": opt.state_dict(), "scaler": scaler.state_dict() if scaler else {}}
            rng_tensors = {f"{k}.rank{r}": v for r, states in enumerate(rng) for k, v in states.items()}
            data_pos = divmod(step, len(dataset) // cfg.batch_size)
            path = checkpoint.save_checkpoint(run, step, model.state_dict(), ema.state_dict(), opt_state, rng_tensors,
                                              {"step": step, "epoch": data_pos[0], "batch_in_epoch": data_pos[1],
                                               "world_size": dist.world_size})
        distributed.barrier()
        return path or run / checkpoint.CHECKPOINTS / f"{step:07d}"

    stop = _StopRequest()
    log = TrainLog(run, cfg.steps, dist.is_main, progress, start=step, log_every=cfg.log_every)
    last_ckpt = latest
    with stop, log:
        while step < cfg.steps:
            x, y = next(data)
            x, y = x.to(dist.device, non_blocking=True), y.to(dist.device, non_blocking=True)
            if vae is not None:
                from sitcli.autoencoder import encode

                x = encode(vae, x, noise)
            loss = step_loss(net, transport, x, y, noise, autocast)
            # One small all-reduce per step: every rank learns the mean loss and whether to stop.
            loss_sum, stop_votes = distributed.all_reduce_sum(
                torch.stack([loss.detach().float(), torch.tensor(float(stop.requested), device=loss.device)])).tolist()
            if not math.isfinite(loss_sum):
                then = f"the last good checkpoint is {last_ckpt}; go on from it with --resume {run} and a lower --lr, " \
                       "--grad-clip or --precision fp32" if last_ckpt else "no checkpoint was written; start again " \
                       "with a new --out and a lower --lr, --grad-clip or --precision fp32"
                raise TrainingDiverged(f"the loss became non-finite ({loss_sum}) at step {step + 1}; {then}")
            step_update(loss, model, ema, opt, cfg.ema_decay, cfg.grad_clip, scaler)
            step += 1

            log.step(step, loss_sum / dist.world_size, x.shape[0] * dist.world_size)
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                last_ckpt = save(step)
            if preview is not None and step % cfg.sample_every == 0:
                preview.save(ema, step)
            if stop_votes > 0:
                last_ckpt = save(step)
                return TrainResult(run, step, last_ckpt, interrupted=True, is_main=dist.is_main)
    if preview is not None and step % cfg.sample_every and step == cfg.steps:
        preview.save(ema, step)
    return TrainResult(run, step, last_ckpt, is_main=dist.is_main)


def step_loss(net: torch.nn.Module, transport: Transport, x: torch.Tensor, y: torch.Tensor,
              noise: torch.Generator | None, autocast) -> torch.Tensor:
    """The first half of a training step: the mean training loss of the batch (x, y) under ``autocast``.

    For the linear interpolant and velocity prediction this is mean |net(x_t, t, y) - (x1 - eps)|^2
    with x_t = t x1 + (1 - t) eps; ``Transport.training_loss`` holds every other combination.
    """
    with autocast:
        return transport.training_loss(net, x, {"y": y}, generator=noise).mean()


def step_update(loss: torch.Tensor, model: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer,
                ema_decay: float, grad_clip: float | None = None, scaler: torch.amp.GradScaler | None = None) -> None:
    """The second half: backward, optional gradient clipping, optimiser step, EMA update.

    Split from ``step_loss`` so that the loop can check the loss (and stop requests) across ranks
    before any weight changes; the benchmarks time the two halves together as sit's training step.
    """
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    update_ema(ema, model, ema_decay)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.mul_(decay).add_(p.detach(), alpha=1 - decay)


def _get_rng(noise: torch.Generator, dist: distributed.Dist) -> dict[str, torch.Tensor]:
    states = {"global_cpu": torch.get_rng_state(), "noise": noise.get_state()}
    if dist.device.type == "cuda":
        states["global_cuda"] = torch.cuda.get_rng_state(dist.device)
    return states


def _set_rng(saved: dict[str, torch.Tensor], noise: torch.Generator, dist: distributed.Dist) -> None:
    suffix = f".rank{dist.rank}"
    if f"noise{suffix}" not in saved or f"noise.rank{dist.world_size}" in saved:
        # Another number of ranks than when saved: data order is unchanged, noise streams restart.
        if dist.is_main:
            print("note: resuming on a different number of ranks; training noise is re-seeded (data order is kept)")
        return
    torch.set_rng_state(saved[f"global_cpu{suffix}"])
    noise.set_state(saved[f"noise{suffix}"])
    if dist.device.type == "cuda" and f"global_cuda{suffix}" in saved:
        torch.cuda.set_rng_state(saved[f"global_cuda{suffix}"], dist.device)


class _StopRequest:
    """Turns the first SIGINT/SIGTERM into a request to save and stop after the current step."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                if signal.getsignal(sig) is signal.SIG_IGN:  # e.g. SIGINT under nohup: the caller chose to ignore it
                    continue
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

