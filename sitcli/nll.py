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
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sitcli.config import EXTERNAL, check_flags
from sitcli.data import open_dataset
from sitcli.errors import InputError
from sitcli.loading import load_model
from sitcli.runtime import autocast_model, check_precision, resolve_device
from sitcli.transport import log_likelihood


@dataclass
class NLLResult:
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


def nll(
    ckpt: str,
    data: str | None = None,
    num: int | None = 1000,
    batch_size: int = 64,
    method: str = "dopri5",
    steps: int = 100,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    divergence: str | None = None,
    seed: int = 0,
    ema: bool = True,
    precision: str = "fp32",
    device: str | None = None,
    progress: bool = True,
    model: str | None = None,
) -> NLLResult:
    """Mean bits/dim of ``num`` images (a seeded random subset; None: all) of ``data`` (default: the run's data).

    ``steps`` is for fixed-grid methods; ``divergence`` None picks "exact" up to 1,024 dimensions and
    "hutchinson" above. ``model`` checks the architecture (as for ``sit sample``).
    """
    check_flags("nll", num=num, batch_size=batch_size, steps=steps, atol=atol, rtol=rtol, seed=seed)
    dev = resolve_device(device)
    check_precision(precision, dev)
    loaded = load_model(ckpt, ema, model=model)
    cfg = loaded.config
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.latent_scale is not None:
        raise InputError("sit nll measures pixel-space models; this one works in a VAE latent space")
    data = data or cfg.data
    if data == EXTERNAL:
        raise InputError("pass --data: a converted checkpoint does not say what it was trained on")
    dataset = open_dataset(data, cfg.image_size)
    info = dataset.info
    if (info.channels, info.size) != (cfg.in_channels, cfg.input_size):
        raise InputError(f"{data} gives {info.channels}x{info.size}x{info.size} images; the model expects "
                         f"{cfg.in_channels}x{cfg.input_size}x{cfg.input_size}")
    dims = info.channels * info.size * info.size
    divergence = divergence or ("exact" if dims <= 1024 else "hutchinson")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=g)[: num or len(dataset)].tolist()
    fn = autocast_model(loaded.model.to(dev), precision, dev)
    values = _score(loaded.transport, fn, dataset, order, batch_size, dims, dev, g, cfg.num_classes > 0, progress,
                    method=method, atol=atol, rtol=rtol, divergence=divergence, steps=steps)
    err = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return NLLResult(values.mean().item(), err, len(values), dims)


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
            log_p = log_likelihood(transport, fn, x, generator=generator if hutchinson else None, model_kwargs=kwargs, **solver)
            bpd.append(bits_per_dim(log_p.double().cpu(), dims))
            mean = torch.cat(bpd).mean().item()
            bar.update(task, advance=len(y), bpd=f"{mean:.4f} bits/dim")
    return torch.cat(bpd)
