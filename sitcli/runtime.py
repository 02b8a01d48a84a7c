"""Where and how a job computes: the device and the precision (autocast, TF32).

Every job takes ``device`` and ``precision`` strings from its config; this module is the one place
that turns them into torch objects, so "cuda if available" and "bf16 means autocast to bfloat16"
are written once.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

import torch

from sitcli.errors import InputError

PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch.device; None: CUDA when available, else the CPU. Unknown names and a
    CUDA device on a machine without CUDA are refused."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device} requested but CUDA is not available; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    return dev


def compiled(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``torch.compile(model)``. On a CPU whose compiled code would be AVX2 or plain C++ (an AVX2 machine, one
    without AVX2, or ``ATEN_CPU_CAPABILITY=avx2|default``), inductor's loops are left scalar: torch 2.14's AVX2 vector
    code computes a SiT's forward wrong (NaN, or 1e15 where eager gives 0.1), and without a vector ISA it still
    writes vector code that does not compile. Scalar loops and the AVX-512 code agree with eager to 1e-7."""
    if device.type == "cpu":
        from torch._inductor import config, cpu_vec_isa

        isa = cpu_vec_isa.pick_vec_isa()
        if not isa or str(isa) == "avx2":
            config.cpp.vec_isa_ok = False
    return torch.compile(model)


def cpu_count() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_workers(num_workers: int | None, flag: str = "--num-workers") -> None:
    """Refuse more worker processes than the machine can run: each is a process (with its memory), and a number
    such as 100000 forks until the machine gives out. Up to 4 per CPU (at least 8) are allowed, for loaders that
    wait on slow disks."""
    most = max(8, 4 * cpu_count())
    if num_workers is not None and num_workers > most:
        raise InputError(f"{flag} {num_workers}: this machine has {cpu_count()} CPUs; pass at most {most} "
                         "(each worker is a process)")


def check_precision(precision: str, allowed: tuple[str, ...] = PRECISIONS) -> None:
    """Refuse a precision that is not one of ``allowed`` (a config's check of its field)."""
    if precision not in allowed:
        raise InputError(f"--precision {precision!r}: choose one of {', '.join(allowed)} (fp16 on CUDA only)")


def check_device_precision(precision: str, device: torch.device) -> None:
    """Refuse fp16 off CUDA, where float16 matmuls are far slower than bfloat16 ones (a job's check once its device
    is known)."""
    if precision == "fp16" and device.type != "cuda":
        raise InputError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context of a precision: off for fp32, else to bfloat16 or float16."""
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")


def autocast_model(model: Callable, precision: str, device: torch.device) -> Callable:
    """``model(x, t, y, **kwargs)`` run under ``autocast(device, precision)`` (kwargs: e.g. a mean-flow model's r)."""

    def call(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        with autocast(device, precision):
            return model(x, t, y, **kwargs)

    return call


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 (10-bit mantissa tensor cores) for float32 matmuls and cuDNN convolutions on CUDA when
    ``enabled``, true IEEE float32 for both otherwise; torch's settings are restored after.

    Training and sampling turn it on by default, as the official SiT and DiT scripts do (outputs move by ~1e-3
    relative); ``--no-tf32`` turns
    it off for bit-level reproduction across GPUs. ``sit fid`` runs with it off unless asked: torch
    lets cuDNN use TF32 for float32 convolutions by default, which moves Inception features by ~1e-3
    and FID with them, differently on different GPUs. No effect on the CPU, whose kernels ignore these
    switches. torch >= 2.9 spells them ``fp32_precision`` ("tf32" / "ieee"); older torch ``allow_tf32``.
    """
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision") and hasattr(matmul, "fp32_precision"):
        # Only the new switches: torch refuses to report TF32 state once the two APIs are mixed.
        switches = [(matmul, "fp32_precision"), (conv, "fp32_precision")]
        value = "tf32" if enabled else "ieee"
    else:  # torch < 2.9
        switches = [(matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32")]
        value = bool(enabled)
    before = [getattr(obj, name) for obj, name in switches]
    try:
        for obj, name in switches:
            setattr(obj, name, value)
        yield
    finally:
        for (obj, name), old in zip(switches, before):
            setattr(obj, name, old)
