"""FID during training: every ``eval_every`` steps, ``eval_num`` EMA samples against reference statistics.

``eval_metrics`` adds, from the same samples, the Inception Score ("is": 10 splits, fewer so that each
holds at least 50 samples; "is_std" their spread) and sFID ("sfid", against the reference's
``mu_s``/``sigma_s``, which `sit fid --save-stats` writes). Precision/recall, KID and FD-DINOv2 need
the reference's features, not its statistics, so they stay with `sit fid`.

    sit fid ref_images/ --save-stats ref.npz --inception-weights pt_inception.pth
    sit train --data ref_images/ --eval-every 10000 --eval-num 5000 --eval-ref ref.npz ...

Sample ``i`` starts from the noise and label of ``seeds.index_generator(seed, i)`` (the streams `sit
sample --seed` uses; with ``eval_labels="balanced"`` the label of ``seeds.balanced_labels``, exactly
eval_num / classes of each), so every evaluation of a run looks at the same noise, on any number of ranks:
rank ``r`` draws indices ``r, r + K, ...`` and the Inception features are gathered in index order.
The sampler is the probability-flow ODE with ``eval_method`` / ``eval_steps`` (recorded in
config.json), unguided.

An evaluation never changes the training trajectory: the EMA copy is only read, in eval mode
and without gradients; the global RNG states are forked and put back; the training noise
generator is not touched.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from sitcli import distributed
from sitcli.config import TrainConfig
from sitcli.distributed import Dist
from sitcli.errors import InputError
from sitcli.evaluate import inception
from sitcli.evaluate.inputs import read_stats
from sitcli.evaluate.metrics import frechet_distance
from sitcli.evaluate.statistics import GaussianStats, SplitScore
from sitcli.images import to_images
from sitcli.latent_space import can_decode, decodes, model_autoencoder
from sitcli.runtime import tf32
from sitcli.seeds import labels_and_noise
from sitcli.training.reports import sampling_shift
from sitcli.transport import sample_ode


EVAL_METRICS = ("fid", "is", "sfid")  # what --eval-metrics may name; fid is always computed


def eval_metrics(spec: str) -> tuple[str, ...]:
    """The metrics of ``--eval-metrics`` (a comma list), fid first; anything else is refused."""
    names = [n.strip().lower() for n in str(spec).split(",") if n.strip()]
    bad = [n for n in names if n not in EVAL_METRICS]
    if bad:
        raise InputError(
            f"--eval-metrics {bad[0]!r}: during training choose from {', '.join(EVAL_METRICS)} "
            "(precision/recall, KID and FD-DINOv2 need reference features: run `sit fid` on samples)"
        )
    return ("fid", *(n for n in EVAL_METRICS[1:] if n in names))


def open_reference(cfg: TrainConfig) -> dict[str, np.ndarray]:
    """The reference statistics of ``--eval-ref`` (mu, sigma of Inception pool features; mu_s, sigma_s for sFID),
    checked."""
    ref = read_stats(cfg.eval_ref)
    if "mu" not in ref or ref["mu"].shape != (inception.POOL_DIM,):
        raise InputError(
            f"--eval-ref {cfg.eval_ref} holds no {inception.POOL_DIM}-d Inception statistics (mu, sigma); "
            "write them with `sit fid REFERENCE_IMAGES --save-stats STATS.npz`"
        )
    if "sfid" in eval_metrics(cfg.eval_metrics) and "mu_s" not in ref:
        raise InputError(
            f"--eval-metrics sfid needs mu_s and sigma_s in --eval-ref {cfg.eval_ref}; write the statistics "
            "again with `sit fid REFERENCE_IMAGES --save-stats STATS.npz`"
        )
    return ref


class TrainingEval:
    """Computes the FID of the EMA model at the steps ``due`` says; every rank takes part."""

    def __init__(self, cfg: TrainConfig, dist: Dist, vae=None, batch_size: int = 50):
        self.cfg, self.dist, self.vae, self.batch_size = cfg, dist, vae, batch_size
        if cfg.latent_scale is not None and not can_decode(cfg):
            raise InputError("--eval-every on latents needs what decodes them: pass --vae FOLDER, or --rae-decoder "
                             "for RAE latents")
        if cfg.latent_scale is not None and (self.vae is None or not decodes(self.vae)):
            self.vae = model_autoencoder(cfg, dist.device)  # a latent cache: decode with the autoencoder it names
        self.time_shift = sampling_shift(cfg, cfg.eval_method)
        self.metrics = eval_metrics(cfg.eval_metrics)
        self.outputs = (
            "pool",
            *(("logits",) if "is" in self.metrics else ()),
            *(("spatial",) if "sfid" in self.metrics else ()),
        )
        self.ref = open_reference(cfg)
        self.net = inception.load_inception(cfg.inception_weights, dist.device)
        self.transport = cfg.transport()

    def due(self, step: int) -> bool:
        return self.cfg.eval_every > 0 and step % self.cfg.eval_every == 0

    @torch.no_grad()
    def run(self, ema: torch.nn.Module, step: int) -> dict[str, float]:
        """``{"fid": ..., ["is", "is_std", "sfid",] "eval_s": seconds}`` (values on rank 0; nan on the others)."""
        started = time.perf_counter()
        cfg, dist = self.cfg, self.dist
        devices = [dist.device] if dist.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            features = self._features(ema, list(range(dist.rank, cfg.eval_num, dist.world_size)))
        features = {k: _gather_in_index_order(v, cfg.eval_num, dist) for k, v in features.items()}
        names = (
            "fid",
            *(("is", "is_std") if "is" in self.metrics else ()),
            *(("sfid",) if "sfid" in self.metrics else ()),
        )
        out = dict.fromkeys(names, float("nan"))
        if dist.is_main:
            out["fid"] = _frechet(features["pool"], self.ref["mu"], self.ref["sigma"])
            if "is" in self.metrics:
                score = SplitScore(cfg.eval_num, splits=max(1, min(10, cfg.eval_num // 50)))
                score.update(features["logits"])
                out["is"], out["is_std"] = score.result()
            if "sfid" in self.metrics:
                out["sfid"] = _frechet(features["spatial"], self.ref["mu_s"], self.ref["sigma_s"])
        return {**out, "eval_s": time.perf_counter() - started}

    def _features(self, ema: torch.nn.Module, indices: list[int]) -> torch.Tensor:
        cfg, device = self.cfg, self.dist.device
        shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
        classes = max(cfg.num_classes, 1)
        out: dict[str, list[torch.Tensor]] = {k: [] for k in self.outputs}
        for start in range(0, len(indices), self.batch_size):
            y, x0 = labels_and_noise(cfg.seed, indices[start : start + self.batch_size], shape, classes, None,
                                     cfg.eval_labels, cfg.eval_num)
            kwargs = {"y": y.to(device) if cfg.num_classes > 0 else None}
            x, _ = sample_ode(self.transport, ema, x0.to(device), cfg.eval_method, cfg.eval_steps, model_kwargs=kwargs,
                              time_shift=self.time_shift)
            images = torch.from_numpy(to_images(x, self.vae)).to(device).permute(0, 3, 1, 2)
            if images.shape[1] == 1:  # grey images as RGB, the way `sit fid` reads a grey PNG
                images = images.expand(-1, 3, -1, -1)
            with torch.inference_mode(), tf32(False):  # FID in true float32, as `sit fid`
                result = self.net(images.float() / 255, self.outputs)
            for k in self.outputs:
                out[k].append(result[k].double().cpu())
        widths = {"pool": inception.POOL_DIM, "logits": inception.NUM_CLASSES, "spatial": inception.SPATIAL_DIM}
        return {k: torch.cat(v) if v else torch.zeros(0, widths[k], dtype=torch.float64) for k, v in out.items()}


def _frechet(rows: torch.Tensor, mu: np.ndarray, sigma: np.ndarray) -> float:
    stats = GaussianStats(rows.shape[1])
    stats.update(rows)
    return frechet_distance(stats.mean(), stats.covariance(), mu, sigma)


def _gather_in_index_order(rows: torch.Tensor, total: int, dist: Dist) -> torch.Tensor:
    """Rank r holds the rows of indices r, r + K, ...; rank 0 gets all ``total`` rows by index."""
    if not dist.active:
        return rows
    per_rank = -(-total // dist.world_size)
    padded = torch.zeros(per_rank, rows.shape[1], dtype=rows.dtype)
    padded[: len(rows)] = rows
    gathered = distributed.all_gather_tensors(padded.to(dist.device))
    order = [gathered[i % dist.world_size][i // dist.world_size] for i in range(total)]
    return torch.stack(order).cpu()
