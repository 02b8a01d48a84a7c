"""Bits per dimension of a data set under a trained pixel-space model, via the ODE likelihood.

With uniform dequantization of 8-bit pixels u in {0..255}^D, x = 2 (u + n) / 256 - 1 with
n ~ U[0, 1)^D, the discrete log-likelihood is bounded below by E_n[log p(x)] - D log 128 (the
factor 128 = 256 / 2 is the volume change from the [-1, 1] scale back to pixel bins), so

    bits/dim = (-log p(x) + D log 128) / (D log 2),

averaged over images; log p(x) is the probability-flow ODE likelihood (``transport.log_likelihood``)
evaluated with each image's true class label.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sitcli.config import EXTERNAL
from sitcli.data import open_dataset
from sitcli.domains import COUNT, POSITIVE, SEED, check_domains
from sitcli.errors import InputError
from sitcli.loading import load_model
from sitcli.runtime import autocast_model, check_device_precision, check_precision
from sitcli.session import session
from sitcli.transport import LIKELIHOOD_METHODS, log_likelihood
from sitcli.transport.likelihood import DIVERGENCES


@dataclass
class NllConfig:
    """The settings of ``sit nll``: which model scores which images, and how the likelihood ODE is solved.

    ``num`` images (a seeded random subset; None: all) of ``data`` (None: the run's data); ``steps`` is for
    fixed-grid methods; ``divergence`` None picks "exact" up to 1,024 dimensions and "hutchinson" above;
    ``model`` checks the architecture (as for ``sit sample``).
    """

    ckpt: str
    model: str | None = None
    data: str | None = None
    num: int | None = 1000
    batch_size: int = 64
    method: str = "dopri5"
    steps: int = 100
    atol: float = 1e-5
    rtol: float = 1e-5
    divergence: str | None = None
    seed: int = 0
    ema: bool = True
    precision: str = "fp32"

    def __post_init__(self):
        check_domains(asdict(self), NLL_DOMAINS, {"num": "--num-samples"})
        if self.method not in LIKELIHOOD_METHODS:
            raise InputError(f"--method {self.method!r} is not a likelihood method; choose one of "
                             f"{', '.join(LIKELIHOOD_METHODS)}")
        if self.divergence is not None and self.divergence not in DIVERGENCES:
            raise InputError(f"--divergence {self.divergence!r}: choose {' or '.join(DIVERGENCES)}")
        check_precision(self.precision, allowed=("fp32", "bf16"))


NLL_DOMAINS = dict(num=COUNT, batch_size=COUNT, steps=COUNT, atol=POSITIVE, rtol=POSITIVE, seed=SEED)


@dataclass
class NllResult:
    bits_per_dim: float
    std_error: float  # standard error of the mean over images
    num: int
    dims: int


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [-1, 1] on the 8-bit grid -> 2 (u + n) / 256 - 1 with n ~ U[0, 1)."""
    u = ((x + 1) * 127.5).round().clamp(0, 255)
    return 2 * (u + torch.rand(x.shape, generator=generator)) / 256 - 1


def bits_per_dim(log_p: torch.Tensor, dims: int) -> torch.Tensor:
    return (-log_p + dims * math.log(128)) / (dims * math.log(2))


def nll(cfg: NllConfig, progress: bool = True, device: str | None = None) -> NllResult:
    """Mean bits/dim of ``cfg.num`` images of ``cfg.data`` under the model of ``cfg.ckpt``."""
    with session(device) as job:
        dev = job.device
        check_device_precision(cfg.precision, dev)
        loaded = load_model(cfg.ckpt, cfg.ema, model=cfg.model)
        tcfg = loaded.config
        job.set_threads(tcfg.threads)
        if tcfg.latent_scale is not None:
            raise InputError("sit nll measures pixel-space models; this one works in a VAE latent space")
        data = cfg.data or tcfg.data
        if data == EXTERNAL:
            raise InputError("pass --data: a converted checkpoint does not say what it was trained on")
        dataset = open_dataset(data, tcfg.image_size)
        info = dataset.info
        if (info.channels, info.size) != (tcfg.in_channels, tcfg.input_size):
            raise InputError(f"{data} gives {info.channels}x{info.size}x{info.size} images; the model expects "
                             f"{tcfg.in_channels}x{tcfg.input_size}x{tcfg.input_size}")
        dims = info.channels * info.size * info.size
        divergence = cfg.divergence or ("exact" if dims <= 1024 else "hutchinson")
        g = torch.Generator().manual_seed(cfg.seed)
        order = torch.randperm(len(dataset), generator=g)[: cfg.num or len(dataset)].tolist()
        fn = autocast_model(loaded.model.to(dev), cfg.precision, dev)
        values = _score(loaded.transport, fn, dataset, order, cfg.batch_size, dims, dev, g, tcfg.num_classes > 0,
                        progress, method=cfg.method, atol=cfg.atol, rtol=cfg.rtol, divergence=divergence,
                        steps=cfg.steps)
    err = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return NllResult(values.mean().item(), err, len(values), dims)


def _score(transport, fn, dataset, order: list[int], batch_size: int, dims: int, device: torch.device,
           generator: torch.Generator, conditional: bool, progress: bool, **solver) -> torch.Tensor:
    """Bits/dim of the images ``order`` of ``dataset``, batch by batch (float64, CPU)."""
    bpd = []
    bar = Progress(TextColumn("[bold]nll[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[bpd]}"),
                   TimeRemainingColumn(), console=Console(stderr=True), disable=not progress)
    with bar:
        task = bar.add_task("nll", total=len(order), bpd="")
        for start in range(0, len(order), batch_size):
            x, y = dataset.__getitems__([(i, False) for i in order[start : start + batch_size]])
            x = dequantize(x, generator).to(device)
            kwargs = {"y": y.to(device)} if conditional else {}
            hutchinson = solver["divergence"] == "hutchinson"
            log_p = log_likelihood(transport, fn, x, generator=generator if hutchinson else None, model_kwargs=kwargs,
                                   **solver)
            bpd.append(bits_per_dim(log_p.double().cpu(), dims))
            mean = torch.cat(bpd).mean().item()
            bar.update(task, advance=len(y), bpd=f"{mean:.4f} bits/dim")
    return torch.cat(bpd)
