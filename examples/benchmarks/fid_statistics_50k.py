"""Benchmark, not a test: the statistics-only FID path at the ADM reference batch's scale, on the CPU.

    python examples/benchmarks/fid_statistics_50k.py [--num 50000] [--dim 2048] [--batch 500] [--threads 1]

Inception is left out: N random float32 feature rows (what Inception's pool layer gives for N images)
go through what ``sit fid`` does with them, side by side with pytorch-fid's route, in one process:

- sit: ``GaussianStats`` streamed batch by batch (float64 sums; memory fixed at two d x d matrices),
  then ``frechet_distance`` (pivoted Cholesky + one symmetric eigenvalue problem) against a second
  set of statistics, as against the ADM reference batch's stored mu/sigma;
- pytorch-fid: all N rows held, ``np.mean`` and ``np.cov`` (float64), then its
  ``calculate_frechet_distance`` (``scipy.linalg.sqrtm`` of the product).

Prints each part's seconds and the ratio, and the two distances (they agree to ~1e-9 relative).
Timings depend on the BLAS and on other load: compare the ratio within one run, not across machines.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import numpy as np
    import torch
    from pytorch_fid.fid_score import calculate_frechet_distance

    from sitcli.evaluate.metrics import frechet_distance
    from sitcli.evaluate.statistics import GaussianStats

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    # Correlated, non-negative rows like pooled ReLU features; a second set stands in for the reference.
    mixing = rng.standard_normal((args.dim, args.dim)).astype(np.float32) / np.sqrt(args.dim)
    features = np.maximum(rng.standard_normal((args.num, args.dim), dtype=np.float32) @ mixing, 0)
    reference = np.maximum(rng.standard_normal((4 * args.dim, args.dim), dtype=np.float32) @ mixing + 0.05, 0)
    mu_ref, sigma_ref = reference.mean(0, dtype=np.float64), np.cov(reference, rowvar=False)

    began = time.perf_counter()
    stats = GaussianStats(args.dim)
    for start in range(0, args.num, args.batch):
        stats.update(torch.from_numpy(features[start : start + args.batch]))
    mu, sigma = stats.mean(), stats.covariance()
    sit_stats = time.perf_counter() - began
    began = time.perf_counter()
    sit_fd = frechet_distance(mu, sigma, mu_ref, sigma_ref)
    sit_fd_s = time.perf_counter() - began

    began = time.perf_counter()
    mu_pf, sigma_pf = np.mean(features, axis=0), np.cov(features, rowvar=False)
    pf_stats = time.perf_counter() - began
    began = time.perf_counter()
    pf_fd = calculate_frechet_distance(mu_pf, sigma_pf, mu_ref, sigma_ref)
    pf_fd_s = time.perf_counter() - began

    print(f"{args.num} x {args.dim} float32 features, {args.threads} thread(s), batches of {args.batch}")
    print(f"{'':28s}{'sit':>10s}{'pytorch-fid':>14s}{'ratio':>8s}")
    for name, ours, theirs in (("statistics (mean, cov) s", sit_stats, pf_stats), ("Frechet distance s", sit_fd_s,
                                pf_fd_s), ("total s", sit_stats + sit_fd_s, pf_stats + pf_fd_s)):
        print(f"{name:28s}{ours:10.2f}{theirs:14.2f}{theirs / ours:8.2f}")
    print(f"distance: sit {sit_fd:.10g}, pytorch-fid {pf_fd:.10g} "
          f"(relative difference {abs(sit_fd - pf_fd) / pf_fd:.1e})")
    print(f"memory held for statistics: sit 2 x {args.dim}^2 float64 = {2 * args.dim**2 * 8 / 2**20:.0f} MiB; "
          f"pytorch-fid all rows, {args.num * args.dim * 8 / 2**20:.0f} MiB as float64")


if __name__ == "__main__":
    main()
