"""sitcli/training/posthoc_ema.py: EDM2's power-function EMA and its post-hoc reconstruction, against closed
forms, a brute-force least squares, and an EMA tracked directly on a synthetic weight trajectory."""

import numpy as np
import pytest
import scipy.integrate
import torch

from sitcli.errors import InputError
from sitcli.training.posthoc_ema import (
    PowerFunctionEMA,
    Snapshot,
    combine_snapshots,
    discrete_weights,
    gamma_to_sigma_rel,
    profile_error,
    profile_inner_product,
    reconstruction_plan,
    sigma_rel_to_gamma,
    solve_posthoc_coefficients,
)

T, K = 1000, 50  # training steps of the synthetic run, and snapshot interval


def test_gamma_and_sigma_rel_are_edm2s_pair():
    # EDM2 (section 3.1): sigma_rel 0.05 and 0.10 are exponents 16.97 and 6.94.
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=5e-3)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=5e-3)
    for sigma_rel in (0.01, 0.075, 0.2, 0.28):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(sigma_rel)) == pytest.approx(sigma_rel, rel=1e-12)
    for bad in (0.0, -0.1, 0.29, 1.0):
        with pytest.raises(InputError, match="--sigma-rel"):
            sigma_rel_to_gamma(bad)


def test_the_tracker_weights_are_the_power_function_profile_exactly():
    # theta_k = e_k (one-hot over the steps) makes the average the weight vector itself; it must be
    # w_k = (k/T)^(gamma+1) - ((k-1)/T)^(gamma+1), whose sum is 1 and whose width is sigma_rel.
    steps = 300
    eye = torch.eye(steps, dtype=torch.float64)
    params = {"w": torch.zeros(steps, dtype=torch.float64)}
    tracker = PowerFunctionEMA(params, (0.05, 0.10))
    for k in range(1, steps + 1):
        params["w"].copy_(eye[k - 1])
        tracker.update(params, k)
    for sigma_rel, gamma, average in zip(tracker.sigma_rels, tracker.gammas, tracker.averages):
        w = discrete_weights(gamma, steps)
        np.testing.assert_allclose(average["w"].numpy(), w, rtol=1e-11, atol=1e-16)
        k = np.arange(1, steps + 1)
        mean = (w * k).sum()
        assert np.sqrt((w * (k - mean) ** 2).sum()) / steps == pytest.approx(sigma_rel, rel=0.02)  # a discrete profile


def test_inner_products_are_the_integrals_of_the_profiles():
    def profile(t, gamma):
        return lambda tau: (gamma + 1) * tau**gamma / t ** (gamma + 1) if tau <= t else 0.0

    for t_a, s_a, t_b, s_b in ((300, 0.05, 1000, 0.10), (1000, 0.05, 300, 0.10), (700, 0.075, 700, 0.075)):
        g_a, g_b = sigma_rel_to_gamma(s_a), sigma_rel_to_gamma(s_b)
        fa, fb = profile(t_a, g_a), profile(t_b, g_b)
        want = scipy.integrate.quad(lambda x: fa(x) * fb(x), 0, min(t_a, t_b), epsrel=1e-12, limit=200)[0]
        assert float(profile_inner_product(t_a, g_a, t_b, g_b)) == pytest.approx(want, rel=1e-9)


def test_coefficients_equal_a_brute_force_least_squares_of_sampled_profiles():
    steps, sigma_rels = [100, 200, 300, 400] * 2, [0.05] * 4 + [0.10] * 4
    x = solve_posthoc_coefficients(steps, sigma_rels, 400, 0.075)
    n = 400_000  # midpoints of (0, 400]: the L2 norm as a sum, the fit by numpy's lstsq
    tau, h = (np.arange(n) + 0.5) * 400 / n, 400 / n

    def sampled(t, sigma_rel):
        gamma = sigma_rel_to_gamma(sigma_rel)
        return np.where(tau <= t, (gamma + 1) * tau**gamma / t ** (gamma + 1), 0.0) * np.sqrt(h)

    columns = np.stack([sampled(t, s) for t, s in zip(steps, sigma_rels)], axis=1)
    brute = np.linalg.lstsq(columns, sampled(400, 0.075), rcond=None)[0]
    np.testing.assert_allclose(x, brute / brute.sum(), rtol=0, atol=1e-8)  # measured 6e-11
    assert x.sum() == pytest.approx(1.0, abs=1e-14)


def _random_walk_run(sigma_rels, every=K, steps=T, dim=64):
    """A synthetic weight trajectory (a 64-d Gaussian random walk, float32 like weights) through a tracker,
    with the snapshots saved every ``every`` steps."""
    walk = torch.from_numpy(np.cumsum(np.random.default_rng(0).standard_normal((steps, dim)), axis=0)).float()
    params = {"w": torch.zeros(dim), "b": torch.zeros(2, 3)}
    tracker, saved = PowerFunctionEMA(params, sigma_rels), {}
    for k in range(1, steps + 1):
        params["w"].copy_(walk[k - 1])
        params["b"].fill_(float(k))
        tracker.update(params, k)
        if k % every == 0:
            saved.update({snapshot: weights for snapshot, weights in tracker.snapshots()})
    return tracker, saved


def test_reconstructed_0_075_matches_the_ema_tracked_directly():
    # Snapshots of sigma_rel 0.05 and 0.10 every 50 of 1000 steps (40 snapshots) rebuild sigma_rel 0.075.
    tracker, saved = _random_walk_run((0.05, 0.10))
    plan = reconstruction_plan(list(saved), 0.075)
    rebuilt = combine_snapshots((x, saved[snapshot]) for x, snapshot in plan)
    direct, _ = _random_walk_run((0.075,))
    want = direct.averages[0]
    spread = (tracker.averages[0]["w"] - tracker.averages[1]["w"]).norm()  # the two inputs' distance
    error = (rebuilt["w"] - want["w"]).norm()
    assert error < 1e-3 * spread  # measured 4.2e-4 of it (5.2e-5 of |EMA|)
    assert error < 1e-4 * want["w"].norm()
    # The averaging profiles themselves: 0.23% apart in L2 (0.22% of the weight misplaced), for any trajectory.
    x, used = np.array([c for c, _ in plan]), [s for _, s in plan]
    steps, widths = [s.step for s in used], [s.sigma_rel for s in used]
    assert profile_error(steps, widths, T, 0.075, x) < 3e-3
    mixed = sum(c * np.pad(discrete_weights(sigma_rel_to_gamma(s.sigma_rel), s.step), (0, T - s.step))
                for c, s in plan)
    assert np.abs(mixed - discrete_weights(sigma_rel_to_gamma(0.075), T)).sum() < 3e-3
    # A constant-in-time reading (b = k at step k) checks the combination of a second tensor: the profile's mean.
    torch.testing.assert_close(rebuilt["b"], want["b"], rtol=1e-3, atol=0)
    assert rebuilt["w"].dtype == torch.float32


def test_denser_snapshots_reconstruct_better():
    errors = []
    for every in (250, 100, 50, 25):
        steps = [k for k in range(every, T + 1, every) for _ in (0, 1)]
        widths = [0.05, 0.10] * (T // every)
        x = solve_posthoc_coefficients(steps, widths, T, 0.075)
        errors.append(profile_error(steps, widths, T, 0.075, x))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3 < errors[0]  # 3.5e-2 .. 5.7e-4


def test_a_resumed_tracker_continues_bit_for_bit():
    walk = torch.randn(400, 16, generator=torch.Generator().manual_seed(3))
    params = {"w": torch.zeros(16)}
    straight = PowerFunctionEMA(params)
    first = PowerFunctionEMA(params)
    for k in range(1, 401):
        params["w"].copy_(walk[k - 1])
        straight.update(params, k)
        if k <= 150:
            first.update(params, k)
    saved = first.state_dict()
    saved = {**saved, "averages": [{n: t.clone() for n, t in avg.items()} for avg in saved["averages"]]}
    resumed = PowerFunctionEMA({"w": torch.full((16,), 7.0)})  # built from other weights: all comes from the state
    resumed.load_state_dict(saved)
    for k in range(151, 401):
        params["w"].copy_(walk[k - 1])
        resumed.update(params, k)
    assert resumed.step == straight.step == 400
    for a, b in zip(resumed.averages, straight.averages):
        assert torch.equal(a["w"], b["w"])


def test_refusals():
    params = {"w": torch.zeros(3)}
    tracker = PowerFunctionEMA(params)
    with pytest.raises(ValueError, match="step 2 does not follow it"):
        tracker.update(params, 2)
    with pytest.raises(InputError, match="tracks widths"):
        PowerFunctionEMA(params, (0.05,)).load_state_dict(tracker.state_dict())
    with pytest.raises(ValueError, match="only floating tensors"):
        PowerFunctionEMA({"n": torch.zeros(3, dtype=torch.long)})
    with pytest.raises(InputError, match="same step and width"):
        solve_posthoc_coefficients([10, 10], [0.05, 0.05], 10, 0.07)
    with pytest.raises(InputError, match="no snapshot at step 15"):
        reconstruction_plan([Snapshot(10, 0.05), Snapshot(20, 0.05)], 0.07, step=15)
    with pytest.raises(InputError, match="different tensors"):
        combine_snapshots([(0.5, {"w": torch.zeros(2)}), (0.5, {"v": torch.zeros(2)})])


def test_reconstruction_at_an_earlier_step_leaves_later_snapshots_out():
    snapshots = [Snapshot(k, s) for k in (100, 200, 300) for s in (0.05, 0.10)]
    plan = reconstruction_plan(snapshots, 0.08, step=200)
    assert {s.step for _, s in plan} == {100, 200} and sum(c for c, _ in plan) == pytest.approx(1.0)
