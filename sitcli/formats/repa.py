"""REPA's .pt files (the REPA code, Yu et al. 2025): its SiT, with ``projectors.*``, in sit's time.

REPA writes time the other way round. With s its time (s = 0 data, s = 1 noise), its paths are
``linear``: x_s = (1 - s) x + s eps, and ``cosine``: x_s = cos(pi s / 2) x + sin(pi s / 2) eps,
and its network u(x_s, s) predicts d x_s / ds (eps - x for the linear path). sit's time is
t = 1 - s, so the paths are sit's ``linear`` (x_t = t x + (1 - t) eps) and ``gvp``
(sin(pi t / 2) x + cos(pi t / 2) eps), and sit's velocity is

    v(x, t) = d x_t / dt = -u(x, 1 - t).

The map is folded into the weights, exactly, so the result is a plain sit-time SiT (it samples,
converts and exports like any other): the network sees t only through the sinusoids
[cos(t f_i), sin(t f_i)], and those of 1 - t are a fixed linear map of those of t,

    cos((1 - t) f) =  cos f cos(t f) + sin f sin(t f),   sin((1 - t) f) = sin f cos(t f) - cos f sin(t f),

which multiplies into the first time-embedding layer (``t_embedder.mlp.0.weight``); the sign is
the output layer's (``final_layer.linear`` negated: REPA's SiT has no learned-sigma channels).
The projectors are training-only and dropped. Both products are computed in float64 and rounded
once to float32, so the converted network matches -u(x, 1 - t) to float32 round-off.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sitcli.errors import InputError
from sitcli.formats.architecture import StateDict, backbone

# REPA's --path-type -> sit's interpolant in sit's time.
PATH_TYPES = {"linear": "linear", "cosine": "gvp"}


def is_repa(state_dict: StateDict, args: dict[str, Any]) -> bool:
    """A REPA checkpoint: its SiT carries projectors, or its training args name an encoder."""
    return any(k.startswith("projectors.") for k in state_dict) or "enc_type" in args or "encoder_depth" in args


def repa_transport(args: dict[str, Any]) -> dict[str, Any]:
    """sit Transport settings of a REPA run (its default path is linear; it predicts velocity only)."""
    path = str(args.get("path_type", "linear")).lower()
    if path not in PATH_TYPES:
        raise InputError(f"unknown REPA path_type {args.get('path_type')!r}: expected linear or cosine")
    if str(args.get("prediction", "v")).lower() not in ("v", "velocity"):
        raise InputError(f"REPA prediction {args.get('prediction')!r}: only velocity ('v') checkpoints can be read")
    return {"interpolant": PATH_TYPES[path], "prediction": "velocity"}


def to_sit_time(state_dict: StateDict) -> StateDict:
    """The weights of the SiT that computes v(x, t) = -u(x, 1 - t) (see the module docstring)."""
    out = backbone(state_dict)
    for key in ("t_embedder.mlp.0.weight", "final_layer.linear.weight", "final_layer.linear.bias"):
        if key not in out:
            raise InputError(f"REPA checkpoint has no {key!r}: not REPA's SiT layout")
    first = out["t_embedder.mlp.0.weight"]
    half = first.shape[1] // 2
    # The frequencies exactly as the model computes them (float32), then the map in float64.
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half).double()
    cos, sin = torch.diag(torch.cos(freqs)), torch.diag(torch.sin(freqs))
    flip = torch.cat([torch.cat([cos, sin], dim=1), torch.cat([sin, -cos], dim=1)], dim=0)
    if first.shape[1] != 2 * half:
        raise InputError("REPA checkpoint: an odd time-embedding width is not supported")
    out["t_embedder.mlp.0.weight"] = (first.double() @ flip).to(first.dtype)
    out["final_layer.linear.weight"] = -out["final_layer.linear.weight"]
    out["final_layer.linear.bias"] = -out["final_layer.linear.bias"]
    return out
