"""`sit latent-stats`: the mean and variance of an autoencoder's raw latents, over a latent cache or an image
folder, written as the statistics file that normalises them (``autoencoder.files``).

    from sitcli.latent_stats import LatentStatsConfig, latent_stats
    latent_stats(LatentStatsConfig("cache/"))                           # -> cache/latent_stats.safetensors
    latent_stats(LatentStatsConfig("imagenet/train", out="stats.safetensors", rae_encoder="dinov2-reg-base"))

Each image counts twice, as itself and mirrored (the training flip: RAE's ``calculate_stat.py`` draws one
random flip per image; both copies are that flip's expectation). On a cache the raw latents are the
stored ones divided by its ``latent_scale``; on an image folder they are encoded here (a VAE's posterior
sample with each image's own noise, as ``sit cache-latents`` draws it). The statistics are exact
(``autoencoder.statistics.LatentStatistics``: every latent equally weighted, in float64), per element
(``kind="element"``, RAE's (C, H, W); eps 1e-5 added to the variance, RAE's) or per channel
(``"channel"``, LightningDiT's; eps 0). Under torchrun each rank takes every K-th batch and rank 0 merges
the ranks' sums (Chan's update, exact up to float64 rounding).

The file is written atomically and never replaces one without ``overwrite``. On a cache it goes beside
the latents and the cache's manifest records it (file and sha256), so that training uses it and refuses
a run with other statistics.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sitcli import atomic, distributed
from sitcli.autoencoder.files import STATS_FILE, save_normalization
from sitcli.autoencoder.statistics import LatentStatistics
from sitcli.data.latent_cache import LATENT_MANIFEST, LatentDataset, is_latent_cache
from sitcli.domains import COUNT, NON_NEGATIVE, SEED, check_domains
from sitcli.errors import InputError
from sitcli.latent_space import AutoencoderSpec, statistics_identity
from sitcli.session import session

KINDS = ("element", "channel")


@dataclass
class LatentStatsConfig:
    """The settings of ``sit latent-stats`` (see the module). ``data`` is a latent cache, or an image folder (or
    ``digits``) encoded by the autoencoder of ``vae`` / ``rae_encoder`` (``out`` then required). ``num`` limits
    the pass to the first images (of a folder's sorted order or a cache's rows)."""

    data: str
    out: str | None = None
    kind: str = "element"
    eps: float | None = None  # None: 1e-5 per element (RAE's), 0 per channel (LightningDiT's)
    unbiased: bool = False
    vae: str | None = None
    rae_encoder: str | None = None
    rae_patch: int | None = None
    image_size: int = 256
    batch_size: int = 64
    seed: int = 0
    num: int | None = None
    overwrite: bool = False

    def __post_init__(self):
        check_domains(asdict(self), STATS_DOMAINS, STATS_FLAGS)
        if self.kind not in KINDS:
            raise InputError(f"--kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        self.autoencoder().check()
        if is_latent_cache(self.data):
            if self.autoencoder().kind:
                raise InputError(f"{self.data} is a latent cache: its latents are already encoded; drop "
                                 "--vae / --rae-encoder")
        elif self.out is None:
            raise InputError("statistics of an image folder need --out FILE.safetensors (they are not written "
                             "into a data folder)")
        elif not self.autoencoder().kind:
            raise InputError(f"{self.data} is not a latent cache: pass the autoencoder that encodes it, --vae "
                             "FOLDER or --rae-encoder DINOV2")

    def autoencoder(self) -> AutoencoderSpec:
        return AutoencoderSpec(vae=self.vae, rae_encoder=self.rae_encoder, rae_patch=self.rae_patch)

    def target(self) -> Path:
        return Path(self.out) if self.out else Path(self.data) / STATS_FILE


STATS_DOMAINS = dict(eps=NON_NEGATIVE, rae_patch=COUNT, image_size=COUNT, batch_size=COUNT, seed=SEED, num=COUNT)
STATS_FLAGS = {"num": "--num-images"}


@dataclass
class LatentStatsResult:
    out: Path
    count: int  # latents seen (two per image)
    describe: str  # e.g. "element statistics (768, 16, 16), eps 1e-05, scale 1"
    recorded: bool  # the cache's manifest now names the file
    is_main: bool = True


def latent_stats(cfg: LatentStatsConfig, progress: bool = True, device: str | None = None) -> LatentStatsResult:
    """Compute the statistics of ``cfg.data`` and write them to ``cfg.target()`` (see the module)."""
    out = cfg.target()
    if out.suffix != ".safetensors":
        raise InputError(f"--out {out}: name a .safetensors file")
    if (out.exists() or out.is_symlink()) and not cfg.overwrite:
        raise InputError(f"{out} already exists: pass --overwrite to replace it, or pick another --out")
    atomic.check_can_create(out.parent, "--out")
    with session(device) as job:
        dist = job.dist
        cache = is_latent_cache(cfg.data)
        mine = _cache_batches(cfg, dist) if cache else _folder_batches(cfg, dist)
        total = next(mine)
        stats = LatentStatistics()
        from rich.progress import track

        for z in track(mine, total=total, description="latent statistics", disable=not (progress and dist.is_main)):
            stats.update(z.to(dist.device))
        merged = LatentStatistics()
        for count, mean, m2 in distributed.all_gather_objects((stats.count, stats.mean, stats.m2)):
            if count:  # in rank order, so that every rank holds the same numbers
                merged.merge(_partial(count, mean, m2))
        if merged.count == 0:
            raise InputError(f"{cfg.data} gave no latents (no readable image)")
        norm = merged.normalization(cfg.kind, eps=cfg.eps, unbiased=cfg.unbiased,
                                    source=f"sit latent-stats {cfg.data} ({merged.count} latents)")
        recorded = cache and out.resolve().parent == Path(cfg.data).resolve()
        if dist.is_main:
            save_normalization(out, norm)
            if recorded:
                _record(Path(cfg.data), out)
        distributed.barrier()
        return LatentStatsResult(out, merged.count, norm.describe(), recorded, dist.is_main)


def _partial(count: int, mean: torch.Tensor, m2: torch.Tensor) -> LatentStatistics:
    part = LatentStatistics()
    part.count, part.mean, part.m2 = count, mean, m2
    return part


def _record(cache: Path, out: Path) -> None:
    """Name the statistics in the cache's manifest (rewritten atomically)."""
    manifest = json.loads((cache / LATENT_MANIFEST).read_text())
    manifest["normalization"] = {**statistics_identity(out), "file": out.name}
    atomic.write_json(cache / LATENT_MANIFEST, manifest)


def _mine(n: int, batch_size: int, dist) -> list[range]:
    """This rank's batches: every world_size-th of the consecutive batches of ``batch_size`` items."""
    batches = [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    return batches[dist.rank :: dist.world_size]


def _cache_batches(cfg: LatentStatsConfig, dist):
    """The number of this rank's batches, then each batch's raw latents (both copies) of a cache, float64."""
    data = LatentDataset(cfg.data)
    scale = float(data.manifest["latent_scale"])
    batches = _mine(min(len(data), cfg.num or len(data)), cfg.batch_size, dist)
    yield len(batches)
    for rows in batches:
        stored = np.asarray(data.latents[rows.start : rows.stop])  # (b, 2, C, h, w) float16
        yield torch.from_numpy(stored.astype(np.float64)).flatten(0, 1) / scale


def _folder_batches(cfg: LatentStatsConfig, dist):
    """The same for an image folder, encoded here (images that cannot be read are left out)."""
    from sitcli.data import DIGITS, DigitsDataset, ImageFolderDataset, to_unit_range
    from sitcli.seeds import index_normal

    digits = cfg.data == DIGITS
    dataset = DigitsDataset(cfg.image_size) if digits else ImageFolderDataset(cfg.data, cfg.image_size)
    ae = cfg.autoencoder().open(cfg.image_size, dist.device, image_channels=dataset.info.channels, decoder=False)
    shape = ae.latent_shape(cfg.image_size)
    batches = _mine(min(len(dataset), cfg.num or len(dataset)), cfg.batch_size, dist)
    yield len(batches)
    for rows in batches:
        arrays = [(i, dataset.x[i] if digits else dataset.load(i)) for i in rows]
        kept = [(i, a) for i, a in arrays if a is not None]
        if not kept:
            continue
        if digits:  # in memory, already in [-1, 1]
            x = torch.stack([a for _, a in kept]).to(dist.device)
        else:
            x = to_unit_range(np.stack([a.transpose(2, 0, 1) for _, a in kept])).to(dist.device)
        if ae.kind == "kl":  # the posterior noise of each image and its mirror, as sit cache-latents draws it
            noise = torch.stack([index_normal(cfg.seed, i, (2, *shape)) for i, _ in kept]).to(dist.device)
            z = torch.cat([ae.encode_raw(x, noise=noise[:, 0]), ae.encode_raw(x.flip(-1), noise=noise[:, 1])])
        else:
            z = torch.cat([ae.encode_raw(x), ae.encode_raw(x.flip(-1))])
        yield z
