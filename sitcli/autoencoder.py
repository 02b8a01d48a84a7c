"""Optional latent space: a diffusers AutoencoderKL loaded from a local folder, and latent caches.

Latents are z = s * E(x) with E the VAE encoder's posterior sample and s the scaling factor from
the VAE's config (0.18215, Stable Diffusion's, when the config has none); images are D(z / s).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from sitcli.errors import InputError

DEFAULT_LATENT_SCALE = 0.18215


def load_vae(path: str | Path, device: torch.device | str = "cpu"):
    """A diffusers AutoencoderKL from a local folder (``config.json`` + weights); never downloads."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise InputError(
            f"no VAE at {folder}: --vae needs a local diffusers AutoencoderKL folder (config.json and "
            "diffusion_pytorch_model.safetensors), e.g. a copy of stabilityai/sd-vae-ft-ema"
        )
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise InputError(f"could not load the VAE in {folder} ({err}); check that its weights file is complete") from None
    return vae.to(device).eval().requires_grad_(False)


def latent_scale(vae) -> float:
    return float(getattr(vae.config, "scaling_factor", None) or DEFAULT_LATENT_SCALE)


def latent_shape(vae, image_size: int) -> tuple[int, int]:
    """(channels, side) of the latents of an image_size x image_size image."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if image_size % factor:
        raise InputError(f"--image-size {image_size} is not divisible by the VAE's downsampling factor {factor}")
    return vae.config.latent_channels, image_size // factor


@torch.no_grad()
def encode(vae, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [-1, 1] -> scaled latents (a sample of the encoder's posterior)."""
    dist = vae.encode(x.to(vae.dtype)).latent_dist
    return dist.sample(generator=generator).float() * latent_scale(vae)


@torch.no_grad()
def decode(vae, z: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1] (not clamped)."""
    return vae.decode(z.to(vae.dtype) / latent_scale(vae)).sample.float()


def cache_latents(
    data: str,
    vae: str,
    image_size: int,
    out: str,
    batch_size: int = 64,
    num_workers: int = 4,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> Path:
    """One pass of the VAE over an image folder; writes ``out`` as a latent cache that ``sit train --data`` reads.

    Each image is stored twice, as itself and mirrored (the training flip), as float16. Images that
    cannot be read are reported and left out. The arrays are written under temporary names and
    renamed once complete, so an interrupted pass leaves no cache that looks finished.
    """
    from sitcli.data import ImageFolderDataset, is_latent_cache
    from sitcli.runtime import resolve_device

    out_dir = Path(out)
    if is_latent_cache(out_dir):
        raise InputError(f"{out_dir} already holds a latent cache; train on it with --data {out_dir} or pick a new --out")
    dataset = ImageFolderDataset(data, image_size)
    dev = resolve_device(device)
    model = load_vae(vae, dev)
    latent_shape(model, image_size)  # refuses a size the VAE cannot encode, before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_latents = out_dir / "latents.npy.tmp"
    labels = _encode_folder(dataset, model, image_size, tmp_latents, batch_size, num_workers,
                            torch.Generator(dev).manual_seed(seed), progress)
    _finish_cache(out_dir, tmp_latents, labels, dataset, data, vae, image_size, latent_scale(model))
    return out_dir


def _encode_folder(dataset, vae, image_size: int, path: Path, batch_size: int, num_workers: int,
                   generator: torch.Generator, progress: bool) -> np.ndarray:
    """Encode every image and its mirror into the memory-mapped array at ``path``; the labels (-1: unreadable)."""
    from rich.progress import track
    from torch.utils.data import DataLoader

    from sitcli.data import to_unit_range

    class _Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(dataset)

        def __getitem__(self, i):
            arr = dataset.load(i)
            if arr is None:
                return torch.zeros(3, image_size, image_size), -1
            return to_unit_range(arr.transpose(2, 0, 1).copy()), dataset.files[i][1]

    channels, side = latent_shape(vae, image_size)
    latents = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(len(dataset), 2, channels, side, side))
    labels = np.full(len(dataset), -1, dtype=np.int64)
    loader = DataLoader(_Images(), batch_size=batch_size, num_workers=num_workers, shuffle=False)
    device = next(vae.parameters()).device
    start = 0
    for x, y in track(loader, total=len(loader), description="encoding", disable=not progress):
        x = x.to(device)
        both = torch.stack([encode(vae, x, generator), encode(vae, x.flip(-1), generator)], dim=1)
        latents[start : start + len(y)] = both.cpu().numpy().astype(np.float16)
        labels[start : start + len(y)] = y.numpy()
        start += len(y)
    latents.flush()
    return labels


def _finish_cache(out_dir: Path, tmp_latents: Path, labels: np.ndarray, dataset, data: str, vae: str,
                  image_size: int, scale: float) -> None:
    """Drop unreadable rows, rename the arrays into place, and write the manifest last (it marks the cache complete)."""
    from sitcli.atomic import write_text
    from sitcli.data import LATENT_MANIFEST

    keep = labels >= 0
    if not keep.all():  # leave the unreadable images out: rewrite without their rows
        latents = np.load(tmp_latents, mmap_mode="r")
        kept = np.lib.format.open_memmap(out_dir / "latents.npy.tmp2", mode="w+", dtype=np.float16, shape=(int(keep.sum()), *latents.shape[1:]))
        kept[:] = latents[keep]
        kept.flush()
        del latents, kept
        os.replace(out_dir / "latents.npy.tmp2", tmp_latents)
    with open(out_dir / "labels.npy.tmp", "wb") as f:
        np.save(f, labels[keep])
    os.replace(tmp_latents, out_dir / "latents.npy")
    os.replace(out_dir / "labels.npy.tmp", out_dir / "labels.npy")
    manifest = {
        "data": str(Path(data).resolve()),
        "vae": str(Path(vae).resolve()),
        "image_size": image_size,
        "latent_scale": scale,
        "classes": dataset.classes,
        "count": int(keep.sum()),
        "skipped": [str(dataset.files[i][0]) for i in np.flatnonzero(~keep)],
    }
    write_text(out_dir / LATENT_MANIFEST, json.dumps(manifest, indent=2))
