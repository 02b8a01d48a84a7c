"""Defaults chosen by the data: the digits quickstart, or the paper's ImageNet settings.

``apply_presets`` fills every field a ``TrainConfig`` left as None from the preset of its data;
a value that was given always wins. It is called when a training run is prepared, never when a
config is read back from a run folder or built for a converted checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from sitcli.config import TrainConfig
from sitcli.data import DIGITS, is_latent_cache
from sitcli.models import SiT_models, model_shape

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


# The aligned block by model depth: REPA's choice for SiT-XL (28 blocks) and L (24), and B (12).
REPA_DEPTHS = {28: 8, 24: 8, 12: 4}


# The few-step models' defaults by model depth: DMF's t-blocks (DMF-XL/2: 20 of 28), iMF's velocity head (a quarter).
FEWSTEP_DEPTHS = {
    "dmf": {"dmf_depth": lambda depth: round(depth * 20 / 28)},
    "imf": {"velocity_head_depth": lambda depth: max(1, depth // 4)},
}


def preset_name(data: str) -> str:
    return "digits" if data == DIGITS else "paper"


def apply_presets(cfg: TrainConfig) -> TrainConfig:
    """Fill the unset fields of ``cfg`` (in place) from its data's preset, and the default ``out``."""
    for name, value in PRESETS[preset_name(cfg.data)].items():
        if getattr(cfg, name) is None:
            if name == "image_size" and is_latent_cache(cfg.data):
                continue  # the cache knows its size
            setattr(cfg, name, value)
    if cfg.repa_encoder and cfg.repa_depth is None and cfg.model in SiT_models:
        depth = model_shape(cfg.model)[0]
        cfg.repa_depth = REPA_DEPTHS.get(depth, max(1, depth // 3))
    if cfg.model in SiT_models and cfg.objective in FEWSTEP_DEPTHS:
        depth = model_shape(cfg.model)[0]
        for name, default in FEWSTEP_DEPTHS[cfg.objective].items():
            if getattr(cfg, name) is None:
                setattr(cfg, name, default(depth))
    if cfg.out is None:
        cfg.out = str(Path("runs") / (Path(cfg.data).name or "run"))
    return cfg
