"""Pixel data: the embedded digits and image folders, and what a model needs to know about its data (``DataInfo``).

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
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.datasets.folder import IMG_EXTENSIONS

from sitcli.errors import InputError

DIGITS = "digits"
# The one list of file types read as images, by training folders and `sit fid` alike: torchvision's
# (lower case, with the dot), which is also pytorch-fid's.
IMAGE_EXTENSIONS = frozenset(IMG_EXTENSIONS)


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


# Modes Pillow opens 16-bit (and 32-bit integer) grey images in: its convert("RGB") clips them to 255, i.e. white.
WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def as_rgb(image):
    """A PIL image as 8-bit RGB, with 16-bit grey scaled by 255 / 65535 instead of clipped (all else: convert)."""
    from PIL import Image

    if image.mode in WIDE_GREY:
        grey = np.asarray(image).astype(np.float64) * (255 / 65535)
        image = Image.fromarray(np.clip(np.round(grey), 0, 255).astype(np.uint8))
    return image.convert("RGB")


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


def is_sit_output(folder: Path) -> bool:
    """Whether ``folder`` is something sit wrote or is writing: a run (its config.json names its data and model),
    a sample folder (sample.json), a latent cache (latents.json, or the shards of one being made), or a folder a
    sit job holds (.lock). Such a folder inside an image folder is not data: a run kept in its own --data folder
    must not become a class of it when it is resumed."""
    if any((folder / name).exists() for name in ("sample.json", "latents.json", ".lock", "shards/settings.json")):
        return True
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and {"data", "model", "interpolant"} <= set(config)


def _scan_folder(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    if not root.is_dir():
        raise InputError(
            f"data folder {root} does not exist; pass --data digits or a folder with one sub-folder per class"
        )
    outputs: dict[Path, bool] = {}

    def sit_output(folder: Path) -> bool:
        if folder not in outputs:
            outputs[folder] = is_sit_output(folder)
        return outputs[folder]

    def inside_output(path: Path, top: Path) -> bool:
        parent = path.parent
        while parent != top:  # the folders between the class folder and the file (none for most files)
            if sit_output(parent):
                return True
            parent = parent.parent
        return False

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and not sit_output(p))
    if not classes:
        raise InputError(
            f"data folder {root} has no class sub-folders; put the images in ROOT/<class name>/*.png "
            "(one sub-folder per class)"
        )
    files = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file() and not inside_output(path, root / name):
                files.append((path, label))
    left_out = sorted(str(folder) for folder, output in outputs.items() if output)
    if left_out:
        print(f"note: {root} holds what sit wrote ({', '.join(left_out[:3])}{', ...' if len(left_out) > 3 else ''}): "
              "left out of the data", file=sys.stderr, flush=True)
    if not files:
        raise InputError(
            f"data folder {root} has class sub-folders but no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
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
        self.info = DataInfo(
            channels=3, size=image_size, num_classes=self.num_classes, image_size=image_size, latent=False
        )

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> np.ndarray | None:
        """The image at ``index`` as HxWx3 uint8, or None (after a message) when it cannot be read."""
        from PIL import Image

        path = self.files[index][0]
        try:
            with Image.open(path) as image:
                return center_crop_arr(as_rgb(image), self.image_size)
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
