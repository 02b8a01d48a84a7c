"""sitcli/evaluate/metrics.py and statistics.py against closed forms and direct computations."""

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from sitcli.evaluate.metrics import (
    frechet_distance,
    kernel_inception_distance,
    mmd2_unbiased,
    precision_recall,
)
from sitcli.evaluate.statistics import GaussianStats, SplitScore


def _random_spd(rng, d, rank=None):
    x = rng.standard_normal((rank or 2 * d, d))
    return np.cov(x, rowvar=False)


# ----------------------------------------------------------------------------- FID


def test_frechet_distance_commuting_covariances_closed_form():
    # Same eigenvectors: tr sqrt(S1 S2) = sum sqrt(a_i b_i), so d^2 = |dmu|^2 + sum (sqrt a - sqrt b)^2.
    rng = np.random.default_rng(0)
    d = 50
    q = scipy.stats.ortho_group.rvs(d, random_state=1)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_non_commuting_2x2_closed_form():
    # For 2x2 M with positive eigenvalues, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)).
    s1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = np.array([0.3, -1.0]), np.array([1.0, 2.0])
    m = s1 @ s2
    tr_sqrt = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_identical_statistics_is_zero_even_when_singular():
    rng = np.random.default_rng(1)
    mu, sigma = rng.standard_normal(300), _random_spd(rng, 300, rank=20)  # rank-deficient, as with few images
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


def test_frechet_distance_agrees_with_sqrtm_form_used_by_pytorch_fid():
    rng = np.random.default_rng(2)
    s1, s2 = _random_spd(rng, 64), _random_spd(rng, 64)
    mu1, mu2 = rng.standard_normal(64), rng.standard_normal(64)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ----------------------------------------------------------------------------- streamed statistics


def test_gaussian_stats_streamed_equals_numpy_two_pass():
    rng = np.random.default_rng(3)
    # A large common offset: the naive sum(x x^T) - n mu mu^T form would lose digits here.
    x = 1e4 + rng.standard_normal((103, 16)) * rng.uniform(0.01, 2, 16)
    acc = GaussianStats(16)
    for chunk in np.split(x, [1, 8, 40, 41, 90]):  # uneven batches, one of size 1
        acc.update(torch.from_numpy(chunk))
    assert acc.count == 103
    np.testing.assert_allclose(acc.mean(), x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(acc.covariance(), np.cov(x, rowvar=False), rtol=1e-8, atol=1e-12)


def test_gaussian_stats_accumulates_in_float64_from_float32_batches():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    acc = GaussianStats(8)
    acc.update(torch.from_numpy(x[:30]))
    acc.update(torch.from_numpy(x[30:]))
    np.testing.assert_allclose(acc.covariance(), np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)


def test_gaussian_stats_needs_two_samples():
    acc = GaussianStats(4)
    acc.update(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="at least 2"):
        acc.covariance()


def _inception_score_direct(logits: np.ndarray, splits: int) -> tuple[float, float]:
    # The improved-gan code, written out: KL(p(y|x) || p(y)) per split, exponentiated.
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n = len(p)
    scores = []
    for k in range(splits):
        part = p[k * n // splits : (k + 1) * n // splits]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def test_split_score_equals_direct_inception_score():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((37, 20)) * 3  # 37 rows: splits of 3 and 4
    acc = SplitScore(37, splits=10)
    for chunk in np.split(logits, [5, 6, 20]):
        acc.update(torch.from_numpy(chunk))
    mean, std = acc.result()
    want_mean, want_std = _inception_score_direct(logits, 10)
    assert mean == pytest.approx(want_mean, rel=1e-12)
    assert std == pytest.approx(want_std, rel=1e-9)
    assert std > 0


def test_inception_score_known_values():
    # Same prediction everywhere: no information, IS = 1.
    acc = SplitScore(20, splits=2)
    acc.update(torch.zeros(20, 7))
    assert acc.result() == pytest.approx((1.0, 0.0), abs=1e-12)
    # Confident and spread evenly over C classes within each split: IS = C.
    c = 5
    acc = SplitScore(20, splits=2)
    acc.update(torch.eye(c).repeat(4, 1) * 200.0)
    mean, std = acc.result()
    assert mean == pytest.approx(c, rel=1e-9)
    assert std == pytest.approx(0, abs=1e-9)


def test_split_score_needs_enough_rows():
    with pytest.raises(ValueError, match="10 splits"):
        SplitScore(9, splits=10)


# ----------------------------------------------------------------------------- precision / recall


def _embed(points_1d, rotation):
    # Points on a line, placed in 5-d by an orthogonal map: distances are unchanged.
    x = np.zeros((len(points_1d), 5))
    x[:, 0] = points_1d
    return x @ rotation.T


def test_precision_recall_on_constructed_points():
    rot = scipy.stats.ortho_group.rvs(5, random_state=0)
    real = np.arange(10.0)  # 3rd-neighbour radii: 3 at both ends, 2 inside -> manifold [-3, 12]
    fake = np.array([0.5, 1.5, 2.5, 3.5, 50, 60, 70, 80])
    # Fake radii: 3, 2, 2, 3 for the first four (covering real 0..6), 30, 20, 20, 30 far away.
    precision, recall = precision_recall(_embed(real, rot), _embed(fake, rot), k=3)
    assert precision == pytest.approx(4 / 8)
    assert recall == pytest.approx(7 / 10)


def test_precision_counts_points_on_the_boundary():
    real = np.array([[0.0], [1.0], [2.0], [3.0]])  # radius of 0 is 3
    assert precision_recall(real, np.array([[-3.0], [-3.0], [-3.0], [-3.0]]), k=3)[0] == 1.0
    assert precision_recall(real, np.array([[-3.25], [-3.25], [-3.25], [-3.25]]), k=3)[0] == 0.0


def test_precision_recall_blocks_do_not_change_the_result():
    rng = np.random.default_rng(6)
    real, fake = rng.standard_normal((50, 8)), rng.standard_normal((40, 8)) + 0.5
    assert precision_recall(real, fake, block=7) == precision_recall(real, fake, block=1024)


def test_precision_recall_needs_more_than_k_points():
    with pytest.raises(ValueError, match="N > k=3"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))


# ----------------------------------------------------------------------------- KID


def _mmd2_direct(x, y):
    m = len(x)
    k = lambda a, b: (a @ b / x.shape[1] + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_mmd2_unbiased_equals_direct_double_sum():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((12, 6)), rng.standard_normal((12, 6)) + 0.3
    got = float(mmd2_unbiased(torch.from_numpy(x), torch.from_numpy(y)))
    assert got == pytest.approx(_mmd2_direct(x, y), rel=1e-12)


def test_kid_subsets_follow_randomstate_draws():
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((30, 6)), rng.standard_normal((25, 6)) + 0.2
    mean, std, m = kernel_inception_distance(a, b, subsets=4, subset_size=10, seed=11)
    draws = np.random.RandomState(11)
    values = []
    for _ in range(4):
        ia, ib = draws.choice(30, 10, replace=False), draws.choice(25, 10, replace=False)
        values.append(_mmd2_direct(a[ia], b[ib]))
    assert m == 10
    assert mean == pytest.approx(np.mean(values), rel=1e-10)
    assert std == pytest.approx(np.std(values), rel=1e-8)


def test_kid_identical_inputs_known_value():
    # The unbiased estimator assumes independent sets; on the very same points it is not 0 but
    # -2/(m-1) * (mean of k(x_i, x_i) - mean of k(x_i, x_j) over all pairs).
    rng = np.random.default_rng(9)
    x = rng.standard_normal((20, 6))
    kernel = (x @ x.T / 6 + 1) ** 3
    expected = -2 / 19 * (np.diag(kernel).mean() - kernel.mean())
    mean, std, m = kernel_inception_distance(x, x, subsets=3, subset_size=20)
    assert m == 20 and mean == pytest.approx(expected, rel=1e-10) and std < 1e-12


def test_kid_near_zero_for_same_distribution_and_positive_for_shifted():
    rng = np.random.default_rng(10)
    a, b, c = rng.standard_normal((200, 8)), rng.standard_normal((200, 8)), rng.standard_normal((200, 8)) + 0.5
    same, same_std, _ = kernel_inception_distance(a, b, subsets=10, subset_size=100)
    shifted, _, _ = kernel_inception_distance(a, c, subsets=10, subset_size=100)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 20 * max(abs(same), same_std)


# ----------------------------------------------------------------------------- FID where sqrtm breaks


def _factor_reference(mu1, f, mu2, g):
    """d^2 for Sigma1 = F F^T, Sigma2 = G G^T without any matrix square root: the nonzero eigenvalues of
    Sigma1 Sigma2 are those of (F^T G)(F^T G)^T, so tr (Sigma1 Sigma2)^(1/2) is the nuclear norm of F^T G."""
    nuclear = np.linalg.svd(f.T @ g, compute_uv=False).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.sum(f * f) + np.sum(g * g) - 2 * nuclear)


def _sample_factors(rng, d, n1, n2, condition=None):
    """Centred sample factors (Sigma = F F^T is the unbiased covariance of n samples): rank n - 1 when n <= d;
    with ``condition``, Sigma1's spectrum spans that ratio and Sigma2's runs the other way in a mixed basis."""
    f, g = rng.standard_normal((d, n1)), rng.standard_normal((d, n2))
    if condition is not None:
        q = scipy.stats.ortho_group.rvs(d, random_state=3)
        scales = np.logspace(0, -np.log10(condition) / 2, d)
        f = q @ np.diag(scales) @ f
        g = q @ np.diag(scales[::-1]) @ rng.standard_normal((d, d)) / np.sqrt(d) @ g
    f, g = f - f.mean(1, keepdims=True), g - g.mean(1, keepdims=True)
    return f / np.sqrt(n1 - 1), g / np.sqrt(n2 - 1)


CASES = {  # (d, n1, n2, condition)
    "rank-deficient, both": (128, 50, 80, None),
    "rank-deficient, one": (128, 400, 40, None),
    "condition 1e12": (128, 1000, 1000, 1e12),
    "condition 1e12, rank-deficient": (128, 60, 2000, 1e12),
}


@pytest.mark.parametrize("case", CASES)
def test_frechet_distance_matches_a_reference_built_from_sample_factors(case):
    d, n1, n2, condition = CASES[case]
    rng = np.random.default_rng(4)
    f, g = _sample_factors(rng, d, n1, n2, condition)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    got = frechet_distance(mu1, f @ f.T, mu2, g @ g.T)
    assert np.isfinite(got)
    assert got == pytest.approx(_factor_reference(mu1, f, mu2, g), rel=1e-8)  # measured: 4e-15 .. 1.2e-10


def test_frechet_distance_closed_form_with_zero_and_1e12_spread_eigenvalues():
    # Commuting covariances whose spectra span 12 decades and hold exact zeros (both rank-deficient): the closed
    # form is |dmu|^2 + sum (sqrt a - sqrt b)^2. Rounding Q diag(a) Q^T moves a zero eigenvalue by ~1e-16, which
    # moves its sqrt by 1e-8: no method gets closer than a few 1e-9 here (measured 3e-9).
    d = 128
    rng = np.random.default_rng(5)
    q = scipy.stats.ortho_group.rvs(d, random_state=1)
    a, b = np.logspace(0, -12, d), np.logspace(-12, 0, d)[rng.permutation(d)]
    a[::7], b[::5] = 0.0, 0.0
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_equals_pytorch_fid_where_pytorch_fid_is_finite():
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(6)
    # Full rank and well conditioned: pytorch-fid's sqrtm route is exact there too.
    f, g = _sample_factors(rng, 64, 500, 300)
    mu1, mu2 = rng.standard_normal(64), rng.standard_normal(64)
    theirs = calculate_frechet_distance(mu1, f @ f.T, mu2, g @ g.T)
    assert frechet_distance(mu1, f @ f.T, mu2, g @ g.T) == pytest.approx(theirs, rel=1e-10)
    # Elsewhere pytorch-fid adds 1e-6 I when its product is singular, or raises on an imaginary part; where it
    # returns a finite number it is within 1e-8 of the reference, and so are we.
    compared = 0
    for case in CASES.values():
        f, g = _sample_factors(rng, *case[:3], case[3])
        mu1, mu2 = rng.standard_normal(case[0]), rng.standard_normal(case[0])
        ours = frechet_distance(mu1, f @ f.T, mu2, g @ g.T)
        try:
            theirs = calculate_frechet_distance(mu1, f @ f.T, mu2, g @ g.T)
        except ValueError:  # "Imaginary component": pytorch-fid gives no number
            continue
        if np.isfinite(theirs):
            assert ours == pytest.approx(theirs, rel=2e-8)
            compared += 1
    assert compared >= 2  # the cases pytorch-fid answers on this scipy: it may refuse the others


def test_frechet_distance_refuses_statistics_that_are_not_finite():
    sigma = np.eye(3)
    sigma[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        frechet_distance(np.zeros(3), sigma, np.zeros(3), np.eye(3))
