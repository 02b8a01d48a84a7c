"""Other papers' time axes: exact for the linear path, round trips for every interpolant, intervals."""

import math

import pytest
import torch

from sitcli.errors import InputError
from sitcli.transport import GVP, VP, Linear
from sitcli.transport.ddpm import DDPMInterpolant
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


def test_gvp_repa_time_is_the_same_noise_level():
    # GVP: alpha = sin(pi t / 2), sigma = cos(pi t / 2), so r = cot(pi t / 2); REPA's tau = r / (1 + r).
    t = torch.linspace(0.05, 0.95, 19, dtype=F64)
    r = 1 / torch.tan(math.pi * t / 2)
    torch.testing.assert_close(from_time(GVP(), t, "repa"), r / (1 + r))
    torch.testing.assert_close(to_time(GVP(), r, "sigma"), t, rtol=0, atol=1e-15)


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
    if interpolant.name == "linear":
        assert interval_in_time(interpolant, 0.0, 0.7, "repa")[0] == pytest.approx(0.3, abs=1e-15)


def test_bad_intervals_and_conventions_are_refused():
    with pytest.raises(InputError, match="cfg interval \\(0.7, 0.2\\) in t is invalid"):
        interval_in_time(Linear(), 0.7, 0.2, "t")
    with pytest.raises(InputError, match="in sigma is invalid"):
        interval_in_time(Linear(), -1.0, 2.0, "sigma")
    with pytest.raises(InputError, match="unknown time convention 'edm'"):
        to_time(Linear(), 1.0, "edm")
