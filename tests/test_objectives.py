"""Predictions, conversions and the training loss, against exact Gaussian-mixture fields."""

import itertools

import pytest
import torch

from sitcli.errors import InputError
from sitcli.transport import GaussianMixture, Transport, get_interpolant
from sitcli.transport import objectives

NAMES = ["linear", "gvp", "vp"]
PREDICTIONS = ["velocity", "score", "noise"]
GM = GaussianMixture([[-1.0, 0.5], [2.0, -1.0], [0.0, 1.5]], [[0.3, 0.6], [0.5, 0.2], [0.4, 0.4]], [0.2, 0.5, 0.3])


def times(n, lo=0.05, hi=0.95):
    return torch.linspace(lo, hi, n, dtype=torch.float64)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("source,target", list(itertools.permutations(PREDICTIONS, 2)))
def test_conversions_round_trip(name, source, target):
    interp = get_interpolant(name)
    x, out, t = torch.randn(9, 2, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64), times(9)
    there = objectives.convert(interp, out, x, t, source, target)
    back = objectives.convert(interp, there, x, t, target, source)
    torch.testing.assert_close(back, out)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("source", PREDICTIONS)
def test_conversions_of_exact_fields_give_exact_fields(name, source):
    interp = get_interpolant(name)
    x, t = torch.randn(40, 2, dtype=torch.float64) * 2, times(40)
    output = GM.model(interp, source)(x, t)
    for target, exact in [
        ("velocity", GM.velocity(interp, x, t)),
        ("score", GM.score(interp, x, t)),
        ("noise", GM.noise(interp, x, t)),
        ("data", GM.data_mean(interp, x, t)),
    ]:
        torch.testing.assert_close(objectives.convert(interp, output, x, t, source, target), exact)


def oracle(target):
    """A 'model' that returns exactly the given tensor, whatever it is asked."""
    return lambda x, t, **_: target


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("loss_weight", [None, "velocity", "likelihood"])
def test_loss_is_zero_for_the_exact_regression_target(name, prediction, loss_weight):
    tr = Transport(name, prediction, loss_weight)
    interp = tr.interpolant
    x1, noise, t = torch.randn(16, 2, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64), times(16)
    tt = t[:, None]
    target = {
        "velocity": interp.d_alpha(tt) * x1 + interp.d_sigma(tt) * noise,
        "noise": noise,
        "score": -noise / interp.sigma(tt),
    }[prediction]
    loss = tr.training_loss(oracle(target), x1, t=t, noise=noise)
    assert loss.shape == (16,)
    torch.testing.assert_close(loss, torch.zeros_like(loss), atol=1e-20, rtol=0)
    wrong = tr.training_loss(oracle(target + 0.1), x1, t=t, noise=noise)
    assert (wrong > 0).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("prediction", ["score", "noise"])
def test_weights_measure_the_error_where_they_say(name, prediction):
    """'velocity' = squared error of the implied velocity; 'likelihood' = eta |s_theta - s|^2."""
    interp = get_interpolant(name)
    x1, noise, t = torch.randn(16, 2, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64), times(16)
    output = torch.randn(16, 2, dtype=torch.float64)
    tt = t[:, None]
    x_t = interp.interpolate(x1, noise, t)
    v_target = interp.d_alpha(tt) * x1 + interp.d_sigma(tt) * noise
    v_model = objectives.predicted_velocity(interp, prediction, output, x_t, t)
    velocity_loss = Transport(name, prediction, "velocity").training_loss(oracle(output), x1, t=t, noise=noise)
    torch.testing.assert_close(velocity_loss, ((v_model - v_target) ** 2).mean(1))

    s_target = -noise / interp.sigma(tt)
    s_model = objectives.predicted_score(interp, prediction, output, x_t, t)
    likelihood_loss = Transport(name, prediction, "likelihood").training_loss(oracle(output), x1, t=t, noise=noise)
    torch.testing.assert_close(likelihood_loss, interp.eta(t) * ((s_model - s_target) ** 2).mean(1))


def test_velocity_model_weights():
    interp, t = get_interpolant("linear"), times(7)
    none = objectives.loss_weight_factor(interp, "velocity", None, t)
    torch.testing.assert_close(none, torch.ones_like(t))
    torch.testing.assert_close(objectives.loss_weight_factor(interp, "velocity", "velocity", t), none)
    torch.testing.assert_close(objectives.loss_weight_factor(interp, "velocity", "likelihood", t), t / (1 - t))
    torch.testing.assert_close(objectives.loss_weight_factor(interp, "noise", "velocity", t), 1 / t**2)
    torch.testing.assert_close(objectives.loss_weight_factor(interp, "noise", "likelihood", t), 1 / (t * (1 - t)))


def test_score_loss_is_denoising_score_matching():
    """With no weight, a score model's loss is |sigma s_theta + eps|^2 (finite at sigma = 0)."""
    tr = Transport("linear", "score", train_eps=1e-3)
    x1, noise, out = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    t = torch.tensor([0.2, 0.5, 0.9, 0.999])
    loss = tr.training_loss(oracle(out), x1, t=t, noise=noise)
    torch.testing.assert_close(loss, (((1 - t)[:, None] * out + noise) ** 2).mean(1))


def test_training_loss_draws_reproducibly_and_checks_shapes():
    tr = Transport()
    model = GM.model("linear", "velocity")
    x1 = GM.sample(32)
    a = tr.training_loss(model, x1, generator=torch.Generator().manual_seed(5))
    b = tr.training_loss(model, x1, generator=torch.Generator().manual_seed(5))
    assert a.shape == (32,) and torch.equal(a, b)
    with pytest.raises(ValueError, match="model output has shape"):
        tr.training_loss(lambda x, t: x[:, :1], x1)


@pytest.mark.parametrize("name,prediction,loss_weight", [("linear", "velocity", None), ("gvp", "score", "velocity"),
                                                         ("vp", "noise", "likelihood")])
def test_regression_loss_is_the_training_loss_without_the_model_call(name, prediction, loss_weight):
    tr = Transport(name, prediction, loss_weight)
    model = GM.model(name, "velocity")  # any callable: the loss need not be small
    x1 = GM.sample(16, generator=torch.Generator().manual_seed(1))
    expected = tr.training_loss(model, x1, generator=torch.Generator().manual_seed(2))
    t, noise = tr.draw_time_and_noise(x1, torch.Generator().manual_seed(2))
    output = model(tr.interpolant.interpolate(x1, noise, t), t)
    assert torch.equal(tr.regression_loss(output, x1, noise, t), expected)
    assert torch.equal(objectives.regression_loss(tr.interpolant, prediction, loss_weight, output, x1, noise, t),
                       expected)
    assert torch.equal(objectives.training_loss(tr.interpolant, prediction, loss_weight, model, x1, noise, t), expected)
    with pytest.raises(ValueError, match="model output has shape"):
        tr.regression_loss(output[:, :1], x1, noise, t)


def test_draw_time_and_noise_draws_time_then_noise():
    tr = Transport("linear", "noise", num_timesteps=50)
    x1 = torch.zeros(8, 3, dtype=torch.float64)
    t, noise = tr.draw_time_and_noise(x1, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    assert torch.equal(t, tr.sample_time(8, dtype=torch.float64, generator=g))
    assert torch.equal(noise, torch.randn(8, 3, dtype=torch.float64, generator=g))
    # A given t is kept and not drawn: the noise then comes first from the generator.
    given = torch.full((8,), 0.5, dtype=torch.float64)
    t2, noise2 = tr.draw_time_and_noise(x1, torch.Generator().manual_seed(3), t=given)
    assert t2 is given and torch.equal(noise2, torch.randn(8, 3, dtype=torch.float64,
                                                          generator=torch.Generator().manual_seed(3)))


def test_unknown_names_are_clear_errors():
    with pytest.raises(InputError, match="choose one of velocity, score, noise"):
        Transport(prediction="epsilon")
    with pytest.raises(InputError, match="choose none, velocity or likelihood"):
        Transport(loss_weight="snr")
