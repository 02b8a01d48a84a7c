"""`sit cache-latents`: one pass of the VAE over an image folder, sharded over torchrun ranks, resumable.

    from sitcli.data.latent_cache import CacheConfig, cache_latents
    cache_latents(CacheConfig("imagenet/train", "sd-vae-ft-ema", "imagenet-latents"))  # then sit train --data it

The images (in the folder's sorted order) are cut into shards of ``shard_size`` consecutive
indices. Each rank encodes its share of the unfinished shards and writes each as
``OUT/shards/NNNNNN.npz`` under a temporary name, renamed into place once complete: a shard is
done exactly when its file exists, so an interrupted extraction, run again with the same flags (on
any number of ranks), encodes only the missing shards. Rank 0 then joins the shards into the
cache that ``LatentDataset`` (below) reads and removes them.

Image i and its mirror image are encoded as z = s (mu + sigma n) with n the noise of index i alone
(``seeds.index_normal(seed, i)``: one draw for the image and its mirror), and the
VAE sees the same batches (``batch_size`` consecutive indices from the start of a shard) however
the shards are split, so a cache made on K ranks is bit for bit the one a single process makes.

With ``repa_encoder`` (REPA's frozen encoders, ``sitcli.encoders``) the same batches also give each
encoder's patch tokens of the image and of its mirror, ``encoder.features(x, repa_grid)``, stored
as ``repa_features_K.npy`` (N, 2, tokens, width) in ``repa_dtype`` beside the latents and listed in
the manifest under ``repa_features`` (path, sha256 of the files, pixels fed, token grid, dtype), so
that ``sit train --data CACHE --repa-encoder PATH`` reads them instead of running the encoder.

Other autoencoders (``sitcli.latent_space``): with ``rae_encoder`` instead of ``vae`` the cache holds an RAE's
raw latents (its encoder's normalised DINOv2 tokens, deterministic: no posterior noise). Every cache stores
``latent_scale`` x the raw latents (the VAE's scaling factor; 1 for an RAE), so raw = stored / latent_scale,
and records in its manifest the autoencoder (``autoencoder``: kind, source, sha256 of its files, latent shape)
and its statistics (``normalization``: a file beside the cache, ``latent_stats.safetensors``, and its sha256;
null until ``sit latent-stats CACHE`` computes them or ``latent_stats`` names them). A reader then feeds the
model stats.normalize(raw); without statistics it feeds the stored latents, as every cache before them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sitcli import atomic, distributed
from sitcli.autoencoder import encode
from sitcli.autoencoder.files import STATS_FILE, load_normalization, save_normalization
from sitcli.data.images import DataInfo, ImageFolderDataset, to_unit_range
from sitcli.domains import COUNT, COUNT_OR_ZERO, SEED, check_domains
from sitcli.errors import InputError
from sitcli.locks import LOCK
from sitcli.outputs import Kind, Output, check_outputs
from sitcli.runtime import check_workers
from sitcli.latent_space import AutoencoderSpec, statistics_identity
from sitcli.latent_space import identity as autoencoder_identity
from sitcli.seeds import index_normal
from sitcli.session import session

LATENT_MANIFEST = "latents.json"
REPA_DTYPES = ("float16", "float32")  # storage of cached encoder features (numpy has no bfloat16)
SHARDS = "shards"
SHARD_SETTINGS = "settings.json"
CACHE_FILES = (LATENT_MANIFEST, "latents.npy", "labels.npy", SHARDS)  # and repa_features_K.npy


@dataclass
class CacheConfig:
    """The settings of ``sit cache-latents``: encode the image folder ``data`` with the VAE folder ``vae`` into the
    cache ``out``, images center-cropped to ``image_size``.

    ``seed`` seeds the posterior noise of each image (by index); ``shard_size`` images make a shard, the unit
    that ranks share out and that an interrupted extraction keeps. An ``out`` holding anything but the shards of
    an interrupted extraction is refused unless ``overwrite`` (then the cache's own files are replaced and any
    others left alone). ``repa_encoder``: also store these encoders' patch tokens at a ``repa_grid`` token grid
    (default: the latent side // 2, SiT-*/2's grid), as ``repa_dtype``.
    """

    data: str
    vae: str | None
    out: str
    image_size: int = 256
    batch_size: int = 64
    num_workers: int = 4
    seed: int = 0
    shard_size: int = 4096
    overwrite: bool = False
    repa_encoder: list[str] = field(default_factory=list)
    repa_grid: int | None = None
    repa_dtype: str = "float16"
    # Another autoencoder (sitcli.latent_space): an RAE's encoder instead of vae, and statistics to record.
    rae_encoder: str | None = None
    rae_patch: int | None = None  # the RAE decoder's patch (16): the encoder sees image_size / rae_patch * 14
    latent_stats: str | None = None  # copied beside the cache as latent_stats.safetensors

    def __post_init__(self):
        self.repa_encoder = [str(p) for p in self.repa_encoder or []]
        check_domains(asdict(self), CACHE_DOMAINS)
        check_workers(self.num_workers)
        if self.repa_dtype not in REPA_DTYPES:
            raise InputError(f"--repa-dtype {self.repa_dtype}: pick one of {', '.join(REPA_DTYPES)}")
        if any(not p.strip() for p in self.repa_encoder):
            raise InputError("--repa-encoder '': pass the path of an encoder, or drop the flag to cache no features")
        if not self.repa_encoder and (self.repa_grid is not None or self.repa_dtype != "float16"):
            flag = "--repa-grid" if self.repa_grid is not None else "--repa-dtype"
            raise InputError(f"{flag} has no effect without --repa-encoder PATH: add it or drop {flag}")
        self.autoencoder().check()
        if not self.autoencoder().kind:
            raise InputError("sit cache-latents needs an autoencoder: pass --vae FOLDER or --rae-encoder DINOV2")

    def autoencoder(self) -> AutoencoderSpec:
        return AutoencoderSpec(vae=self.vae, rae_encoder=self.rae_encoder, rae_patch=self.rae_patch,
                               latent_stats=self.latent_stats)


CACHE_DOMAINS = dict(image_size=COUNT, batch_size=COUNT, num_workers=COUNT_OR_ZERO, seed=SEED, shard_size=COUNT,
                     repa_grid=COUNT, rae_patch=COUNT)


@dataclass
class CacheResult:
    out: Path
    count: int  # images in the cache (unreadable ones left out)
    shards: int
    reused_shards: int  # finished by an earlier, interrupted run
    is_main: bool = True  # rank 0 (the one that reports)


def cache_latents(cfg: CacheConfig, progress: bool = True, device: str | None = None) -> CacheResult:
    """Encode ``cfg.data`` with the VAE into the latent cache ``cfg.out``; every rank under torchrun encodes its
    shards, rank 0 assembles. Each image is stored twice, as itself and mirrored (the training flip), as float16;
    images that cannot be read are listed in the manifest and left out."""
    out_dir = Path(cfg.out)
    atomic.check_can_create(out_dir, "--out")
    reads = {"--data": cfg.data, "--vae": cfg.vae, **{f"--repa-encoder {p}": p for p in cfg.repa_encoder}}
    check_outputs([Output(out_dir, "--out", Kind("a folder", Path.is_dir))], reads, overwrite=True)
    _check_out(out_dir, cfg.overwrite)
    with session(device) as job:
        dist = job.dist
        job.hold(out_dir, "sit cache-latents")  # one extraction per folder; held before the data is listed
        dataset = ImageFolderDataset(cfg.data, cfg.image_size)
        spec = cfg.autoencoder()
        model = dataclasses.replace(spec, latent_stats=None).open(cfg.image_size, dist.device, decoder=False)
        _, side, _ = model.latent_shape(cfg.image_size)  # refuses a size it cannot encode, before any write
        if cfg.latent_stats:
            load_normalization(cfg.latent_stats).check_shape(model.latent_shape(cfg.image_size), "--latent-stats")
        settings = {
            "data": str(Path(cfg.data).resolve()),
            "vae": str(Path(cfg.vae).resolve()) if cfg.vae else None,
            "image_size": cfg.image_size,
            "seed": cfg.seed,
            "shard_size": cfg.shard_size,
            "batch_size": cfg.batch_size,
            "count": len(dataset),
        }
        if spec.kind != "kl":  # a VAE cache's settings stay what they were (its shards can still be reused)
            settings["autoencoder"] = autoencoder_identity(model, cfg.image_size)
        encoders = _open_encoders(cfg.repa_encoder, dist.device)
        if encoders:
            grid = cfg.repa_grid or max(1, side // 2)
            settings["repa_features"] = [
                _feature_entry(path, enc, grid, cfg.repa_dtype, k)
                for k, (path, enc) in enumerate(zip(cfg.repa_encoder, encoders))
            ]
        shards = out_dir / SHARDS
        _check_shards(shards, settings)
        total = -(-len(dataset) // cfg.shard_size)
        if dist.is_main:  # a shard damaged since it was written (a copy cut short, a bad disk) is encoded again
            _drop_damaged_shards(shards, total, len(dataset), cfg.shard_size, len(encoders))
        distributed.barrier()
        todo = [k for k in range(total) if not _shard_path(shards, k).is_file()]
        distributed.barrier()  # every rank has listed the finished shards before any rank writes one
        if dist.is_main:
            atomic.write_json(shards / SHARD_SETTINGS, settings)
        _encode_shards(
            dataset,
            model,
            cfg.image_size,
            dist.device,
            shards,
            todo[dist.rank :: dist.world_size],
            cfg.shard_size,
            cfg.batch_size,
            cfg.num_workers,
            cfg.seed,
            progress and dist.is_main,
            encoders,
            settings,
        )
        distributed.barrier()  # all shards are on disk
        scale = model.normalization.scale
        count = _assemble(out_dir, shards, total, dataset, settings, scale, model, cfg.latent_stats) \
            if dist.is_main else 0
        return CacheResult(out_dir, count, total, total - len(todo), dist.is_main)


def _check_out(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file; pass a folder")
    if overwrite:
        # --overwrite replaces a cache's own files: refused where a file of that name is not part of one.
        if out_dir.is_dir() and not is_latent_cache(out_dir) and not (out_dir / SHARDS).is_dir():
            held = sorted(p.name for p in out_dir.iterdir()
                          if p.name in CACHE_FILES or p.name.startswith("repa_features_"))
            if held:
                raise InputError(
                    f"--out {out_dir} holds {', '.join(held)}, which is not part of a latent cache, and the cache "
                    "would replace it: move it away or pick another --out"
                )
        return
    if is_latent_cache(out_dir):
        raise InputError(
            f"{out_dir} already holds a latent cache; train on it with --data {out_dir}, pass --overwrite "
            "to replace it, or pick a new --out"
        )
    resumable = {SHARDS, "latents.npy.tmp", "labels.npy.tmp", STATS_FILE, LOCK}  # what an interrupted extraction leaves
    joining = (out_dir / SHARDS).is_dir()  # interrupted while joining the shards, before the manifest
    if joining:
        resumable |= {"latents.npy", "labels.npy"}
    other = (
        sorted(
            p.name
            for p in out_dir.iterdir()
            if p.name not in resumable and not (joining and p.name.startswith("repa_features_"))
        )
        if out_dir.is_dir()
        else []
    )
    if other:
        raise InputError(
            f"--out {out_dir} is not empty (it holds {', '.join(other[:3])}{', ...' if len(other) > 3 else ''}): "
            "pass --overwrite to write the cache into it, or pick a new --out"
        )


def _open_encoders(paths: list[str], device) -> list:
    if not paths:
        return []
    from sitcli.encoders import load_encoder

    return [load_encoder(path).to(device) for path in paths]


def _feature_entry(path: str, encoder, grid: int, dtype: str, k: int) -> dict:
    """The manifest's record of one encoder's cached features."""
    from sitcli.encoders import encoder_identity

    side = encoder.token_grid(grid)
    return {
        "encoder": str(Path(path).resolve()),
        "sha256": encoder_identity(path),
        "file": f"repa_features_{k}.npy",
        "requested_grid": grid,
        "grid": side,
        "resolution": encoder.input_size(grid),
        "width": encoder.width,
        "tokens": side * side,
        "dtype": dtype,
        "fixed_resolution": encoder.resolution is not None,
    }


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
        raise InputError(
            f"{shards} holds shards of an extraction with other settings ({', '.join(changed)} differ); "
            "run it again with the same flags, or pick a new --out"
        )


def _shard_problem(path: Path, rows: int, keys: list[str]) -> str | None:
    """What is wrong with a finished shard (a short phrase), or None: every array it must hold is there, with
    ``rows`` rows and as many bytes as its header says (the zip's index and the arrays' headers are read, not
    the data)."""
    try:
        with zipfile.ZipFile(path) as zf:
            for key in keys:
                info = zf.getinfo(f"{key}.npy")
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                    header = f.tell()
                if not shape or shape[0] != rows:
                    return f"its {key} have {shape[0] if shape else 0} rows, not {rows}"
                if info.file_size != header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                    return f"its {key} are cut short"
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as err:
        return f"it cannot be read ({str(err) or type(err).__name__})"
    return None


def _drop_damaged_shards(shards: Path, total: int, n: int, shard_size: int, encoders: int) -> None:
    """Remove (with a note) each finished shard that is damaged, so that it is encoded again."""
    keys = ["latents", "labels", *(f"features_{j}" for j in range(encoders))]
    for k in range(total):
        path = _shard_path(shards, k)
        problem = _shard_problem(path, min(shard_size, n - k * shard_size), keys) if path.is_file() else None
        if problem is not None:
            print(f"note: shard {path} is damaged ({problem}); encoding it again")
            path.unlink()


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


def _encode_shards(
    dataset,
    vae,
    image_size: int,
    device,
    shards: Path,
    mine: list[int],
    shard_size: int,
    batch_size: int,
    num_workers: int,
    seed: int,
    progress: bool,
    encoders: list = (),
    settings: dict | None = None,
) -> None:
    """Encode the shards ``mine``, writing each as soon as its last batch is done."""
    from rich.progress import track
    from torch.utils.data import DataLoader

    n = len(dataset)
    ranges = {k: range(k * shard_size, min((k + 1) * shard_size, n)) for k in mine}
    plan = [list(r[i : i + batch_size]) for r in ranges.values() for i in range(0, len(r), batch_size)]
    loader = DataLoader(_Images(dataset, image_size), batch_sampler=plan, num_workers=num_workers)
    channels, side, _ = vae.latent_shape(image_size)
    noisy = vae.kind == "kl"  # a VAE's posterior sample; an RAE's encoder is deterministic
    entries = (settings or {}).get("repa_features", [])
    device = torch.device(device)
    parts: list[tuple[np.ndarray, ...]] = []
    for x, y, idx in track(loader, total=len(plan), description="encoding", disable=not progress):
        # Each image's own noise: [0] for the image, [1] for its mirror image.
        x = x.to(device)
        if noisy:
            noise = torch.stack([index_normal(seed, i, (2, channels, side, side)) for i in idx.tolist()]).to(device)
            vae_ = vae.vae  # SD-VAE's road: autoencoder.encode, z * scaling_factor
            both = torch.stack([encode(vae_, x, noise=noise[:, 0]), encode(vae_, x.flip(-1), noise=noise[:, 1])], dim=1)
        else:
            both = torch.stack([vae.encode_raw(x), vae.encode_raw(x.flip(-1))], dim=1)
        features = [
            torch.stack([enc.features(x, e["requested_grid"]), enc.features(x.flip(-1), e["requested_grid"])], dim=1)
            .cpu()
            .numpy()
            .astype(e["dtype"])
            for enc, e in zip(encoders, entries)
        ]
        parts.append((both.cpu().numpy().astype(np.float16), y.numpy().astype(np.int64), *features))
        k = int(idx[0]) // shard_size
        if int(idx[-1]) == ranges[k][-1]:  # the shard's last batch
            arrays = {f"features_{j}": np.concatenate([p[2 + j] for p in parts]) for j in range(len(entries))}
            atomic.save_npz(
                _shard_path(shards, k),
                latents=np.concatenate([p[0] for p in parts]),
                labels=np.concatenate([p[1] for p in parts]),
                **arrays,
            )
            parts = []


def _assemble(out_dir: Path, shards: Path, total: int, dataset, settings: dict, scale: float, model=None,
              latent_stats: str | None = None) -> int:
    """Join the shards into latents.npy / labels.npy (and the encoders' repa_features_K.npy)
    without the unreadable images, write the manifest last (it marks the cache complete), then
    remove the shards; returns the image count."""
    labels = np.concatenate([_read_shard(shards, k, "labels") for k in range(total)])
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
    if model is not None:
        manifest["autoencoder"] = settings.get("autoencoder") or autoencoder_identity(model, settings["image_size"])
        manifest["normalization"] = None
        (out_dir / STATS_FILE).unlink(missing_ok=True)  # an old cache's statistics (--overwrite) are not these
        if latent_stats:  # copied beside the cache in sit's format, so that the cache carries what it records
            save_normalization(out_dir / STATS_FILE, load_normalization(latent_stats))
            manifest["normalization"] = {**statistics_identity(out_dir / STATS_FILE), "file": STATS_FILE,
                                         "from": str(Path(latent_stats).resolve())}
    if entries:
        manifest["repa_features"] = entries
    atomic.write_text(out_dir / LATENT_MANIFEST, json.dumps(manifest, indent=2))
    shutil.rmtree(shards)
    return manifest["count"]


def _read_shard(shards: Path, k: int, key: str) -> np.ndarray:
    """Array ``key`` of shard k; a shard whose data turn out damaged (a bad CRC) is removed, to be encoded again."""
    path = _shard_path(shards, k)
    try:
        with np.load(path) as shard:
            return shard[key]
    except (zipfile.BadZipFile, ValueError, EOFError, KeyError) as err:
        path.unlink(missing_ok=True)
        raise InputError(f"shard {path} is damaged ({str(err) or type(err).__name__}); it was removed: run the "
                         "same command again to encode it anew") from None


def _join(path: Path, shards: Path, total: int, key: str, count: int) -> None:
    """The kept rows of array ``key`` of every shard, in order, as one .npy file at ``path``."""
    first = _read_shard(shards, 0, key)
    tmp = path.with_name(path.name + ".tmp")
    try:
        joined = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype, shape=(count, *first.shape[1:]))
        atomic.reserve(tmp)  # a full disk is an OSError now, not a SIGBUS at the first page the map cannot back
        row = 0
        for k in range(total):
            kept = _read_shard(shards, k, key)[_read_shard(shards, k, "labels") >= 0]
            joined[row : row + len(kept)] = kept
            row += len(kept)
        joined.flush()
        del joined
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


#################################################################################
#                              Reading a latent cache                           #
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
    feature_files: list = []
    normalization = None  # LatentNormalization of the raw latents, or None: the stored latents are the model's

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
        self.autoencoder = manifest.get("autoencoder")  # None: a cache made before caches recorded it
        self.statistics = manifest.get("normalization")
        if self.statistics:
            self.use_normalization(load_normalization(self.root / self.statistics["file"]))

    def use_normalization(self, norm) -> None:
        """Feed the model norm.normalize(raw latents) from here on (raw = stored / latent_scale)."""
        norm.check_shape(tuple(self.latents.shape[2:]), f"the statistics of {self.root}")
        self.normalization = norm
        self.info.latent_scale = norm.scale

    def use_features(self, identities: list[str], paths: list[str]) -> list[dict]:
        """Read the cached features of the encoders with these sha256 ``identities`` (given as
        ``paths``) with every batch; returns their manifest entries. Refuses a missing encoder."""
        listed = self.manifest.get("repa_features", [])
        if not isinstance(listed, list) or not all(isinstance(e, dict) and isinstance(e.get("sha256"), str)
                                                   for e in listed):
            raise _damaged(self.root, f"the repa_features of {LATENT_MANIFEST} are not a list sit wrote", self.manifest)
        stored = {e["sha256"]: e for e in listed}
        for path, identity in zip(paths, identities):
            if identity not in stored:
                held = ", ".join(e["encoder"] for e in stored.values()) or "none"
                m = self.manifest
                raise InputError(
                    f"latent cache {self.root} has no features of encoder {path} (it holds: {held}); build "
                    f"a cache with them: sit cache-latents --data {m['data']} {cache_flags(m)} --image-size "
                    f"{m['image_size']} --seed {m['seed']} --out NEW --repa-encoder {path}"
                )
        entries = [stored[i] for i in identities]
        self.features = tuple(self._open_features(e) for e in entries)
        self.feature_files = [e["file"] for e in entries]
        return entries

    def _open_features(self, entry: dict) -> np.ndarray:
        """One encoder's features (N, 2, tokens, width), memory-mapped, checked against its manifest entry."""
        def damaged(what: str) -> InputError:
            return _damaged(self.root, what, self.manifest)

        kinds = {"file": str, "grid": int, "tokens": int, "width": int, "resolution": int, "dtype": str}
        wrong = [k for k, kind in kinds.items() if not isinstance(entry.get(k), kind) or isinstance(entry.get(k), bool)]
        if wrong or entry["dtype"] not in REPA_DTYPES or entry["tokens"] != entry["grid"] ** 2 or min(
            entry["grid"], entry["width"], entry["resolution"]
        ) < 1:
            raise damaged(f"the {LATENT_MANIFEST} entry of encoder {entry.get('encoder')} is not one sit wrote")
        name = entry["file"]
        if Path(name).name != name or not name.startswith("repa_features_") or not (self.root / name).is_file():
            raise damaged(f"{name}, the features of encoder {entry.get('encoder')}, is missing")
        try:
            features = np.load(self.root / name, mmap_mode="r")
        except (ValueError, OSError, EOFError) as err:  # a cut header, or data shorter than the header says
            raise damaged(f"{name} cannot be read: {err}") from None
        want = (len(self.labels), 2, entry["tokens"], entry["width"])
        if features.shape != want or features.dtype != np.dtype(entry["dtype"]):
            raise damaged(f"{name} holds {features.dtype} {features.shape}; its manifest entry says {entry['dtype']} "
                          f"{want}")
        return features

    def check_batch(self, batch: tuple) -> None:
        """Refuse a batch that holds NaN or inf (a cache damaged after it was written): the loss would blame --lr."""
        x, _, *features = batch
        parts = [("latents.npy", x), *zip(self.feature_files, features[0] if features else [])]
        for name, values in parts:
            if not bool(torch.isfinite(values).all()):
                raise _damaged(self.root, f"{name} holds NaN or inf", self.manifest)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, items: Sequence[tuple[int, bool]]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.array([i for i, _ in items])
        flips = np.array([int(f) for _, f in items])
        x = torch.from_numpy(np.ascontiguousarray(self.latents[idx, flips])).float()
        if self.normalization is not None:
            scale = self.manifest["latent_scale"]
            x = self.normalization.normalize(x if scale == 1 else x / scale)
        y = torch.from_numpy(np.asarray(self.labels[idx], dtype=np.int64))
        if not self.features:
            return x, y
        return x, y, [torch.from_numpy(np.ascontiguousarray(f[idx, flips])).float() for f in self.features]


def _damaged(root: Path, what: str, manifest: dict | None = None) -> InputError:
    """The refusal of a damaged cache: what is wrong, and the command that rebuilds it."""
    m = manifest or {}
    redo = (
        (
            f"sit cache-latents --data {m['data']} {cache_flags(m)} --image-size {m['image_size']} --seed "
            f"{m.get('seed', 0)} --out {root} --overwrite"
        )
        if {"data", "vae", "image_size"} <= set(m)
        else f"sit cache-latents --data IMAGES --vae VAE --out {root} --overwrite"
    )
    return InputError(f"the cache at {root} is damaged ({what}); rebuild it with {redo}")


def _open_cache(root: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """(manifest, latents, labels) of a cache, each checked against the others; a damaged cache is an InputError."""

    def damaged(what: str, manifest: dict | None = None) -> InputError:
        return _damaged(root, what, manifest)

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
        raise damaged(
            f"latents.npy has shape {latents.shape}, labels.npy {labels.shape}; expected (N, 2, C, h, w) and (N,)",
            manifest,
        )
    if not len(latents) == len(labels) == manifest["count"]:
        raise damaged(
            f"{len(latents)} latents, {len(labels)} labels, {manifest['count']} in {LATENT_MANIFEST}", manifest
        )
    return manifest, latents, labels


def cache_flags(manifest: dict) -> str:
    """The autoencoder flags of the command that made a cache: --vae V, or --rae-encoder E."""
    ae = manifest.get("autoencoder") or {}
    if ae.get("kind") == "rae":
        return f"--rae-encoder {ae['source']}"
    return f"--vae {manifest['vae']}"


def is_latent_cache(path: str | Path) -> bool:
    return (Path(path) / LATENT_MANIFEST).is_file()
