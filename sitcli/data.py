"""Training data: the embedded digits, image folders, and pre-extracted latent caches.

Every data set yields ``(x, y)`` with ``x`` a float tensor in [-1, 1] (pixels) or VAE latents
(already multiplied by the scaling factor), and ``y`` an integer class label. Items are addressed
as ``(index, flip)`` pairs so that the random horizontal flip is decided by the sampler, not by a
worker's RNG: the order and the augmentation of every batch then follow from (seed, epoch) alone,
which is what makes resuming exact and independent of the number of workers or ranks.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.datasets.folder import IMG_EXTENSIONS

from sitcli.errors import InputError

DIGITS = "digits"
# The one list of file types read as images, by training folders and `sit fid` alike: torchvision's
# (lower case, with the dot), which is also pytorch-fid's.
IMAGE_EXTENSIONS = frozenset(IMG_EXTENSIONS)
LATENT_MANIFEST = "latents.json"
REPA_DTYPES = ("float16", "float32")  # storage of cached encoder features (numpy has no bfloat16)


@dataclass
class DataInfo:
    """What a model needs to know about its data: tensor shape, classes, and the space it lives in."""

    channels: int
    size: int  # side of the (latent) image the model sees
    num_classes: int
    image_size: int  # side of the pixel image
    latent: bool  # True: x are VAE latents (decode to see them)
    vae: str | None = None  # the VAE a latent cache was made with
    latent_scale: float | None = None


#################################################################################
#                                  Pixel images                                 #
#################################################################################


def to_unit_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images (..., C, H, W) -> float in [-1, 1]: x = u / 127.5 - 1."""
    return torch.as_tensor(np.asarray(images)).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float images in [-1, 1], (B, C, H, W) -> uint8 (B, H, W, C), rounded to the nearest level."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def center_crop_arr(image, image_size: int) -> np.ndarray:
    """ADM's crop: halve with a box filter while the short side is >= 2x the target, resize the short
    side to ``image_size`` with bicubic filtering, then cut out the central square. Returns HxWx3 uint8."""
    from PIL import Image

    while min(*image.size) >= 2 * image_size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = image_size / min(*image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


class DigitsDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes, 1 channel), in memory.

    The 17 grey levels 0..16 are mapped to uint8 as round(v * 255 / 16), then to [-1, 1]; with
    ``image_size`` other than 8 the images are resized bilinearly. Digits are never flipped.
    """

    num_classes = 10
    flip = False

    def __init__(self, image_size: int = 8):
        from sklearn.datasets import load_digits

        digits = load_digits()
        u8 = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
        x = to_unit_range(u8)
        if image_size != 8:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        self.x = x.contiguous()
        self.y = torch.as_tensor(digits.target, dtype=torch.long)
        self.info = DataInfo(channels=1, size=image_size, num_classes=10, image_size=image_size, latent=False)

    def __len__(self) -> int:
        return len(self.y)

    def __getitems__(self, items: Sequence[tuple[int, bool]]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.tensor([i for i, _ in items])
        return self.x[idx], self.y[idx]


def _scan_folder(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    if not root.is_dir():
        raise InputError(f"data folder {root} does not exist; pass --data digits or a folder with one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"data folder {root} has no class sub-folders; put the images in ROOT/<class name>/*.png (one sub-folder per class)")
    files = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                files.append((path, label))
    if not files:
        raise InputError(f"data folder {root} has class sub-folders but no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files, classes


class ImageFolderDataset:
    """An image folder with one sub-folder per class (sorted names = labels 0, 1, ...), RGB, center-cropped.

    An unreadable image is reported on stderr by path and replaced by the next readable one, so a
    few corrupt files neither stop a long run nor change the batch size.
    """

    flip = True

    def __init__(self, root: str | Path, image_size: int):
        self.root = Path(root)
        self.files, self.classes = _scan_folder(self.root)
        self.image_size = image_size
        self.num_classes = len(self.classes)
        self.bad: set[int] = set()
        self.info = DataInfo(channels=3, size=image_size, num_classes=self.num_classes, image_size=image_size, latent=False)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> np.ndarray | None:
        """The image at ``index`` as HxWx3 uint8, or None (after a message) when it cannot be read."""
        from PIL import Image

        path = self.files[index][0]
        try:
            with Image.open(path) as image:
                return center_crop_arr(image.convert("RGB"), self.image_size)
        except Exception as err:  # noqa: BLE001 - any decoder failure means "skip this file"
            if index not in self.bad:
                self.bad.add(index)
                print(f"warning: skipping unreadable image {path}: {err}", file=sys.stderr, flush=True)
            return None

    def __getitem__(self, item: tuple[int, bool]) -> tuple[torch.Tensor, int]:
        index, flip = item
        for offset in range(len(self)):
            arr = self.load((index + offset) % len(self))
            if arr is not None:
                break
        else:
            raise InputError(f"no image under {self.root} could be read")
        x = to_unit_range(arr.transpose(2, 0, 1).copy())
        return (x.flip(-1) if flip else x), self.files[(index + offset) % len(self)][1]

    def __getitems__(self, items: Sequence[tuple[int, bool]]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(self[item] for item in items))
        return torch.stack(xs), torch.tensor(ys)


#################################################################################
#                                 Latent caches                                 #
#################################################################################


class LatentDataset:
    """A latent cache written by ``sit cache-latents``: ``latents.json`` (manifest), ``latents.npy``
    (N, 2, C, h, w) float16 with the latents of each image and of its mirror image, ``labels.npy``.

    The arrays are memory-mapped, so a cache larger than RAM works; ``flip`` picks the mirrored copy.
    After ``use_features``, batches are ``(x, y, [features of each chosen encoder (B, tokens, width),
    float32])``, read from the encoders' ``repa_features_K.npy`` (N, 2, tokens, width) beside the latents.
    """

    flip = True
    features: tuple = ()

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest, self.latents, self.labels = _open_cache(self.root)
        _, _, channels, size, _ = self.latents.shape
        self.classes = manifest["classes"]
        self.num_classes = len(self.classes)
        self.info = DataInfo(
            channels=channels,
            size=size,
            num_classes=self.num_classes,
            image_size=manifest["image_size"],
            latent=True,
            vae=manifest["vae"],
            latent_scale=manifest["latent_scale"],
        )
        self.manifest = manifest

    def use_features(self, identities: list[str], paths: list[str]) -> list[dict]:
        """Read the cached features of the encoders with these sha256 ``identities`` (given as
        ``paths``) with every batch; returns their manifest entries. Refuses a missing encoder."""
        stored = {e["sha256"]: e for e in self.manifest.get("repa_features", [])}
        for path, identity in zip(paths, identities):
            if identity not in stored:
                held = ", ".join(e["encoder"] for e in stored.values()) or "none"
                m = self.manifest
                raise InputError(f"latent cache {self.root} has no features of encoder {path} (it holds: {held}); build "
                                 f"a cache with them: sit cache-latents --data {m['data']} --vae {m['vae']} --image-size "
                                 f"{m['image_size']} --seed {m['seed']} --out NEW --repa-encoder {path}")
        entries = [stored[i] for i in identities]
        self.features = tuple(np.load(self.root / e["file"], mmap_mode="r") for e in entries)
        return entries

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, items: Sequence[tuple[int, bool]]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.array([i for i, _ in items])
        flips = np.array([int(f) for _, f in items])
        x = torch.from_numpy(np.ascontiguousarray(self.latents[idx, flips])).float()
        y = torch.from_numpy(np.asarray(self.labels[idx], dtype=np.int64))
        if not self.features:
            return x, y
        return x, y, [torch.from_numpy(np.ascontiguousarray(f[idx, flips])).float() for f in self.features]


def _open_cache(root: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """(manifest, latents, labels) of a cache, each checked against the others; a damaged cache is an InputError."""
    def damaged(what: str, manifest: dict | None = None) -> InputError:
        m = manifest or {}
        redo = (f"sit cache-latents --data {m['data']} --vae {m['vae']} --image-size {m['image_size']} --seed "
                f"{m.get('seed', 0)} --out {root} --overwrite") if {"data", "vae", "image_size"} <= set(m) else \
            f"sit cache-latents --data IMAGES --vae VAE --out {root} --overwrite"
        return InputError(f"the cache at {root} is damaged ({what}); rebuild it with {redo}")

    try:
        manifest = json.loads((root / LATENT_MANIFEST).read_text())
        if not isinstance(manifest, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise damaged(f"{LATENT_MANIFEST} is not valid JSON") from None
    missing = [k for k in ("classes", "image_size", "vae", "latent_scale", "count") if k not in manifest]
    if missing:
        raise damaged(f"{LATENT_MANIFEST} lacks {', '.join(missing)}", manifest)
    arrays = []
    for name in ("latents.npy", "labels.npy"):
        if not (root / name).is_file():
            raise damaged(f"{name} is missing", manifest)
        try:
            arrays.append(np.load(root / name, mmap_mode="r"))
        except (ValueError, OSError, EOFError) as err:  # a cut header, or data shorter than the header says
            raise damaged(f"{name} cannot be read: {err}", manifest) from None
    latents, labels = arrays
    if latents.ndim != 5 or latents.shape[1] != 2 or labels.ndim != 1:
        raise damaged(f"latents.npy has shape {latents.shape}, labels.npy {labels.shape}; "
                      "expected (N, 2, C, h, w) and (N,)", manifest)
    if not len(latents) == len(labels) == manifest["count"]:
        raise damaged(f"{len(latents)} latents, {len(labels)} labels, {manifest['count']} in {LATENT_MANIFEST}", manifest)
    return manifest, latents, labels


def is_latent_cache(path: str | Path) -> bool:
    return (Path(path) / LATENT_MANIFEST).is_file()


def open_dataset(data: str, image_size: int | None = None):
    """``digits``, a latent cache folder, or an image folder (which needs ``image_size``)."""
    if data == DIGITS:
        return DigitsDataset(image_size or 8)
    if not is_latent_cache(data) and any((Path(data) / name).is_file() for name in ("latents.npy", "labels.npy")):
        raise InputError(f"the cache at {data} is damaged ({LATENT_MANIFEST} is missing: its extraction did not finish); "
                         f"run the same sit cache-latents command again to finish it")
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


#################################################################################
#                            Batch order (all ranks)                            #
#################################################################################


class EpochBatches:
    """Infinite sequence of per-rank batches of ``(index, flip)``; the position is (epoch, batch).

    Epoch e shuffles the data with a generator seeded by (seed, e) and draws one flip bit per item;
    global batch k of the epoch is items [k*B, (k+1)*B) of that order (B = global batch size), and
    rank r takes the r-th of its ``world_size`` equal slices. The incomplete last batch is dropped.
    """

    def __init__(self, n: int, batch_size: int, seed: int, flip: bool, rank: int = 0, world_size: int = 1, start_step: int = 0):
        check_batch_size(n, batch_size, world_size)
        self.batches_per_epoch = n // batch_size
        self.n, self.batch_size, self.seed, self.flip = n, batch_size, seed, flip
        self.rank, self.world_size, self.start_step = rank, world_size, start_step

    def epoch_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.n, generator=g)
        flips = torch.randint(0, 2, (self.n,), generator=g).bool() if self.flip else torch.zeros(self.n, dtype=torch.bool)
        return order, flips

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        epoch, batch = divmod(self.start_step, self.batches_per_epoch)
        per_rank = self.batch_size // self.world_size
        while True:
            order, flips = self.epoch_order(epoch)
            for k in range(batch, self.batches_per_epoch):
                lo = k * self.batch_size + self.rank * per_rank
                yield [(int(order[i]), bool(flips[order[i]])) for i in range(lo, lo + per_rank)]
            epoch, batch = epoch + 1, 0


def check_batch_size(n: int, batch_size: int, world_size: int = 1) -> None:
    """Refuse a global batch that the ranks cannot share equally or that the data set cannot fill once."""
    if batch_size % world_size:
        raise InputError(f"--batch-size {batch_size} is not divisible by the {world_size} ranks; pick a multiple")
    if n < batch_size:
        raise InputError(f"the data set has {n} items, fewer than --batch-size {batch_size}; lower --batch-size")


def batches(dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start_step: int = 0, num_workers: int = 0) -> Iterator:
    """Per-rank ``(x, y)`` batches forever, starting at training step ``start_step``."""
    from torch.utils.data import DataLoader

    sampler = EpochBatches(len(dataset), batch_size, seed, dataset.flip, rank, world_size, start_step)
    if num_workers == 0:
        return (dataset.__getitems__(items) for items in sampler)
    loader = DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=_identity,
        pin_memory=torch.cuda.is_available(), persistent_workers=True, prefetch_factor=4,
    )
    return iter(loader)


def _identity(batch):
    return batch
