"""Latent statistics on disk: sit's own safetensors file, and the files RAE and LightningDiT release.

    save_normalization("cache/latent_stats.safetensors", norm)     # atomic; tensors + metadata
    norm = load_normalization("cache/latent_stats.safetensors")
    norm = load_normalization("models/stats/dinov2/wReg_base/imagenet1k/stat.pt")  # RAE: {"mean", "var"}
    norm = load_normalization("imagenet_train_256/latents_stats.pt")               # LightningDiT: {"mean", "std"}

Foreign .pt files are read with ``torch.load(weights_only=True)``. RAE's file holds the variance
(eps = 1e-5 is added when applied, as RAE does); LightningDiT's holds the std (no eps) and its
``latent_multiplier`` is a training setting, passed here as ``scale``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sitcli import atomic
from sitcli.autoencoder.normalization import RAE_EPS, LatentNormalization, from_mean_std, from_mean_var
from sitcli.errors import InputError

STATS_FILE = "latent_stats.safetensors"  # its name beside a latent cache


def save_normalization(path: str | Path, norm: LatentNormalization) -> None:
    """Write ``norm`` as a safetensors file (tensors mean / std, metadata kind, scale, eps, source)."""
    from safetensors.torch import save_file

    tensors, metadata = norm.to_state()
    atomic.atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_normalization(path: str | Path, scale: float = 1.0, eps: float = RAE_EPS) -> LatentNormalization:
    """The statistics in ``path``: sit's .safetensors, RAE's stat.pt (mean, var; ``eps`` added to var)
    or LightningDiT's latents_stats.pt (mean, std; times ``scale``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no latent statistics at {path}: compute them with sit's latent statistics command, or pass "
                         "RAE's stat.pt / LightningDiT's latents_stats.pt")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # noqa: BLE001 - safetensors raises its own kinds on damaged files
            raise InputError(f"{path} is not a readable safetensors file ({type(err).__name__})") from None
        return LatentNormalization.from_state(tensors, metadata)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds on non-checkpoints
        raise InputError(f"{path} is not a readable statistics file ({type(err).__name__}); expected RAE's stat.pt "
                         "or LightningDiT's latents_stats.pt") from None
    if not isinstance(state, dict) or "mean" not in state and "var" not in state:
        keys = sorted(state)[:4] if isinstance(state, dict) else type(state).__name__
        raise InputError(f"{path} holds no latent statistics (expected keys mean and var, or mean and std; "
                         f"found {keys})")
    if "std" in state:
        return from_mean_std(state["mean"], state["std"], scale=scale, source=str(path))
    return from_mean_var(state.get("mean"), state.get("var"), eps=eps, source=str(path), scale=scale)
