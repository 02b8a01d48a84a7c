"""Training data: the embedded digits, image folders, and latent caches, and the order of their batches.

    images.py        the digits and image folders, ``DataInfo`` (what a model needs to know about its data)
    latent_cache.py  latent caches: written once by ``sit cache-latents``, read by training
    batches.py       the (index, flip) order of every rank's batches, from (seed, epoch) alone
"""

from __future__ import annotations

from pathlib import Path

from sitcli.data.batches import EpochBatches, batches, check_batch_size
from sitcli.data.images import (DIGITS, IMAGE_EXTENSIONS, DataInfo, DigitsDataset, ImageFolderDataset, center_crop_arr,
                                to_uint8, to_unit_range)
from sitcli.data.latent_cache import LATENT_MANIFEST, LatentDataset, is_latent_cache
from sitcli.errors import InputError

__all__ = ["DIGITS", "IMAGE_EXTENSIONS", "LATENT_MANIFEST", "DataInfo", "DigitsDataset", "EpochBatches",
           "ImageFolderDataset", "LatentDataset", "batches", "center_crop_arr", "check_batch_size", "is_latent_cache",
           "open_dataset", "to_uint8", "to_unit_range"]


def open_dataset(data: str, image_size: int | None = None):
    """``digits``, a latent cache folder, or an image folder (which needs ``image_size``)."""
    if data == DIGITS:
        return DigitsDataset(image_size or 8)
    if not is_latent_cache(data) and any((Path(data) / name).is_file() for name in ("latents.npy", "labels.npy")):
        raise InputError(
            f"the cache at {data} is damaged ({LATENT_MANIFEST} is missing: its extraction did not finish); "
            f"run the same sit cache-latents command again to finish it"
        )
    if is_latent_cache(data):
        dataset = LatentDataset(data)
        if image_size is not None and image_size != dataset.info.image_size:
            raise InputError(
                f"latent cache {data} was made at --image-size {dataset.info.image_size}, not {image_size}; "
                "drop --image-size or rebuild the cache"
            )
        return dataset
    if image_size is None:
        raise InputError("an image folder needs --image-size")
    return ImageFolderDataset(data, image_size)
