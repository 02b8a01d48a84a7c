"""`sit train-decoder`: an RAE's pixel decoder trained behind its frozen DINOv2 encoder (RAE's stage 1).

    from sitcli.training.decoder import DecoderTrainConfig, train_decoder
    train_decoder(DecoderTrainConfig(data="imagenet/train", rae_encoder="dinov2-with-registers-base",
                                     out="runs/decoder", lpips="weights/lpips", gan="patch"))

Each step encodes a batch, noises the latents (RAE's noise augmentation, tau ``noise_tau``), decodes them
and takes the loss of ``autoencoder.decoder_training.decoder_loss``:

    L = L1 + lpips_weight LPIPS + gan_weight lambda G      (LPIPS with ``lpips`` weights; G with ``gan``)

The adversarial term is not RAE's: RAE's discriminator is a frozen DINO ViT-S/8 with trained heads and
DiffAug, which needs that network's weights; here ``gan="patch"`` is a small PatchGAN (taming's
NLayerDiscriminator layout, 3 strided 4x4 convolutions and LeakyReLU, GroupNorm in place of its BatchNorm so
that ranks and resumes stay exact), trained with the hinge loss on 8-bit-rounded reconstructions from
step ``disc_start``, its term in the decoder's loss from ``gan_start`` (RAE: epochs 6 and 8 of 16, the
defaults' 3/8 and 1/2 of the steps). Optimisers are RAE's AdamW (betas 0.9, 0.95, no weight decay).

A run folder is a sit run (``runs``): ``config.json`` (these settings and the decoder's shape under
"decoder", which ``--rae-decoder RUN`` reads), ``checkpoints/NNNNNNN/`` (decoder and its EMA in RAE's
names, both optimisers and the discriminator in optimizer.pt, RNG states, the data position),
``log.csv`` (loss, l1, lpips, gan, disc) and, with ``eval_every``, ``eval.csv``: the rFID of
decode(encode(x)) of ``eval_num`` validation images against the images themselves (Inception features
of 8-bit images through ``sitcli.evaluate``, as ``sit fid``), their mean L1 (images in [0, 1]) and PSNR.
Resuming continues exactly: N straight steps and N/2 + resume + N/2 give the same weights bit for bit.
Under torchrun each rank takes its slice of every batch and the gradients are averaged (sum / K).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sitcli import atomic, distributed, runs
from sitcli.autoencoder.decoder_training import NOISE_TAU, decoder_loss, discriminator_loss
from sitcli.autoencoder.rae import RAE, load_rae_encoder
from sitcli.autoencoder.rae_decoder import DECODER_SIZES, RAEDecoder, config_dict, decoder_config
from sitcli.data import DIGITS, batches, check_batch_size, to_uint8
from sitcli.data.images import DigitsDataset, ImageFolderDataset
from sitcli.domains import COUNT, COUNT_OR_ZERO, NON_NEGATIVE, POSITIVE, SEED, Domain, check_domains
from sitcli.errors import InputError
from sitcli.runtime import autocast, check_device_precision, check_precision
from sitcli.session import session
from sitcli.training.reports import TrainLog, truncate_log
from sitcli.training.state import StopRequest, restore_rng_state, rng_state, update_ema

GANS = ("none", "patch")
TERMS = ("l1", "lpips", "gan", "disc")
BETAS = (0.9, 0.95)  # RAE's AdamW betas (configs/stage1/training/DINOv2-B_decXL.yaml)


@dataclass
class DecoderTrainConfig:
    """Every setting of ``sit train-decoder`` (see the module); ``config.json`` of a decoder run is this plus
    the decoder's shape. None: chosen from the others (``steps`` from ``epochs``, the GAN's start steps)."""

    rae_encoder: str
    data: str = DIGITS  # digits (grey, upsampled to image_size) or an image folder (one sub-folder per class)
    out: str | None = None
    image_size: int = 256
    decoder_size: str = "ViT-XL"  # a row of rae_decoder.DECODER_SIZES (RAE releases ViT-XL)
    rae_patch: int = 16  # decoder patch in pixels: the encoder sees image_size / rae_patch * its patch
    noise_tau: float = NOISE_TAU
    lr: float = 2e-4
    ema_decay: float = 0.9978
    batch_size: int = 512
    steps: int | None = None
    epochs: int | None = None  # without steps: 16 (RAE's)
    grad_clip: float | None = None  # RAE: none
    lpips: str | None = None  # local LPIPS weights (autoencoder.lpips); None: no perceptual term
    lpips_weight: float = 1.0
    gan: str = "none"  # "patch": the PatchGAN of the module
    gan_weight: float = 0.75
    gan_start: int | None = None  # the step from which the generator term counts (None: half the steps)
    disc_start: int | None = None  # the step from which the discriminator trains (None: 3/8 of the steps)
    disc_lr: float = 2e-4
    seed: int = 0
    log_every: int = 100
    ckpt_every: int = 1000
    eval_every: int = 0  # steps between rFIDs (0: none)
    eval_data: str | None = None  # validation images (default: the training data's first eval_num)
    eval_num: int = 1000
    inception_weights: str | None = None
    precision: str = "fp32"
    num_workers: int = 0
    threads: int | None = None

    def __post_init__(self):
        check_domains(asdict(self), DECODER_DOMAINS)
        check_precision(self.precision)
        if self.decoder_size not in DECODER_SIZES:
            raise InputError(f"--decoder-size {self.decoder_size!r}: choose one of {', '.join(DECODER_SIZES)}")
        if self.gan not in GANS:
            raise InputError(f"--gan {self.gan!r}: choose one of {', '.join(GANS)} (RAE's DINO discriminator is "
                             "not built here; patch is a small PatchGAN)")
        if self.image_size % self.rae_patch:
            raise InputError(f"--image-size {self.image_size} is not a multiple of --rae-patch {self.rae_patch}")
        if self.steps is not None and self.epochs is not None:
            raise InputError("pass --steps or --epochs, not both")
        if self.steps is None and self.epochs is None:
            self.epochs = 16
        if self.eval_every and self.eval_num < 2:
            raise InputError("--eval-every needs --eval-num of at least 2 (a covariance of Inception features)")
        self.out = self.out or str(Path("runs") / f"decoder-{Path(self.data).name}")

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "DecoderTrainConfig":
        known = {f.name for f in fields(cls)}
        if "decoder" not in values or "rae_encoder" not in values:
            raise InputError(f"{source} is not a `sit train-decoder` run's config")
        values = {k: v for k, v in values.items() if k in known}
        if values.get("steps") is not None:  # a run records the steps its epochs came to
            values["epochs"] = None
        return cls(**values)


DECODER_DOMAINS = dict(
    image_size=COUNT, rae_patch=COUNT, noise_tau=NON_NEGATIVE, lr=POSITIVE, ema_decay=Domain(0, 1, hi_open=True),
    batch_size=COUNT, steps=COUNT, epochs=COUNT, grad_clip=POSITIVE, lpips_weight=NON_NEGATIVE,
    gan_weight=NON_NEGATIVE, gan_start=COUNT_OR_ZERO, disc_start=COUNT_OR_ZERO, disc_lr=POSITIVE, seed=SEED,
    log_every=COUNT, ckpt_every=COUNT, eval_every=COUNT_OR_ZERO, eval_num=COUNT, num_workers=COUNT_OR_ZERO,
    threads=COUNT_OR_ZERO,
)
# Settings a resumed decoder run may change; every other one is fixed by its config.json.
RESUMABLE = {"steps", "epochs", "log_every", "ckpt_every", "eval_every", "eval_num", "eval_data",
             "inception_weights", "num_workers", "threads", "precision"}


@dataclass
class DecoderTrainResult:
    run: Path
    step: int
    checkpoint: Path | None
    evaluation: dict | None = None  # the last evaluation's rfid, l1, psnr
    interrupted: bool = False
    is_main: bool = True


#################################################################################
#                            The discriminator (not RAE's)                      #
#################################################################################


class PatchDiscriminator(nn.Module):
    """taming's NLayerDiscriminator layout: 4x4 convolutions (stride 2, 2, 2, 1, 1), LeakyReLU(0.2), GroupNorm
    (one group per 16 channels) after every inner convolution; a map of logits, one per patch."""

    def __init__(self, channels: int = 3, width: int = 64, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = width
        for k in range(1, layers + 1):
            out = width * min(2**k, 8)
            mods += [nn.Conv2d(c, out, 4, 2 if k < layers else 1, 1, bias=False), nn.GroupNorm(max(1, out // 16), out),
                     nn.LeakyReLU(0.2)]
            c = out
        mods.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.main = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < 32:  # a small image (the digits) is upsampled so that every layer has a patch to see
            x = F.interpolate(x, size=(32, 32), mode="nearest")
        return self.main(x)


#################################################################################
#                                     The job                                   #
#################################################################################


def resume_decoder_config(run: str | Path, given: dict | None = None) -> DecoderTrainConfig:
    """The config of decoder run ``run`` with the flags in ``given``: only RESUMABLE ones may differ."""
    saved = runs.read_config(run)
    cfg = DecoderTrainConfig.from_dict(saved, source=f"{run}/{runs.CONFIG}")
    for name, value in (given or {}).items():
        if value is None or name in ("out", "resume"):
            continue
        if name in RESUMABLE:
            setattr(cfg, name, value)
        elif value != getattr(cfg, name):
            flag = "--" + name.replace("_", "-")
            raise InputError(f"{run} was trained with {flag} {getattr(cfg, name)}; a resumed run keeps its settings: "
                             f"drop {flag} {value}, or start a new run with --out")
    if (given or {}).get("steps") is not None:
        cfg.epochs = None
    cfg.out = str(run)
    return cfg


def train_decoder(cfg: DecoderTrainConfig, resume: bool = False, progress: bool = True,
                  device: str | None = None) -> DecoderTrainResult:
    """Train (or with ``resume``, continue) the RAE decoder of ``cfg`` to ``cfg.steps``; Ctrl-C saves and stops."""
    with session(device) as s:
        dist = s.dist
        check_device_precision(cfg.precision, dist.device)
        s.set_threads(cfg.threads)
        run = Path(cfg.out)
        dataset = _open(cfg.data, cfg.image_size)
        check_batch_size(len(dataset), cfg.batch_size, dist.world_size)
        if cfg.epochs is not None:
            cfg.steps = cfg.epochs * (len(dataset) // cfg.batch_size)
        if cfg.gan == "patch":
            cfg.disc_start = cfg.disc_start if cfg.disc_start is not None else cfg.steps * 3 // 8
            cfg.gan_start = cfg.gan_start if cfg.gan_start is not None else cfg.steps // 2
        encoder = load_rae_encoder(cfg.rae_encoder, cfg.image_size, cfg.rae_patch).to(dist.device)
        shape = decoder_config(cfg.decoder_size, encoder.width, encoder.grid**2, cfg.rae_patch)
        lpips = _open_lpips(cfg.lpips, dist.device)
        evaluation = DecoderEval(cfg, dist, dataset) if cfg.eval_every else None
        atomic.check_can_create(run, "--out")
        s.hold(run, "sit train-decoder")
        latest = _check_out(run, resume, cfg.steps)

        torch.manual_seed(cfg.seed)
        decoder = RAEDecoder(shape).to(dist.device).train()
        ema = copy.deepcopy(decoder).eval().requires_grad_(False)
        opt = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, betas=BETAS, weight_decay=0.0)
        disc = disc_opt = None
        if cfg.gan == "patch":
            disc = PatchDiscriminator(dataset.info.channels).to(dist.device)
            disc_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.disc_lr, betas=BETAS, weight_decay=0.0)
        rank_seed = cfg.seed * dist.world_size + dist.rank
        torch.manual_seed(rank_seed)
        noise = torch.Generator(dist.device).manual_seed(rank_seed)
        step, window = 0, None
        if latest is not None:
            step, window = _restore(latest, decoder, ema, opt, disc, disc_opt, noise, dist)
        distributed.barrier()
        if dist.is_main:
            runs.write_config(run, {**asdict(cfg), "decoder": config_dict(shape)})
            if latest is not None:
                truncate_log(run / "log.csv", step)
                truncate_log(run / "eval.csv", step)
        rae = RAE(encoder, decoder, image_channels=dataset.info.channels)
        ema_rae = RAE(encoder, ema, image_channels=dataset.info.channels)
        data = batches(dataset, cfg.batch_size, cfg.seed, dist.rank, dist.world_size, step, cfg.num_workers)
        precision = autocast(dist.device, cfg.precision)
        log = TrainLog(run, cfg.steps, dist.is_main, progress, start=step, log_every=cfg.log_every, terms=TERMS,
                       window=window)
        stop, last, result = StopRequest(), latest, None
        with stop, log:
            while step < cfg.steps:
                x, _ = next(data)
                x = x.to(dist.device)
                gan = disc if disc is not None and step >= cfg.gan_start else None
                with precision:
                    terms = decoder_loss(rae, x, cfg.noise_tau, lpips, cfg.lpips_weight, gan, cfg.gan_weight,
                                         generator=noise)
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                _average_gradients(decoder, dist)
                norm = (nn.utils.clip_grad_norm_(decoder.parameters(), cfg.grad_clip) if cfg.grad_clip
                        else _grad_norm(decoder))
                opt.step()
                update_ema(ema, decoder, cfg.ema_decay)
                d_loss = torch.zeros((), device=dist.device)
                if disc is not None and step >= cfg.disc_start:
                    disc_opt.zero_grad(set_to_none=True)
                    with precision:
                        d_loss = discriminator_loss(disc, x, terms["reconstruction"])
                    d_loss.backward()
                    _average_gradients(disc, dist)
                    disc_opt.step()
                shown = torch.stack([terms["loss"].detach().float(), *(terms[k].float() for k in TERMS[:3]),
                                     d_loss.detach().float(), torch.tensor(float(stop.requested), device=dist.device)])
                sums = distributed.all_reduce_sum(shown).tolist()
                if not math.isfinite(sums[0]):
                    raise InputError(f"the decoder's loss became non-finite at step {step + 1}; resume from "
                                     f"{last} with a lower --lr, or start again")
                step += 1
                log.step(step, [v / dist.world_size for v in sums[:-1]], x.shape[0] * dist.world_size, norm, cfg.lr)
                if step % cfg.ckpt_every == 0 or step == cfg.steps or sums[-1] > 0:
                    last = _save(run, step, decoder, ema, opt, disc, disc_opt, noise, dist, log, len(dataset),
                                 cfg.batch_size)
                if evaluation is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
                    result = evaluation.run(ema_rae)
                    log.evaluation(step, result)
                if sums[-1] > 0:
                    return DecoderTrainResult(run, step, last, result, interrupted=True, is_main=dist.is_main)
        return DecoderTrainResult(run, step, last, result, is_main=dist.is_main)


def _open(data: str, image_size: int):
    """The digits (grey, resized to ``image_size``) or an image folder."""
    return DigitsDataset(image_size) if data == DIGITS else ImageFolderDataset(data, image_size)


def _open_lpips(path: str | None, device):
    if path is None:
        return None
    from sitcli.autoencoder.lpips import load_lpips

    return load_lpips(path).to(device)


def _check_out(run: Path, resume: bool, steps: int) -> Path | None:
    """The checkpoint to resume from (None for a new run); refuses anything that would overwrite."""
    if resume:
        latest, damaged = runs.newest_checkpoint(run)
        if latest is None:
            raise InputError(f"--resume {run}: no intact checkpoint" + (f" ({damaged[0][1]})" if damaged else ""))
        if int(latest.name) >= steps:
            raise InputError(f"--resume {run}: the run already finished at step {int(latest.name)}; pass --steps N "
                             "with a larger N")
        return latest
    runs.check_new_run(run)
    return None


def _average_gradients(module: nn.Module, dist) -> None:
    """DDP's average of the ranks' gradients (sum / K), parameter by parameter (nothing to do on one rank)."""
    if not dist.active:
        return
    for p in module.parameters():
        if p.grad is not None:
            p.grad.copy_(distributed.all_reduce_sum(p.grad) / dist.world_size)


@torch.no_grad()
def _grad_norm(module: nn.Module) -> torch.Tensor:
    norms = [torch.linalg.vector_norm(p.grad) for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def _save(run, step, decoder, ema, opt, disc, disc_opt, noise, dist, log, size, batch_size) -> Path:
    rng = distributed.all_gather_objects(rng_state(noise, dist))
    path = run / runs.CHECKPOINTS / f"{step:07d}"
    if dist.is_main:
        optimizer = {"optimizer": opt.state_dict()}
        if disc is not None:
            optimizer.update(discriminator=disc.state_dict(), disc_optimizer=disc_opt.state_dict())
        epoch, batch = divmod(step, size // batch_size)
        path = runs.save_checkpoint(
            run, step, decoder.state_dict(), ema.state_dict(), optimizer,
            {f"{k}.rank{r}": v for r, states in enumerate(rng) for k, v in states.items()},
            {"step": step, "epoch": epoch, "batch_in_epoch": batch, "world_size": dist.world_size, "data_size": size,
             "log_window": log.window()},
        )
    distributed.barrier()
    return path


def _restore(latest: Path, decoder, ema, opt, disc, disc_opt, noise, dist) -> tuple[int, dict | None]:
    state = runs.load_checkpoint(latest, dist.device)
    decoder.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["optimizer"]["optimizer"])
    if disc is not None:
        disc.load_state_dict(state["optimizer"]["discriminator"])
        disc_opt.load_state_dict(state["optimizer"]["disc_optimizer"])
    restore_rng_state(state["rng"], noise, dist)
    return state["state"]["step"], state["state"].get("log_window")


#################################################################################
#                          rFID of the reconstructions                          #
#################################################################################


class DecoderEval:
    """rFID, L1 and PSNR of decode(encode(x)) over ``eval_num`` validation images (rank 0 reports)."""

    def __init__(self, cfg: DecoderTrainConfig, dist, dataset, batch_size: int = 50):
        from sitcli.evaluate import inception

        self.dist, self.batch_size = dist, batch_size
        data = _open(cfg.eval_data, cfg.image_size) if cfg.eval_data else dataset
        n = min(cfg.eval_num, len(data))
        self.images = torch.cat([data.__getitems__([(i, False) for i in range(s, min(s + 64, n))])[0]
                                 for s in range(0, n, 64)])
        self.net = inception.load_inception(cfg.inception_weights, dist.device)
        self.reference = self._features(self.images)

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> np.ndarray:
        from sitcli.runtime import tf32

        rows = []
        for s in range(0, len(images), self.batch_size):
            u8 = to_uint8(images[s : s + self.batch_size]).permute(0, 3, 1, 2).to(self.dist.device)
            u8 = u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8  # grey as RGB, as `sit fid` reads it
            with torch.inference_mode(), tf32(False):
                rows.append(self.net(u8.float() / 255, ("pool",))["pool"].double().cpu())
        return torch.cat(rows).numpy()

    @torch.no_grad()
    def run(self, rae: RAE) -> dict[str, float]:
        from sitcli.evaluate.metrics import frechet_distance

        started = time.perf_counter()
        out = {"rfid": float("nan"), "l1": float("nan"), "psnr": float("nan")}
        if self.dist.is_main:
            recon = torch.cat([rae.decode_raw(rae.encoder.features(self.images[s : s + self.batch_size]
                                                                     .to(self.dist.device))).cpu()
                               for s in range(0, len(self.images), self.batch_size)])
            a, b = self.reference, self._features(recon)
            out["rfid"] = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
            x01, r01 = (self.images + 1) / 2, (recon.clamp(-1, 1) + 1) / 2
            out["l1"] = float((x01 - r01).abs().mean())
            mse = ((x01 - r01) ** 2).flatten(1).mean(1)
            out["psnr"] = float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())
        distributed.barrier()
        return {**out, "eval_s": time.perf_counter() - started}
