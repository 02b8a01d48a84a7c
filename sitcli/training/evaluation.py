"""FID during training: every ``eval_every`` steps, ``eval_num`` EMA samples against reference statistics.

    sit fid ref_images/ --save-stats ref.npz --inception-weights pt_inception.pth
    sit train --data ref_images/ --eval-every 10000 --eval-num 5000 --eval-ref ref.npz ...

Sample ``i`` starts from the noise and label of ``seeds.index_generator(seed, i)`` (the streams `sit
sample --seed` uses), so every evaluation of a run looks at the same noise, on any number of ranks:
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
from sitcli.evaluate.statistics import GaussianStats
from sitcli.images import to_images
from sitcli.runtime import tf32
from sitcli.seeds import labels_and_noise
from sitcli.transport import sample_ode


def open_reference(cfg: TrainConfig) -> dict[str, np.ndarray]:
    """The reference statistics of ``--eval-ref`` (mu, sigma of Inception pool features), checked."""
    ref = read_stats(cfg.eval_ref)
    if "mu" not in ref or ref["mu"].shape != (inception.POOL_DIM,):
        raise InputError(f"--eval-ref {cfg.eval_ref} holds no {inception.POOL_DIM}-d Inception statistics (mu, sigma); "
                         "write them with `sit fid REFERENCE_IMAGES --save-stats STATS.npz`")
    return ref


class TrainingEval:
    """Computes the FID of the EMA model at the steps ``due`` says; every rank takes part."""

    def __init__(self, cfg: TrainConfig, dist: Dist, vae=None, batch_size: int = 50):
        self.cfg, self.dist, self.vae, self.batch_size = cfg, dist, vae, batch_size
        if self.vae is None and cfg.latent_scale is not None:  # a latent cache: decode with the VAE it names
            if not cfg.vae:
                raise InputError("--eval-every on latents needs the VAE that decodes them: pass --vae FOLDER")
            from sitcli.autoencoder import load_vae

            self.vae = load_vae(cfg.vae, dist.device)
        self.ref = open_reference(cfg)
        self.net = inception.load_inception(cfg.inception_weights, dist.device)
        self.transport = cfg.transport()

    def due(self, step: int) -> bool:
        return self.cfg.eval_every > 0 and step % self.cfg.eval_every == 0

    @torch.no_grad()
    def run(self, ema: torch.nn.Module, step: int) -> dict[str, float]:
        """``{"fid": ..., "eval_s": seconds}`` (the FID on rank 0; nan on the other ranks)."""
        started = time.perf_counter()
        cfg, dist = self.cfg, self.dist
        devices = [dist.device] if dist.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            pool = self._features(ema, list(range(dist.rank, cfg.eval_num, dist.world_size)))
        pool = _gather_in_index_order(pool, cfg.eval_num, dist)
        fid = float("nan")
        if dist.is_main:
            stats = GaussianStats(inception.POOL_DIM)
            stats.update(pool)
            fid = frechet_distance(stats.mean(), stats.covariance(), self.ref["mu"], self.ref["sigma"])
        return {"fid": fid, "eval_s": time.perf_counter() - started}

    def _features(self, ema: torch.nn.Module, indices: list[int]) -> torch.Tensor:
        cfg, device = self.cfg, self.dist.device
        shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
        classes = max(cfg.num_classes, 1)
        out = []
        for start in range(0, len(indices), self.batch_size):
            y, x0 = labels_and_noise(cfg.seed, indices[start:start + self.batch_size], shape, classes, None)
            kwargs = {"y": y.to(device) if cfg.num_classes > 0 else None}
            x, _ = sample_ode(self.transport, ema, x0.to(device), cfg.eval_method, cfg.eval_steps, model_kwargs=kwargs)
            images = torch.from_numpy(to_images(x, self.vae)).to(device).permute(0, 3, 1, 2)
            if images.shape[1] == 1:  # grey images as RGB, the way `sit fid` reads a grey PNG
                images = images.expand(-1, 3, -1, -1)
            with torch.inference_mode(), tf32(False):  # FID in true float32, as `sit fid`
                out.append(self.net(images.float() / 255, ("pool",))["pool"].double().cpu())
        return torch.cat(out) if out else torch.zeros(0, inception.POOL_DIM, dtype=torch.float64)


def _gather_in_index_order(rows: torch.Tensor, total: int, dist: Dist) -> torch.Tensor:
    """Rank r holds the rows of indices r, r + K, ...; rank 0 gets all ``total`` rows by index."""
    if not dist.active:
        return rows
    per_rank = -(-total // dist.world_size)
    padded = torch.zeros(per_rank, rows.shape[1], dtype=rows.dtype)
    padded[:len(rows)] = rows
    gathered = distributed.all_gather_tensors(padded.to(dist.device))
    order = [gathered[i % dist.world_size][i // dist.world_size] for i in range(total)]
    return torch.stack(order).cpu()
