"""FD-DINOv2 (Stein et al. 2023, reported by EDM2): the Fréchet distance of DINOv2 features.

Each image (uint8, any size) is scaled to [0, 1], resized to 224 x 224 (bicubic, antialiased when
shrinking), normalised with the encoder's mean and std, and summarised by the final layer-normed
class token of a DINOv2 encoder (ViT-L/14 in the paper: 1024-d); the statistics are its mean
``mu_d`` and covariance ``sigma_d``, cached in a statistics .npz beside FID's. The encoder is read
by ``sitcli.encoders`` from a local folder or torch hub file, never downloaded. The resizing is
done on tensors, not with PIL as dgm-eval does, so numbers match it to resampling differences,
not bit for bit.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from sitcli.encoders import Encoder
from sitcli.errors import InputError
from sitcli.evaluate import inputs
from sitcli.evaluate.statistics import GaussianStats

RESOLUTION = 224
KEYS = ("mu_d", "sigma_d")


def dinov2_stats(source: inputs.Source, encoder: Encoder, label: str, batch_size: int, num_workers: int,
                 progress: Callable[[str, int, int], None] | None = None) -> dict[str, np.ndarray]:
    """{"mu_d", "sigma_d"} of the class-token features of every image of ``source``."""
    device = next(encoder.module.parameters()).device
    stats = GaussianStats(encoder.width, device)
    total, done = int(source.num_images), 0
    task = f"DINOv2 on {label}"
    if progress:
        progress(task, 0, total)
    for batch in inputs.image_batches(source, batch_size, num_workers, pin_memory=device.type == "cuda"):
        if batch.error:
            raise InputError(batch.error)
        images = batch.images if isinstance(batch.images, list) else [batch.images]
        for x in images:
            x = x[None] if x.dim() == 3 else x
            stats.update(encoder.embedding(x.to(device).float() / 127.5 - 1, RESOLUTION))
        done += len(batch)
        if progress:
            progress(task, done, total)
    return {"mu_d": stats.mean(), "sigma_d": stats.covariance()}
