"""Transport: safe time intervals for every combination, eps rules, discrete time."""

import itertools

import pytest
import torch

from sitcli.errors import InputError
from sitcli.transport import DIFFUSION_COEFFICIENTS, GaussianMixture, Transport, sample_ode, sample_sde

COMBOS = list(
    itertools.product(["linear", "gvp", "vp"], ["velocity", "score", "noise"], [None, "velocity", "likelihood"])
)


@pytest.mark.parametrize("interpolant,prediction,loss_weight", COMBOS)
def test_every_combination_has_finite_losses_on_its_interval(interpolant, prediction, loss_weight):
    tr = Transport(interpolant, prediction, loss_weight)
    t0, t1 = tr.train_interval()
    t = torch.tensor([t0, (t0 + t1) / 2, t1], dtype=torch.float64)
    x1, noise = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    loss = tr.training_loss(lambda x, t: torch.ones_like(x), x1, t=t, noise=noise)
    assert torch.isfinite(loss).all(), (tr, t)


def test_default_intervals():
    assert Transport("linear", "velocity").train_interval() == (0.0, 1.0)
    assert Transport("gvp", "velocity").sample_interval() == (0.0, 1.0)
    assert Transport("linear", "noise").train_interval() == (1e-3, 1 - 1e-3)
    assert Transport("vp", "velocity").train_interval() == (0.0, 1 - 1e-5)
    assert Transport("vp", "score").sample_interval() == (0.0, 1 - 1e-3)
    assert Transport("linear", "velocity", "likelihood").train_interval() == (0.0, 1 - 1e-3)
    # SBDM's diffusion is infinite at t = 0 when alpha_0 = 0: the SDE starts off that end.
    assert Transport("linear", "velocity").sample_interval(sde=True, w="SBDM") == (1e-3, 1.0)
    assert Transport("linear", "velocity").sample_interval(sde=True, w="sigma") == (0.0, 1.0)


def test_one_eps_without_the_other_works():
    """The official code crashes when only one of train_eps / sample_eps is given."""
    tr = Transport("linear", "score", train_eps=1e-2)
    assert tr.train_interval() == (1e-2, 1 - 1e-2) and tr.sample_interval() == (1e-3, 1 - 1e-3)
    tr = Transport("linear", "score", sample_eps=1e-2)
    assert tr.train_interval() == (1e-3, 1 - 1e-3) and tr.sample_interval() == (1e-2, 1 - 1e-2)
    assert Transport("linear", "velocity", train_eps=0.01).train_interval() == (0.01, 0.99)


def test_zero_eps_on_a_singular_end_is_refused():
    with pytest.raises(InputError, match="train_eps=0 is not allowed.*singular at t = 0"):
        Transport("linear", "noise", train_eps=0)
    with pytest.raises(InputError, match="train_eps=0 is not allowed.*singular at t = 1"):
        Transport("vp", "velocity", train_eps=0)
    tr = Transport("linear", "velocity", sample_eps=0)
    assert tr.sample_interval() == (0.0, 1.0)
    with pytest.raises(InputError, match="sample_eps=0 is not allowed.*w=SBDM"):
        tr.sample_interval(sde=True, w="SBDM")


def test_discrete_time_draws_and_steps_on_the_grid():
    tr = Transport("linear", "velocity", num_timesteps=11)
    grid = tr.timestep_grid(dtype=torch.float64)
    torch.testing.assert_close(grid, torch.linspace(0, 1, 11, dtype=torch.float64))
    t = tr.sample_time(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.isin(t, grid).all() and len(t.unique()) == 11

    seen = []

    def recording_model(x, t):
        seen.append(t[0].item())
        return torch.zeros_like(x)

    sample_ode(tr, recording_model, torch.zeros(2, 1, dtype=torch.float64), method="heun", steps=5)
    assert all(min(abs(s - g) for g in grid.tolist()) < 1e-12 for s in seen)
    with pytest.raises(InputError, match="do not fit on the 11-point time grid"):
        sample_ode(tr, recording_model, torch.zeros(2, 1), method="euler", steps=20)
    with pytest.raises(InputError, match="steps off the discrete time grid"):
        sample_ode(tr, recording_model, torch.zeros(2, 1), method="dopri5")


def test_discrete_time_sde_on_a_mixture():
    gm = GaussianMixture([[-1.0], [2.0]], [0.3, 0.5])
    tr = Transport("linear", "velocity", num_timesteps=101)
    x, nfe = sample_sde(
        tr,
        gm.model("linear", "velocity"),
        torch.randn(4000, 1, dtype=torch.float64),
        steps=51,
        generator=torch.Generator().manual_seed(0),
    )
    assert nfe == 51 and torch.isfinite(x).all()
    # Both modes are found with about the right mass (the equal-weight mixture).
    assert 0.45 < (x < 0.5).double().mean().item() < 0.55


@pytest.mark.parametrize("w", DIFFUSION_COEFFICIENTS)
def test_sde_intervals_are_valid_for_every_form(w):
    for interpolant, prediction in itertools.product(["linear", "gvp", "vp"], ["velocity", "score", "noise"]):
        t0, t1 = Transport(interpolant, prediction).sample_interval(sde=True, w=w)
        assert 0 <= t0 < t1 <= 1
