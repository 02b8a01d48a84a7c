"""Classifier-free guidance: the formula, channels, interval, and one batched forward."""

import pytest
import torch

from sitcli.errors import InputError
from sitcli.guidance import AutoGuidance, ClassifierFreeGuidance
from sitcli.models import SiT
from sitcli.transport import Transport, sample_ode, sample_sde

NULL = 10


class Recorder:
    """A conditional 'model' whose output for label y is y + x, recording every call."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, y):
        self.batches.append(x.shape[0])
        return x + y.to(x.dtype).reshape(-1, 1, 1, 1)


def test_scales_zero_and_one_are_the_unconditional_and_conditional_models():
    model = Recorder()
    x, t, y = torch.randn(3, 4, 2, 2), torch.full((3,), 0.5), torch.tensor([1, 2, 3])
    torch.testing.assert_close(ClassifierFreeGuidance(model, 1.0, NULL)(x, t, y), x + y.reshape(-1, 1, 1, 1))
    torch.testing.assert_close(ClassifierFreeGuidance(model, 0.0, NULL)(x, t, y), x + NULL)
    guided = ClassifierFreeGuidance(model, 4.0, NULL)(x, t, y)
    torch.testing.assert_close(guided, x + NULL + 4.0 * (y.reshape(-1, 1, 1, 1) - NULL))


def test_one_doubled_forward_per_guided_call():
    model = Recorder()
    ClassifierFreeGuidance(model, 1.5, NULL)(torch.randn(3, 4, 2, 2), torch.full((3,), 0.5), torch.tensor([1, 2, 3]))
    assert model.batches == [6]


def test_first_three_channels_only():
    model = Recorder()
    x, t, y = torch.randn(2, 4, 2, 2), torch.full((2,), 0.5), torch.tensor([1, 2])
    out = ClassifierFreeGuidance(model, 2.0, NULL, channels=3)(x, t, y)
    cond = x + y.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(out[:, 3:], cond[:, 3:])
    torch.testing.assert_close(out[:, :3], (x + NULL + 2.0 * (cond - x - NULL))[:, :3])


def test_guidance_interval():
    model = Recorder()
    guide = ClassifierFreeGuidance(model, 3.0, NULL, interval=(0.2, 0.6))
    x, y = torch.randn(2, 4, 2, 2), torch.tensor([1, 2])
    cond = x + y.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(guide(x, torch.full((2,), 0.9), y), cond)  # outside: conditional,
    assert model.batches == [2]  # and the unconditional pass is skipped
    mixed = guide(x, torch.tensor([0.1, 0.4]), y)  # one row in, one out
    torch.testing.assert_close(mixed[0], cond[0])
    assert not torch.allclose(mixed[1], cond[1])
    with pytest.raises(InputError, match="cfg interval"):
        ClassifierFreeGuidance(model, 3.0, NULL, interval=(0.7, 0.2))
    with pytest.raises(InputError, match="cfg channels"):
        ClassifierFreeGuidance(model, 3.0, NULL, channels="some")


def test_guided_sit_model_samples_and_counts_one_nfe_per_call():
    torch.manual_seed(0)
    model = SiT(
        input_size=4, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=NULL
    ).eval()
    with torch.no_grad():
        model.final_layer.linear.weight.normal_(std=0.1)
        model.final_layer.adaLN_modulation[-1].weight.normal_(std=0.1)
    guided = ClassifierFreeGuidance(model, 1.5, model.num_classes)
    x0 = torch.randn(2, 4, 4, 4)
    x, nfe = sample_ode(Transport(), guided, x0, method="euler", steps=5, model_kwargs={"y": torch.tensor([1, 2])})
    assert nfe == 5 and x.shape == x0.shape and torch.isfinite(x).all()


# ------------------------------------------------------------------ autoguidance


def mixtures():
    from sitcli.transport import GaussianMixture

    strong = GaussianMixture([[-1.5, 0.5], [1.0, -1.0]], [0.3, 0.4])
    weak = GaussianMixture([[-1.5, 0.5], [1.0, -1.0]], [0.6, 0.8])  # the same modes, blurrier
    return strong, weak


@pytest.mark.parametrize("interpolant,prediction", [("linear", "velocity"), ("gvp", "score"), ("vp", "noise")])
def test_autoguidance_of_exact_fields_is_the_formula_on_the_denoiser(interpolant, prediction):
    strong, weak = mixtures()
    tr = Transport(interpolant, prediction)
    guided = AutoGuidance(strong.model(interpolant, prediction), weak.model(interpolant, prediction), 2.5)
    x, t = torch.randn(6, 2, dtype=torch.float64), torch.full((6,), 0.4, dtype=torch.float64)
    out = guided(x, t)
    # D = D_weak + w (D_strong - D_weak) on the exact posterior means, and the same on velocities.
    d_strong, d_weak = strong.data_mean(interpolant, x, t), weak.data_mean(interpolant, x, t)
    torch.testing.assert_close(tr.data(out, x, t), d_weak + 2.5 * (d_strong - d_weak))
    v_strong, v_weak = strong.velocity(interpolant, x, t), weak.velocity(interpolant, x, t)
    torch.testing.assert_close(tr.velocity(out, x, t), v_weak + 2.5 * (v_strong - v_weak))


def test_autoguided_sampling_counts_two_networks_and_keeps_the_interval():
    strong, weak = mixtures()
    tr = Transport("linear", "velocity")
    guided = AutoGuidance(
        strong.model("linear", "velocity"), weak.model("linear", "velocity"), 2.0, interval=(0.5, 1.0)
    )
    x0 = torch.randn(5, 2, dtype=torch.float64)
    x, nfe = sample_ode(tr, guided, x0, "euler", 10)
    assert nfe == 5 * 1 + 5 * 2  # 5 steps at t < 0.5 run the model alone, 5 run both

    def formula(x, t, **_):
        out = strong.velocity("linear", x, t)
        if float(t[0]) >= 0.5:
            weak_v = weak.velocity("linear", x, t)
            out = weak_v + 2.0 * (out - weak_v)
        return out

    expected, _ = sample_ode(tr, formula, x0, "euler", 10)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-14)
    with pytest.raises(InputError, match="guidance interval"):
        AutoGuidance(formula, formula, 2.0, interval=(0.5, 0.2))


@pytest.mark.parametrize("sampler", ["ode", "sde"])
def test_a_guide_equal_to_the_model_is_unguided_sampling(sampler):
    strong, _ = mixtures()
    tr, model = Transport("gvp", "velocity"), strong.model("gvp", "velocity")
    x0 = torch.randn(4, 2, dtype=torch.float64)
    run = (
        (lambda m, g: sample_ode(tr, m, x0, "heun", 6))
        if sampler == "ode"
        else (lambda m, g: sample_sde(tr, m, x0, "euler", 6, generator=g))
    )
    guided, nfe_guided = run(AutoGuidance(model, model, 3.0), torch.Generator().manual_seed(1))
    plain, nfe = run(model, torch.Generator().manual_seed(1))
    assert torch.equal(guided, plain) and nfe_guided == 2 * nfe
