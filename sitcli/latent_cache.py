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

With ``repa_encoder`` (REPA's frozen encoders, ``sitcli.encoders``) the same batches also give each
encoder's patch tokens of the image and of its mirror, ``encoder.features(x, repa_grid)``, stored
as ``repa_features_K.npy`` (N, 2, tokens, width) in ``repa_dtype`` beside the latents and listed in
the manifest under ``repa_features`` (path, sha256 of the files, pixels fed, token grid, dtype), so
that ``sit train --data CACHE --repa-encoder PATH`` reads them instead of running the encoder.
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
from sitcli.data import LATENT_MANIFEST, REPA_DTYPES, ImageFolderDataset, is_latent_cache, to_unit_range
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
    repa_encoder: list[str] = (),
    repa_grid: int | None = None,
    repa_dtype: str = "float16",
) -> CacheResult:
    """Encode ``data`` (an image folder) with the VAE into the latent cache ``out``; every rank
    under torchrun encodes its shards, rank 0 assembles. Each image is stored twice, as itself and
    mirrored (the training flip), as float16; images that cannot be read are listed in the manifest
    and left out. An ``out`` holding anything but the shards of an interrupted extraction is refused
    unless ``overwrite`` (then the cache's own files are replaced and any others left alone).
    ``repa_encoder``: also store these encoders' patch tokens at a ``repa_grid`` token grid
    (default: the latent side // 2, SiT-*/2's grid), as ``repa_dtype``."""
    check_flags("cache-latents", image_size=image_size, batch_size=batch_size, num_workers=num_workers, seed=seed,
                shard_size=shard_size, repa_grid=repa_grid)
    if repa_dtype not in REPA_DTYPES:
        raise InputError(f"--repa-dtype {repa_dtype}: pick one of {', '.join(REPA_DTYPES)}")
    out_dir = Path(out)
    atomic.check_can_create(out_dir, "--out")
    _check_out(out_dir, overwrite)
    index_normal(seed, 0, ())  # refuses a negative seed before anything is written
    dist = distributed.setup(device)
    try:
        dataset = ImageFolderDataset(data, image_size)
        model = load_vae(vae, dist.device)
        _, side = latent_shape(model, image_size)  # refuses a size the VAE cannot encode, before anything is written
        settings = {"data": str(Path(data).resolve()), "vae": str(Path(vae).resolve()), "image_size": image_size,
                    "seed": seed, "shard_size": shard_size, "batch_size": batch_size, "count": len(dataset)}
        encoders = _open_encoders(repa_encoder, dist.device)
        if encoders:
            grid = repa_grid or max(1, side // 2)
            settings["repa_features"] = [_feature_entry(path, enc, grid, repa_dtype, k)
                                         for k, (path, enc) in enumerate(zip(repa_encoder, encoders))]
        shards = out_dir / SHARDS
        _check_shards(shards, settings)
        total = -(-len(dataset) // shard_size)
        todo = [k for k in range(total) if not _shard_path(shards, k).is_file()]
        distributed.barrier()  # every rank has listed the finished shards before any rank writes one
        if dist.is_main:
            atomic.write_json(shards / SHARD_SETTINGS, settings)
        _encode_shards(dataset, model, image_size, shards, todo[dist.rank :: dist.world_size], shard_size,
                       batch_size, num_workers, seed, progress and dist.is_main, encoders, settings)
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
    joining = (out_dir / SHARDS).is_dir()  # interrupted while joining the shards, before the manifest
    if joining:
        resumable |= {"latents.npy", "labels.npy"}
    other = sorted(p.name for p in out_dir.iterdir() if p.name not in resumable
                   and not (joining and p.name.startswith("repa_features_"))) if out_dir.is_dir() else []
    if other:
        raise InputError(f"--out {out_dir} is not empty (it holds {', '.join(other[:3])}{', ...' if len(other) > 3 else ''}): "
                         "pass --overwrite to write the cache into it, or pick a new --out")


def _open_encoders(paths: list[str], device) -> list:
    if not paths:
        return []
    from sitcli.encoders import load_encoder

    return [load_encoder(path).to(device) for path in paths]


def _feature_entry(path: str, encoder, grid: int, dtype: str, k: int) -> dict:
    """The manifest's record of one encoder's cached features."""
    from sitcli.encoders import encoder_identity

    side = encoder.token_grid(grid)
    return {"encoder": str(Path(path).resolve()), "sha256": encoder_identity(path), "file": f"repa_features_{k}.npy",
            "requested_grid": grid, "grid": side, "resolution": encoder.input_size(grid), "width": encoder.width,
            "tokens": side * side, "dtype": dtype, "fixed_resolution": encoder.resolution is not None}


def _shard_path(shards: Path, k: int) -> Path:
    return shards / f"{k:06d}.npz"


def _check_shards(shards: Path, settings: dict) -> None:
    """Finished shards from an interrupted run are reused only if they were made with the same settings."""
    saved_path = shards / SHARD_SETTINGS
    if not saved_path.is_file():
        return
    saved = json.loads(saved_path.read_text())
    changed = sorted(k for k in settings.keys() | saved.keys() if saved.get(k) != settings.get(k))
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
                   num_workers: int, seed: int, progress: bool, encoders: list = (), settings: dict | None = None) -> None:
    """Encode the shards ``mine``, writing each as soon as its last batch is done."""
    from rich.progress import track
    from torch.utils.data import DataLoader

    n = len(dataset)
    ranges = {k: range(k * shard_size, min((k + 1) * shard_size, n)) for k in mine}
    plan = [list(r[i : i + batch_size]) for r in ranges.values() for i in range(0, len(r), batch_size)]
    loader = DataLoader(_Images(dataset, image_size), batch_sampler=plan, num_workers=num_workers)
    device = next(vae.parameters()).device
    channels, side = latent_shape(vae, image_size)
    entries = (settings or {}).get("repa_features", [])
    parts: list[tuple[np.ndarray, ...]] = []
    for x, y, idx in track(loader, total=len(plan), description="encoding", disable=not progress):
        # Each image's own noise: [0] for the image, [1] for its mirror image.
        noise = torch.stack([index_normal(seed, i, (2, channels, side, side)) for i in idx.tolist()]).to(device)
        x = x.to(device)
        both = torch.stack([encode(vae, x, noise=noise[:, 0]), encode(vae, x.flip(-1), noise=noise[:, 1])], dim=1)
        features = [torch.stack([enc.features(x, e["requested_grid"]), enc.features(x.flip(-1), e["requested_grid"])],
                                dim=1).cpu().numpy().astype(e["dtype"]) for enc, e in zip(encoders, entries)]
        parts.append((both.cpu().numpy().astype(np.float16), y.numpy().astype(np.int64), *features))
        k = int(idx[0]) // shard_size
        if int(idx[-1]) == ranges[k][-1]:  # the shard's last batch
            arrays = {f"features_{j}": np.concatenate([p[2 + j] for p in parts]) for j in range(len(entries))}
            atomic.save_npz(_shard_path(shards, k), latents=np.concatenate([p[0] for p in parts]),
                            labels=np.concatenate([p[1] for p in parts]), **arrays)
            parts = []


def _assemble(out_dir: Path, shards: Path, total: int, dataset, settings: dict, scale: float) -> int:
    """Join the shards into latents.npy / labels.npy (and the encoders' repa_features_K.npy)
    without the unreadable images, write the manifest last (it marks the cache complete), then
    remove the shards; returns the image count."""
    labels = np.concatenate([np.load(_shard_path(shards, k))["labels"] for k in range(total)])
    keep = labels >= 0
    entries = settings.get("repa_features", [])
    arrays = {"latents": "latents.npy", **{f"features_{j}": e["file"] for j, e in enumerate(entries)}}
    (out_dir / LATENT_MANIFEST).unlink(missing_ok=True)  # an old cache (--overwrite) is incomplete from here on
    for key, name in arrays.items():
        _join(out_dir / name, shards, total, key, int(keep.sum()))
    with open(out_dir / "labels.npy.tmp", "wb") as f:
        np.save(f, labels[keep])
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
    if entries:
        manifest["repa_features"] = entries
    atomic.write_text(out_dir / LATENT_MANIFEST, json.dumps(manifest, indent=2))
    shutil.rmtree(shards)
    return manifest["count"]


def _join(path: Path, shards: Path, total: int, key: str, count: int) -> None:
    """The kept rows of array ``key`` of every shard, in order, as one .npy file at ``path``."""
    with np.load(_shard_path(shards, 0)) as shard:
        first = shard[key]
    tmp = path.with_name(path.name + ".tmp")
    joined = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype, shape=(count, *first.shape[1:]))
    row = 0
    for k in range(total):
        with np.load(_shard_path(shards, k)) as shard:
            kept = shard[key][shard["labels"] >= 0]
        joined[row : row + len(kept)] = kept
        row += len(kept)
    joined.flush()
    del joined
    os.replace(tmp, path)
