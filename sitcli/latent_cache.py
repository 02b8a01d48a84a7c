"""`sit cache-latents`: one pass of the VAE over an image folder, sharded over torchrun ranks, resumable.

    from sitcli.latent_cache import cache_latents
    cache_latents("imagenet/train", "sd-vae-ft-ema", 256, "imagenet-latents")  # then sit train --data it

The images (in the folder's sorted order) are cut into shards of ``shard_size`` consecutive
indices. Each rank encodes its share of the unfinished shards and writes each as
``OUT/shards/NNNNNN.npz`` under a temporary name, renamed into place once complete: a shard is
done exactly when its file exists, so an interrupted extraction, run again with the same flags (on
any number of ranks), encodes only the missing shards. Rank 0 then joins the shards into the
cache that ``sitcli.data.LatentCache`` reads and removes them.

Image i and its mirror image are encoded as z = s (mu + sigma n) with n the noise of index i alone
(``seeds.index_normal(seed, i)``: one draw for the image and its mirror), and the
VAE sees the same batches (``batch_size`` consecutive indices from the start of a shard) however
the shards are split, so a cache made on K ranks is bit for bit the one a single process makes.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sitcli import atomic, distributed
from sitcli.autoencoder import encode, latent_scale, latent_shape, load_vae
from sitcli.config import check_flags
from sitcli.data import LATENT_MANIFEST, ImageFolderDataset, is_latent_cache, to_unit_range
from sitcli.errors import InputError
from sitcli.seeds import index_normal

SHARDS = "shards"
SHARD_SETTINGS = "settings.json"


@dataclass
class CacheResult:
    out: Path
    count: int  # images in the cache (unreadable ones left out)
    shards: int
    reused_shards: int  # finished by an earlier, interrupted run
    is_main: bool = True  # rank 0 (the one that reports)


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
    shard_size: int = 4096,
    overwrite: bool = False,
) -> CacheResult:
    """Encode ``data`` (an image folder) with the VAE into the latent cache ``out``; every rank
    under torchrun encodes its shards, rank 0 assembles. Each image is stored twice, as itself and
    mirrored (the training flip), as float16; images that cannot be read are listed in the manifest
    and left out. An ``out`` holding anything but the shards of an interrupted extraction is refused
    unless ``overwrite`` (then the cache's own files are replaced and any others left alone)."""
    check_flags("cache-latents", image_size=image_size, batch_size=batch_size, num_workers=num_workers, seed=seed,
                shard_size=shard_size)
    out_dir = Path(out)
    atomic.check_can_create(out_dir, "--out")
    _check_out(out_dir, overwrite)
    index_normal(seed, 0, ())  # refuses a negative seed before anything is written
    dist = distributed.setup(device)
    try:
        dataset = ImageFolderDataset(data, image_size)
        model = load_vae(vae, dist.device)
        latent_shape(model, image_size)  # refuses a size the VAE cannot encode, before anything is written
        settings = {"data": str(Path(data).resolve()), "vae": str(Path(vae).resolve()), "image_size": image_size,
                    "seed": seed, "shard_size": shard_size, "batch_size": batch_size, "count": len(dataset)}
        shards = out_dir / SHARDS
        _check_shards(shards, settings)
        total = -(-len(dataset) // shard_size)
        todo = [k for k in range(total) if not _shard_path(shards, k).is_file()]
        distributed.barrier()  # every rank has listed the finished shards before any rank writes one
        if dist.is_main:
            atomic.write_json(shards / SHARD_SETTINGS, settings)
        _encode_shards(dataset, model, image_size, shards, todo[dist.rank :: dist.world_size], shard_size,
                       batch_size, num_workers, seed, progress and dist.is_main)
        distributed.barrier()  # all shards are on disk
        count = _assemble(out_dir, shards, total, dataset, settings, latent_scale(model)) if dist.is_main else 0
        return CacheResult(out_dir, count, total, total - len(todo), dist.is_main)
    finally:
        distributed.teardown(dist)


def _check_out(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file; pass a folder")
    if overwrite:
        return
    if is_latent_cache(out_dir):
        raise InputError(f"{out_dir} already holds a latent cache; train on it with --data {out_dir}, pass --overwrite "
                         "to replace it, or pick a new --out")
    resumable = {SHARDS, "latents.npy.tmp", "labels.npy.tmp"}  # what an interrupted extraction leaves
    if (out_dir / SHARDS).is_dir():  # interrupted while joining the shards, before the manifest
        resumable |= {"latents.npy", "labels.npy"}
    other = sorted(p.name for p in out_dir.iterdir() if p.name not in resumable) if out_dir.is_dir() else []
    if other:
        raise InputError(f"--out {out_dir} is not empty (it holds {', '.join(other[:3])}{', ...' if len(other) > 3 else ''}): "
                         "pass --overwrite to write the cache into it, or pick a new --out")


def _shard_path(shards: Path, k: int) -> Path:
    return shards / f"{k:06d}.npz"


def _check_shards(shards: Path, settings: dict) -> None:
    """Finished shards from an interrupted run are reused only if they were made with the same settings."""
    saved_path = shards / SHARD_SETTINGS
    if not saved_path.is_file():
        return
    saved = json.loads(saved_path.read_text())
    changed = sorted(k for k in settings if saved.get(k) != settings[k])
    if changed:
        raise InputError(f"{shards} holds shards of an extraction with other settings ({', '.join(changed)} differ); "
                         "run it again with the same flags, or pick a new --out")


class _Images(torch.utils.data.Dataset):
    """Index i -> (image i in [-1, 1], its label, i); label -1 when the file cannot be read."""

    def __init__(self, dataset: ImageFolderDataset, image_size: int):
        self.dataset, self.image_size = dataset, image_size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        arr = self.dataset.load(i)
        if arr is None:
            return torch.zeros(3, self.image_size, self.image_size), -1, i
        return to_unit_range(arr.transpose(2, 0, 1).copy()), self.dataset.files[i][1], i


def _encode_shards(dataset, vae, image_size: int, shards: Path, mine: list[int], shard_size: int, batch_size: int,
                   num_workers: int, seed: int, progress: bool) -> None:
    """Encode the shards ``mine``, writing each as soon as its last batch is done."""
    from rich.progress import track
    from torch.utils.data import DataLoader

    n = len(dataset)
    ranges = {k: range(k * shard_size, min((k + 1) * shard_size, n)) for k in mine}
    plan = [list(r[i : i + batch_size]) for r in ranges.values() for i in range(0, len(r), batch_size)]
    loader = DataLoader(_Images(dataset, image_size), batch_sampler=plan, num_workers=num_workers)
    device = next(vae.parameters()).device
    channels, side = latent_shape(vae, image_size)
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    for x, y, idx in track(loader, total=len(plan), description="encoding", disable=not progress):
        # Each image's own noise: [0] for the image, [1] for its mirror image.
        noise = torch.stack([index_normal(seed, i, (2, channels, side, side)) for i in idx.tolist()]).to(device)
        x = x.to(device)
        both = torch.stack([encode(vae, x, noise=noise[:, 0]), encode(vae, x.flip(-1), noise=noise[:, 1])], dim=1)
        parts.append((both.cpu().numpy().astype(np.float16), y.numpy().astype(np.int64)))
        k = int(idx[0]) // shard_size
        if int(idx[-1]) == ranges[k][-1]:  # the shard's last batch
            atomic.save_npz(_shard_path(shards, k), latents=np.concatenate([p[0] for p in parts]),
                            labels=np.concatenate([p[1] for p in parts]))
            parts = []


def _assemble(out_dir: Path, shards: Path, total: int, dataset, settings: dict, scale: float) -> int:
    """Join the shards into latents.npy / labels.npy without the unreadable images, write the
    manifest last (it marks the cache complete), then remove the shards; returns the image count."""
    labels = np.concatenate([np.load(_shard_path(shards, k))["labels"] for k in range(total)])
    keep = labels >= 0
    first = np.load(_shard_path(shards, 0))["latents"]
    tmp = out_dir / "latents.npy.tmp"
    latents = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(int(keep.sum()), *first.shape[1:]))
    row = 0
    for k in range(total):
        with np.load(_shard_path(shards, k)) as shard:
            kept = shard["latents"][shard["labels"] >= 0]
        latents[row : row + len(kept)] = kept
        row += len(kept)
    latents.flush()
    del latents
    with open(out_dir / "labels.npy.tmp", "wb") as f:
        np.save(f, labels[keep])
    (out_dir / LATENT_MANIFEST).unlink(missing_ok=True)  # an old cache (--overwrite) is incomplete from here on
    os.replace(tmp, out_dir / "latents.npy")
    os.replace(out_dir / "labels.npy.tmp", out_dir / "labels.npy")
    manifest = {
        "data": settings["data"],
        "vae": settings["vae"],
        "image_size": settings["image_size"],
        "latent_scale": scale,
        "classes": dataset.classes,
        "count": int(keep.sum()),
        "skipped": [str(dataset.files[i][0]) for i in np.flatnonzero(~keep)],
        "seed": settings["seed"],
    }
    atomic.write_text(out_dir / LATENT_MANIFEST, json.dumps(manifest, indent=2))
    shutil.rmtree(shards)
    return manifest["count"]
