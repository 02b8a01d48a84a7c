"""The metrics, as functions of feature statistics or feature arrays. Pure math: no files, no network.

- ``frechet_distance``: FID (and sFID on spatial features), Heusel et al. 2017.
- ``precision_recall``: improved precision and recall, Kynkaenniemi et al. 2019.
- ``kernel_inception_distance``: KID, Binkowski et al. 2018.

The Inception Score is accumulated while features stream past (``statistics.SplitScore``).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from torch import Tensor


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    r"""Fréchet distance between the Gaussians :math:`N(\mu_1, \Sigma_1)` and :math:`N(\mu_2, \Sigma_2)`:

    .. math::
        d^2 = \|\mu_1 - \mu_2\|^2 + \operatorname{tr}\Sigma_1 + \operatorname{tr}\Sigma_2
              - 2 \operatorname{tr}\big( (\Sigma_1 \Sigma_2)^{1/2} \big).

    With :math:`\Sigma_1 = F F^\top` (``psd_factor``), :math:`\Sigma_1\Sigma_2` has the same
    nonzero eigenvalues :math:`\lambda_i` as the small symmetric :math:`F^\top \Sigma_2 F`, so the
    last trace is :math:`\sum_i \sqrt{\lambda_i}`. pytorch-fid takes ``scipy.linalg.sqrtm`` of
    the non-symmetric product instead; the value is the same (the tests compare both), but a
    Cholesky factor and one symmetric eigenvalue problem are several times faster at 2048
    dimensions, and cannot produce imaginary parts or NaN (pytorch-fid's ``sqrtm`` can, on
    rank-deficient or ill-conditioned products and under some BLAS builds: TTUR#4, LightningDiT#97).
    Everything is float64. Against references built from sample factors (tests/test_fid_math.py) it
    agrees to 1e-10 relative for rank-deficient (n < d) and condition-1e12 covariances, and to 3e-9
    for covariances with exactly zero eigenvalues, where any method is limited by sqrt(round-off).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}"
        )
    if not all(np.isfinite(a).all() for a in (mu1, sigma1, mu2, sigma2)):
        raise ValueError("the statistics hold NaN or inf: recompute them from finite features")
    # Symmetrise: covariances written by other tools can be asymmetric in the last bits.
    sigma1 = (sigma1 + sigma1.T) / 2
    sigma2 = (sigma2 + sigma2.T) / 2
    f = psd_factor(sigma1)
    inner = f.T @ sigma2 @ f
    lam = scipy.linalg.eigvalsh((inner + inner.T) / 2)
    # Eigenvalues below numpy.linalg.matrix_rank's tolerance (size * eps * largest) are round-off
    # of zero; their square roots (~1e-8 each) would otherwise add up over a large null space.
    tol = len(lam) * np.finfo(np.float64).eps * max(lam.max(initial=0.0), 0.0)
    tr_covmean = np.sqrt(lam[lam > tol]).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def psd_factor(sigma: np.ndarray) -> np.ndarray:
    r"""A (d, r) matrix :math:`F` with :math:`\Sigma = F F^\top`, r the numerical rank of :math:`\Sigma`.

    Pivoted Cholesky (LAPACK ``dpstrf``, rank tolerance d * eps * max diagonal), so the singular
    covariances of d or fewer images work too, where plain Cholesky fails.
    """
    c, piv, rank, info = scipy.linalg.lapack.dpstrf(sigma, lower=1)
    if info < 0:
        raise ValueError(f"LAPACK dpstrf: illegal argument {-info}")
    factor = np.empty((len(sigma), rank))
    # dpstrf factors P^T sigma P = L L^T with P[piv[k] - 1, k] = 1, so F = P L.
    factor[piv - 1] = np.tril(c)[:, :rank]
    return factor


def _squared_distances(a: Tensor, b: Tensor) -> Tensor:
    # |a|^2 + |b|^2 - 2ab as one matmul; clamp the round-off below zero.
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return d2.clamp_min_(0)


def _knn_radii(x: Tensor, k: int, block: int) -> Tensor:
    """Squared distance from each row of x to its k-th nearest other row."""
    radii = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for start in range(0, len(x), block):
        d2 = _squared_distances(x[start : start + block], x)
        # The (k+1)-th smallest, because each point's nearest neighbour is itself at distance 0.
        radii[start : start + block] = d2.kthvalue(k + 1, dim=1).values
    return radii


def _covered(points: Tensor, centres: Tensor, radii: Tensor, block: int) -> Tensor:
    """Whether each point lies in at least one ball (centre, radius), all squared distances."""
    inside = torch.empty(len(points), dtype=torch.bool, device=points.device)
    for start in range(0, len(points), block):
        d2 = _squared_distances(points[start : start + block], centres)
        inside[start : start + block] = (d2 <= radii[None, :]).any(dim=1)
    return inside


def precision_recall(
    real: np.ndarray | Tensor,
    fake: np.ndarray | Tensor,
    k: int = 3,
    *,
    device: str | torch.device = "cpu",
    block: int = 1024,
) -> tuple[float, float]:
    r"""Improved precision and recall (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls around its points with radius the distance to the
    point's ``k``-th nearest neighbour within the same set. Then

    .. math::
        \text{precision} = \tfrac{1}{|F|} \#\{f \in F : f \in \text{manifold}(R)\},\qquad
        \text{recall} = \tfrac{1}{|R|} \#\{r \in R : r \in \text{manifold}(F)\},

    with a point on a ball's boundary counted as inside (as the ADM evaluator does). ``real``
    and ``fake`` are (N, D) features; distances are computed in float64 in blocks of ``block``
    rows, so memory is ``block * N`` rather than ``N**2``.
    """
    r = torch.as_tensor(real).to(device=device, dtype=torch.float64)
    f = torch.as_tensor(fake).to(device=device, dtype=torch.float64)
    for name, x in (("real", r), ("fake", f)):
        if x.ndim != 2 or len(x) <= k:
            raise ValueError(f"{name} needs shape (N, D) with N > k={k}, got {tuple(x.shape)}")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dimensions differ: {r.shape[1]} and {f.shape[1]}")
    precision = _covered(f, r, _knn_radii(r, k, block), block).double().mean()
    recall = _covered(r, f, _knn_radii(f, k, block), block).double().mean()
    return float(precision), float(recall)


def polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    r"""KID's kernel :math:`k(x, y) = (x^\top y / d + 1)^3`."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: Tensor, y: Tensor) -> Tensor:
    r"""The unbiased MMD² estimate used by KID, for two samples of the same size m:

    .. math::
        \frac{1}{m(m-1)} \sum_{i \ne j} \big(k(x_i, x_j) + k(y_i, y_j)\big)
        - \frac{2}{m^2} \sum_{i, j} k(x_i, y_j).

    Unbiased when x and y are independent samples. It is *not* zero when x and y are the
    same points: then it equals :math:`-\frac{2}{m-1}(\overline{k(x_i,x_i)} - \overline{k(x_i,x_j)})`,
    with the second mean over all pairs including i = j.
    """
    m = len(x)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * kxy.sum() / (m * m)


def kernel_inception_distance(
    a: np.ndarray | Tensor,
    b: np.ndarray | Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    *,
    seed: int = 2020,
    device: str | torch.device = "cpu",
) -> tuple[float, float, int]:
    """KID: ``mmd2_unbiased`` averaged over ``subsets`` random subsets of each set.

    Subsets are drawn without replacement by ``numpy.random.RandomState(seed).choice``, one for
    ``a`` then one for ``b`` per round, as torch-fidelity draws them (its default seed is 2020).
    ``subset_size`` is capped at the size of the smaller set. Returns mean, (population) standard
    deviation over subsets, and the subset size used.
    """
    x = torch.as_tensor(a).to(device=device, dtype=torch.float64)
    y = torch.as_tensor(b).to(device=device, dtype=torch.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need (N, D) features of equal D, got {tuple(x.shape)} and {tuple(y.shape)}")
    m = min(subset_size, len(x), len(y))
    if m < 2 or subsets < 1:
        raise ValueError(f"KID needs subsets of at least 2 samples and 1 subset, got size {m}, {subsets} subsets")
    rng = np.random.RandomState(seed)
    values = []
    for _ in range(subsets):
        ia = torch.from_numpy(rng.choice(len(x), m, replace=False)).to(x.device)
        ib = torch.from_numpy(rng.choice(len(y), m, replace=False)).to(y.device)
        values.append(float(mmd2_unbiased(x[ia], y[ib])))
    return float(np.mean(values)), float(np.std(values)), m
