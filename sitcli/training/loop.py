"""The training loop: prepare -> (step -> log -> save) until done, on 1 or K ranks.

    from sitcli.config import TrainConfig
from sitcli.errors import InputError
    from sitcli.training import train, resume_config
    train(TrainConfig(data="digits"))          # the quickstart: runs/digits
    train(resume_config("runs/digits", {"steps": 5000}), resume=True)

Unset settings come from the preset of the data (``training.presets``). Under torchrun every rank
runs this loop on its slice of each global batch (``batch_size`` is global) and DDP averages the
gradients; rank 0 writes the run folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from sitcli import distributed, runs
from sitcli.config import TrainConfig
from sitcli.errors import InputError
from sitcli.runtime import autocast
from sitcli.session import session
from sitcli.training.losses import LossTerm, step_losses
from sitcli.training.prepare import REPA_DIGESTS, Prepared, discard_new_run, prepare
from sitcli.training.reports import TrainLog
from sitcli.training.state import StopRequest, rng_state, update_ema
from sitcli.transport import Transport


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing was saved after the last good checkpoint."""


@dataclass
class TrainResult:
    run: Path
    step: int
    checkpoint: Path | None
    interrupted: bool = False
    is_main: bool = True  # rank 0 (the one that reports)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, device: str | None = None) -> TrainResult:
    """Train (or with ``resume``, continue ``cfg.out`` from its newest checkpoint) to ``cfg.steps``.

    Raises InputError for bad settings (before anything is written) and TrainingDiverged when the
    loss stops being finite. Ctrl-C (SIGINT) or SIGTERM saves a checkpoint after the current step
    and returns with ``interrupted=True``.
    """
    with session(device, tf32=cfg.tf32) as s:
        p = prepare(cfg, resume, s)
        try:
            return run_loop(p, progress)
        except (InputError, OSError):  # damaged data, a full disk: a new run that saved nothing leaves nothing
            discard_new_run(p)
            raise


def run_loop(p: Prepared, progress: bool) -> TrainResult:
    """Step ``p`` to ``p.cfg.steps``: a checkpoint every ``ckpt_every`` steps and at the end, EMA
    grids every ``sample_every``; a stop request saves after the current step."""
    cfg, dist = p.cfg, p.dist
    precision = autocast(dist.device, cfg.precision)
    stop = StopRequest()
    log = TrainLog(p.run, cfg.steps, dist.is_main, progress, start=p.step, log_every=cfg.log_every,
                   terms=tuple(term.name for term in p.terms), loggers=p.loggers or (), window=p.log_window)
    last_ckpt = p.latest
    with stop, log:
        while p.step < cfg.steps:
            x, y, *cached = next(p.data)  # cached: [encoder features] from a latent cache with them
            x, y = x.to(dist.device, non_blocking=True), y.to(dist.device, non_blocking=True)
            features = [f.to(dist.device, non_blocking=True) for f in cached[0]] if cached else None
            pixels = x
            if p.vae is not None and p.vae.kind == "kl" and p.vae.normalization.kind == "scale":
                from sitcli.autoencoder import encode  # SD-VAE's road, the function it has always called

                x = encode(p.vae.vae, x, p.noise)
            elif p.vae is not None:  # with statistics, or an RAE
                x = p.vae.encode(x, generator=p.noise)
            for term in p.terms:  # a schedule (AlphaFlow's alpha) follows the step, so a resumed run picks it up
                term.at_step(p.step, cfg.steps)
            loss, parts = step_loss(p.net, p.transport, p.terms, x, y, p.noise, precision,
                                    pixels if p.vae is not None else None, features)
            # One small all-reduce per step: every rank learns the mean losses and whether to stop.
            shown = [loss] + (list(parts.values()) if len(parts) > 1 else [])
            sums = distributed.all_reduce_sum(
                torch.stack(
                    [*(v.detach().float() for v in shown), torch.tensor(float(stop.requested), device=loss.device)]
                )
            ).tolist()
            losses, stop_votes = [v / dist.world_size for v in sums[:-1]], sums[-1]
            if not math.isfinite(sums[0]):
                raise TrainingDiverged(_diverged_message(sums[0], p.step + 1, last_ckpt, p.run))
            grad_norm = step_update(loss, p.model, p.ema, p.opt, cfg.ema_decay, cfg.grad_clip, p.scaler)
            p.step += 1
            if p.posthoc_ema is not None:
                update_posthoc_ema(p)

            log.step(p.step, losses, x.shape[0] * dist.world_size, grad_norm, p.opt.param_groups[0]["lr"])
            if p.step % cfg.ckpt_every == 0 or p.step == cfg.steps:
                last_ckpt = save(p, log)
            if p.preview is not None and p.step % cfg.sample_every == 0:
                log.image(p.step, "ema_samples", p.preview.save(p.ema, p.step))
            if p.evaluation is not None and p.evaluation.due(p.step):
                log.evaluation(p.step, p.evaluation.run(p.ema, p.step))
            if stop_votes > 0:
                last_ckpt = save(p, log)
                return TrainResult(p.run, p.step, last_ckpt, interrupted=True, is_main=dist.is_main)
        if p.preview is not None and p.step % cfg.sample_every and p.step == cfg.steps:
            log.image(p.step, "ema_samples", p.preview.save(p.ema, p.step))
    return TrainResult(p.run, p.step, last_ckpt, is_main=dist.is_main)


def step_loss(
    net: torch.nn.Module,
    transport: Transport,
    terms: list[LossTerm],
    x: torch.Tensor,
    y: torch.Tensor,
    noise: torch.Generator | None,
    precision: torch.autocast,
    images: torch.Tensor | None = None,
    features: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The first half of a training step: the batch's total loss and its terms, under ``precision``.

    For the linear interpolant and velocity prediction alone this is mean |net(x_t, t, y) - (x1 - eps)|^2
    with x_t = t x1 + (1 - t) eps; ``training.losses`` holds the terms.
    """
    with precision:
        return step_losses(net, transport, terms, x, y, noise, images, features)


def step_update(
    loss: torch.Tensor,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    opt: torch.optim.Optimizer,
    ema_decay: float,
    grad_clip: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """The second half: backward, optional gradient clipping, optimiser step, EMA update.

    Returns the gradient norm before clipping (a 0-d tensor, not synchronised); without clipping
    it is only read from the gradients, so the update is the same bit for bit.

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
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    else:
        grad_norm = gradient_norm(model.parameters())
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    update_ema(ema, model, ema_decay)
    return grad_norm


@torch.no_grad()
def gradient_norm(parameters) -> torch.Tensor:
    """The 2-norm of all gradients together, the number ``clip_grad_norm_`` returns, leaving them as they are."""
    norms = [torch.linalg.vector_norm(p.grad.detach()) for p in parameters if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def save(p: Prepared, log: TrainLog | None = None) -> Path:
    """A checkpoint of step ``p.step`` (written by rank 0, with every rank's RNG state, the data size and
    the steps ``log`` has not yet written a row for, so that a resumed run logs the rows of a straight one)."""
    rng = distributed.all_gather_objects(rng_state(p.noise, p.dist))
    path = None
    if p.dist.is_main:
        opt_state = {"optimizer": p.opt.state_dict(), "scaler": p.scaler.state_dict() if p.scaler else {}}
        if p.posthoc_ema is not None:  # the trackers resume bit for bit from here
            opt_state["posthoc_ema"] = p.posthoc_ema.state_dict()
        rng_tensors = {f"{k}.rank{r}": v for r, states in enumerate(rng) for k, v in states.items()}
        epoch, batch = divmod(p.step, len(p.dataset) // p.cfg.batch_size)
        path = runs.save_checkpoint(
            p.run,
            p.step,
            p.model.state_dict(),
            p.ema.state_dict(),
            opt_state,
            rng_tensors,
            {
                "step": p.step,
                "epoch": epoch,
                "batch_in_epoch": batch,
                "world_size": p.dist.world_size,
                "data_size": len(p.dataset),
                "log_window": log.window() if log is not None else None,
                **({REPA_DIGESTS: p.encoder_digests} if p.encoder_digests else {}),
            },
        )
    distributed.barrier()
    return path or p.run / runs.CHECKPOINTS / f"{p.step:07d}"


def update_posthoc_ema(p: Prepared) -> None:
    """Fold step ``p.step``'s weights into the power-function EMAs (rank 0), and every ``ema_snapshots_every``
    steps save each as ``ema_snapshots/<step>-<sigma_rel>.safetensors``."""
    p.posthoc_ema.update(dict(p.model.named_parameters()), p.step)
    if p.step % p.cfg.ema_snapshots_every == 0:
        for sigma_rel, average in zip(p.posthoc_ema.sigma_rels, p.posthoc_ema.averages):  # copied to the CPU there
            runs.save_ema_snapshot(p.run, p.step, sigma_rel, average)


def _diverged_message(value: float, step: int, last_ckpt: Path | None, run: Path) -> str:
    then = (
        (
            f"the last good checkpoint is {last_ckpt}; go on from it with --resume {run} and a lower --lr, "
            "--grad-clip or --precision fp32"
        )
        if last_ckpt
        else (
            "no checkpoint was written; start again with a new --out and a lower --lr, --grad-clip or --precision fp32"
        )
    )
    return f"the loss became non-finite ({value}) at step {step}; {then}"
