"""Decoupled MeanFlow's .pt files (Lee, Yu, Shin 2025, kyungmnlee/dmf): its DMFT, read into sit's time (read only).

DMF's ``DMFT`` (their ``models/dmft.py``) is a SiT: the same patch embedder, one time embedder that embeds both
times, a label table with a null row, DiT blocks and final layer, and no learned-sigma channels (out = in
channels). Its first ``dmf_depth`` blocks are conditioned on t, the remaining blocks and the final layer on r,
which is sit's ``SiT(dmf_depth=...)`` with the same count. Two things keep its files from being SiT-shaped:

- ``logvar_linear.*``: the learned log-variance of their loss weight, read only by training: dropped;
- the time. DMF runs REPA's time (s = 1 noise, x_s = (1 - s) x + s eps) and its network predicts the average
  velocity from s_t down to s_r, u_dmf = (x_{s_r} - x_{s_t}) / (s_r - s_t). With t = 1 - s,

      u(x, t, r) = (z_r - z_t) / (r - t) = -u_dmf(x, 1 - t, 1 - r),

  the map ``formats.repa.to_sit_time`` folds into the weights (the sinusoid map in the time embedder's first
  layer, the sign in the final layer); it holds for r as for t because both go through the one time embedder.

Their training checkpoints are ``{"model", "ema", "opt", "args", "steps"}`` (``train_dmf.py``), whose ``args``
record ``dmf_depth``, ``path_type`` and ``resolution``; their released weights are raw state dicts
(``generate.py`` loads one into a DMFT), which do not say ``dmf_depth``: the reader asks for it (``--dmf-depth``).
A file is DMF's when it has ``logvar_linear.*`` (their training always builds it) or its args name a
``dmf_depth``. Their qk-norm variant (``--qk-norm``, used for 512 px) adds ``attn.q_norm`` / ``attn.k_norm``
scales, which a SiT has no place for: refused.
"""

from __future__ import annotations

from typing import Any

from sitcli.errors import InputError
from sitcli.formats.architecture import StateDict
from sitcli.formats.repa import to_sit_time

TRAINING_ONLY = ("logvar_linear.",)


def is_dmf(state_dict: StateDict, args: dict[str, Any]) -> bool:
    """A DMF checkpoint: its DMFT's loss-weight head, or training args with ``dmf_depth``."""
    return any(k.startswith(TRAINING_ONLY) for k in state_dict) or "dmf_depth" in args


def dmf_to_sit(state_dict: StateDict, where: str = "DMF checkpoint") -> StateDict:
    """The weights of sit's ``SiT(dmf_depth=..., learn_sigma=False)`` that computes -u_dmf(x, 1 - t, 1 - r)."""
    norms = sorted(k for k in state_dict if ".q_norm." in k or ".k_norm." in k)
    if norms:
        raise InputError(f"{where} uses DMF's qk-norm ({norms[0]}, ...), which a SiT does not have: only their "
                         f"models trained without --qk-norm (the 256 px ones) can be read")
    return to_sit_time({k: v for k, v in state_dict.items() if not k.startswith(TRAINING_ONLY)})


def dmf_depth_from(args: dict[str, Any]) -> int | None:
    """The ``dmf_depth`` a DMF training checkpoint's args record (None for a raw state dict)."""
    return int(args["dmf_depth"]) if args.get("dmf_depth") is not None else None
