"""Other papers' time axes: exact for the linear path, round trips for every interpolant, intervals, and
REPA's guidance interval against a transcription of REPA's own SDE sampler."""

import math

import pytest
import torch

from sitcli.errors import InputError
from sitcli.guidance import ClassifierFreeGuidance
from sitcli.transport import GVP, VP, Linear, Transport, sample_sde
from sitcli.transport.ddpm import DDPMInterpolant, time_from_timestep
from sitcli.transport.mixture import GaussianMixture
from sitcli.transport.time_conventions import CONVENTIONS, from_time, interval_in_time, noise_to_signal, to_time

F64 = torch.float64
INTERPOLANTS = [Linear(), GVP(), VP(), DDPMInterpolant()]


def test_linear_path_in_closed_form():
    t = torch.linspace(0.01, 0.99, 50, dtype=F64)
    torch.testing.assert_close(from_time(Linear(), t, "repa"), 1 - t, rtol=0, atol=1e-15)
    torch.testing.assert_close(from_time(Linear(), t, "sigma"), (1 - t) / t, rtol=1e-15, atol=0)
    torch.testing.assert_close(from_time(Linear(), t, "logsnr"), 2 * torch.log(t / (1 - t)), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(to_time(Linear(), 1 - t, "repa"), t, rtol=0, atol=1e-15)
    torch.testing.assert_close(to_time(Linear(), (1 - t) / t, "sigma"), t, rtol=0, atol=1e-15)


@pytest.mark.parametrize("interpolant", INTERPOLANTS, ids=lambda i: i.name)
def test_repa_time_is_the_models_time_reversed_on_every_path(interpolant):
    # REPA's s = 1 - t whatever the path (samplers.py of sihyun-yu/REPA), not a function of the noise level.
    t = torch.linspace(0.0, 1.0, 41, dtype=F64)
    assert torch.equal(from_time(interpolant, t, "repa"), 1 - t)
    assert torch.equal(to_time(interpolant, 1 - t, "repa"), 1 - (1 - t))


def test_gvp_sigma_is_the_noise_to_signal_ratio():
    # GVP: alpha = sin(pi t / 2), sigma = cos(pi t / 2), so EDM's sigma is r = cot(pi t / 2).
    t = torch.linspace(0.05, 0.95, 19, dtype=F64)
    r = 1 / torch.tan(math.pi * t / 2)
    torch.testing.assert_close(from_time(GVP(), t, "sigma"), r, rtol=1e-14, atol=0)
    torch.testing.assert_close(to_time(GVP(), r, "sigma"), t, rtol=0, atol=1e-15)


@pytest.mark.slow  # importing diffusers takes ~3 s
def test_ddpm_sigma_and_logsnr_match_diffusers_schedules():
    # diffusers' Karras-style schedulers step sigma = sqrt((1 - abar) / abar) and compute_snr gives abar / (1 - abar),
    # both from DDPM's discrete alphas_cumprod, in float32 there: 1 - abar cancels to ~1e-4 relative near n = 0.
    from diffusers import DDPMScheduler, EulerDiscreteScheduler
    from diffusers.training_utils import compute_snr

    kwargs = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000)
    n = torch.tensor([0, 1, 10, 250, 500, 750, 999])
    t = time_from_timestep(n.to(F64))
    sigmas = EulerDiscreteScheduler(**kwargs).sigmas.flip(0)[1:].to(F64)  # increasing in n, as timesteps 0..999
    torch.testing.assert_close(from_time(DDPMInterpolant(), t, "sigma"), sigmas[n], rtol=2e-4, atol=0)
    snr = compute_snr(DDPMScheduler(**kwargs), n).to(F64)
    torch.testing.assert_close(from_time(DDPMInterpolant(), t, "logsnr"), torch.log(snr), rtol=0, atol=4e-4)
    torch.testing.assert_close(to_time(DDPMInterpolant(), sigmas[n], "sigma"), t, rtol=0, atol=1e-4)


@pytest.mark.parametrize("interpolant", INTERPOLANTS, ids=lambda i: i.name)
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_round_trips(interpolant, convention):
    t = torch.linspace(0.02, 0.98, 49, dtype=F64)
    # DDPM's alpha comes from a difference of lgammas near 1e3 (round-off ~1e-13 in log alpha): 1e-9 there.
    atol = 1e-9 if interpolant.name == "ddpm" else 1e-12
    back = to_time(interpolant, from_time(interpolant, t, convention), convention)
    torch.testing.assert_close(back, t, rtol=0, atol=atol)
    values = from_time(interpolant, t, convention)
    again = from_time(interpolant, to_time(interpolant, values, convention), convention)
    torch.testing.assert_close(again, values, rtol=1e3 * atol, atol=atol)


@pytest.mark.parametrize("interpolant", INTERPOLANTS, ids=lambda i: i.name)
def test_intervals_map_to_sorted_times_and_clamp_at_the_ends(interpolant):
    lo, hi = interval_in_time(interpolant, 0.0, 0.7, "repa")  # REPA's --guidance-high 0.7
    assert 0 <= lo < hi == 1.0
    assert float(from_time(interpolant, torch.tensor(lo, dtype=F64), "repa")) == pytest.approx(0.7, abs=1e-10)
    lo, hi = interval_in_time(interpolant, -math.inf, 0.0, "logsnr")
    assert lo == 0.0 and float(noise_to_signal(interpolant, torch.tensor(hi, dtype=F64))) == pytest.approx(1.0)
    assert interval_in_time(interpolant, 0.0, math.inf, "sigma") == (0.0, 1.0)
    assert interval_in_time(interpolant, 0.2, 0.6, "t") == (0.2, 0.6)
    # REPA's --guidance-high 0.7 is t >= 0.3 on every path (GVP is REPA's cosine path: not 0.2578).
    assert interval_in_time(interpolant, 0.0, 0.7, "repa") == (pytest.approx(0.3, abs=1e-15), 1.0)
    # LightningDiT's cfg_interval_start 0.125 is in sit's own time (its path.py: alpha = t, sigma = 1 - t).
    assert interval_in_time(interpolant, 0.125, 1.0, "t") == (0.125, 1.0)


def test_bad_intervals_and_conventions_are_refused():
    with pytest.raises(InputError, match="cfg interval \\(0.7, 0.2\\) in t is invalid"):
        interval_in_time(Linear(), 0.7, 0.2, "t")
    with pytest.raises(InputError, match="in sigma is invalid"):
        interval_in_time(Linear(), -1.0, 2.0, "sigma")
    with pytest.raises(InputError, match="unknown time convention 'edm'"):
        to_time(Linear(), 1.0, "edm")


# ----------------------------------------------------------------------------- REPA's sampler, transcribed


def _conditional_mixture():
    """Two classes, one Gaussian each, in 2-D: the exact velocity of each class and of their mixture."""
    means, stds = torch.tensor([[1.5, -0.5], [-1.0, 1.0]], dtype=F64), torch.tensor([0.3, 0.5], dtype=F64)
    classes = [GaussianMixture(means[k : k + 1], stds[k : k + 1]) for k in range(2)]
    return classes, GaussianMixture(means, stds)


def _sit_velocity_model(interpolant):
    classes, both = _conditional_mixture()

    def model(x, t, y):
        out = both.velocity(interpolant, x, t)  # the null class (2): the unconditional field
        for k, mixture in enumerate(classes):
            out = torch.where((y == k)[:, None], mixture.velocity(interpolant, x, t), out)
        return out

    return model


def _repa_euler_maruyama(u, x, y, cfg_scale, guidance_high, generator, num_steps=250):
    """REPA's ``euler_maruyama_sampler`` (samplers.py lines 105-183 of sihyun-yu/REPA) for its cosine path, in
    REPA's time s (1 = noise): num_steps - 1 Euler-Maruyama steps on linspace(1, 0.04), diffusion 2 s, guidance
    where s <= guidance_high, then the drift step from 0.04 to 0 without noise. ``u`` is REPA's network."""

    def score(v, x, s):  # get_score_from_velocity, path_type "cosine"
        alpha, sigma = torch.cos(s * math.pi / 2), torch.sin(s * math.pi / 2)
        d_alpha, d_sigma = -math.pi / 2 * torch.sin(s * math.pi / 2), math.pi / 2 * torch.cos(s * math.pi / 2)
        ratio = alpha / d_alpha
        return (ratio * v - x) / (sigma**2 - ratio * d_sigma * sigma)

    def drift(x, s):
        def d(labels):
            v = u(x, s, labels)
            return v - 0.5 * (2 * s) * score(v, x, s)

        if cfg_scale > 1 and 0 <= s <= guidance_high:
            cond, uncond = d(y), d(torch.full_like(y, 2))
            return uncond + cfg_scale * (cond - uncond)
        return d(y)

    steps = torch.cat([torch.linspace(1.0, 0.04, num_steps, dtype=F64), torch.zeros(1, dtype=F64)])
    for s, s_next in zip(steps[:-2], steps[1:-1]):
        dt = s_next - s
        eps = torch.randn(x.shape, generator=generator, dtype=F64)
        x = x + drift(x, s) * dt + torch.sqrt(2 * s) * eps * torch.sqrt(dt.abs())
    return x + (steps[-1] - steps[-2]) * drift(x, steps[-2])


def test_repa_guidance_interval_reproduces_repas_sde_on_the_cosine_path():
    # REPA's --mode sde --cfg-scale 1.8 --guidance-high 0.7 on a cosine-path model, against sit's SDE with
    # w = linear (REPA's diffusion 2 s is w = s = 1 - t), the mean last step of 0.04, and the interval in repa.
    gvp = GVP()
    v_sit = _sit_velocity_model(gvp)
    def u(x, s, y):
        return -v_sit(x, (1 - s).expand(len(x)), y)  # REPA's network: d x / ds, time reversed
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    y = torch.arange(16) % 2
    want = _repa_euler_maruyama(u, x0, y, 1.8, 0.7, torch.Generator().manual_seed(2))

    def sit(interval):
        guided = ClassifierFreeGuidance(v_sit, 1.8, null_class=2, interval=interval)
        x, nfe = sample_sde(Transport(gvp, "velocity"), guided, x0, "euler", 250, w="linear", last_step="mean",
                            last_step_size=0.04, generator=torch.Generator().manual_seed(2), model_kwargs={"y": y})
        assert nfe == 250
        return x

    got = sit(interval_in_time(gvp, 0.0, 0.7, "repa"))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
    # The former mapping (REPA's time as r / (1 + r)) guided from t = 0.2578: visibly different samples.
    before = sit(((2 / math.pi) * math.atan(3 / 7), 1.0))
    assert (before - want).abs().max() > 1e-3
