"""transport/fewstep.py and training/fewstep_losses.py: Decoupled MeanFlow, improved MeanFlow, AlphaFlow.

Exact answers where they exist: at r = t every objective is the flow-matching loss (bit for bit: the
correction (r - t) du/dt is an exact 0 there and every other operation is the regression loss's own,
in the same order); the JVP against float64 central differences; the iMF velocity V and the AlphaFlow
target against a Gaussian's closed-form flow map (sit's time: t = 0 noise).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math

import pytest
import torch

from sitcli.models import SiT
from sitcli.training.init_from import init_from_flow
from sitcli.training.fewstep_losses import AlphaFlowLoss, DecoupledMeanFlowLoss, ImprovedMeanFlowLoss
from sitcli.training.losses import RegressionLoss, StepBatch, step_losses
from sitcli.transport import GaussianMixture, Transport, fewstep, meanflow

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
ARCH = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=4, num_heads=2, num_classes=5)


def random_sit(seed: int = 0, dtype=torch.float32, **form) -> SiT:
    """A SiT with every trainable tensor random (adaLN-Zero would make it output 0), in eval mode."""
    torch.manual_seed(seed)
    model = SiT(**ARCH, **form)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.2)
    return model.to(dtype).eval()


def batch_for(model, transport, term, seed: int = 0, n: int = 6, labels: bool = True, dtype=torch.float32):
    """A StepBatch as ``step_losses`` builds it: the term's own draws, then the model's output with gradients."""
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, 4, 8, 8, generator=g, dtype=dtype)
    y = torch.tensor([0, 3, 5, 1, 5, 2])[:n] if labels else None
    drawn = term.inputs(transport, x1, y, g)
    x_t = transport.interpolant.interpolate(x1, drawn.noise, drawn.t)
    output = model(x_t, drawn.t, y=drawn.y, **drawn.model_kwargs)
    return StepBatch(x1, drawn.noise, drawn.t, x_t, drawn.y, output, r=drawn.r, model_kwargs=drawn.model_kwargs)


def regression(transport, batch, output):
    return RegressionLoss(transport)(StepBatch(batch.x1, batch.noise, batch.t, batch.x_t, batch.y, output))


# ----------------------------------------------------------------------------------------- r = t


def test_at_r_equal_t_the_dmf_loss_is_the_flow_matching_loss_bit_for_bit():
    tr = Transport("linear")
    model = init_from_flow(SiT(**ARCH, dmf_depth=2), random_sit().state_dict()).eval()
    term = DecoupledMeanFlowLoss(model, tr, share=0.0, p=0.0)
    batch = batch_for(model, tr, term)
    assert torch.equal(batch.r, batch.t)
    assert torch.equal(term(batch), regression(tr, batch, batch.output))


@pytest.mark.parametrize("head", [0, 2])
def test_at_r_equal_t_the_imf_loss_is_the_flow_matching_loss_of_each_head_bit_for_bit(head):
    tr = Transport("linear")
    model = random_sit(mean_flow=True, velocity_head_depth=head)
    term = ImprovedMeanFlowLoss(model, tr, share=0.0, p=0.0)
    batch = batch_for(model, tr, term)
    want = regression(tr, batch, batch.output[:, :4])
    if head:
        want = want + regression(tr, batch, batch.output[:, 4:])
    assert torch.equal(term(batch), want)


def test_at_r_equal_t_the_adaptive_weight_is_that_of_the_flow_matching_error():
    tr = Transport("linear")
    model = random_sit(dmf_depth=1)
    for term in (DecoupledMeanFlowLoss(model, tr, share=0.0, p=1.0, c=0.01),
                 ImprovedMeanFlowLoss(model, tr, share=0.0, p=1.0, c=0.01)):
        batch = batch_for(model, tr, term)
        error = batch.output - tr.interpolant.conditional_velocity(batch.x1, batch.noise, batch.t)
        want = meanflow.adaptive_weight(error, 1.0, 0.01) * regression(tr, batch, batch.output)
        assert torch.equal(term(batch), want)


# ----------------------------------------------------------------------------------------- JVP


class FlowMapMLP(torch.nn.Module):
    """A float64 network u(x, t, r | y, omega) on 3-D points with SiT's keywords and a velocity head: every
    operation in float64 (SiT embeds time in float32), so central differences can check its JVP tightly."""

    num_classes, omega_input, velocity_head_depth = 5, True, 1

    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Sequential(torch.nn.Linear(3 + 8, 64), torch.nn.Tanh()).double()
        self.u_head = torch.nn.Sequential(torch.nn.Linear(64 + 1, 64), torch.nn.Tanh(), torch.nn.Linear(64, 3)).double()
        self.v_head = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 3)).double()
        self.labels = torch.nn.Embedding(6, 4).double()

    def forward(self, x, t, y=None, r=None, drop_labels=True, omega=None, with_velocity=False):
        y = torch.full((x.shape[0],), 5) if y is None else y
        omega = torch.ones_like(t) if omega is None else torch.as_tensor(omega, dtype=x.dtype).expand(x.shape[0])
        h = self.trunk(torch.cat([x, torch.sin(3 * t)[:, None], t[:, None] ** 2, (1 - 1 / omega)[:, None],
                                  t[:, None] * 0 + 1, self.labels(y)], 1))
        u = self.u_head(torch.cat([h, (t if r is None else r)[:, None]], 1))
        return torch.cat([u, self.v_head(h)], 1) if with_velocity else u


def central_difference(u, z, t, r, v, h):
    """du/dt along (v, 1, 0) by Richardson-extrapolated central differences (error O(h^4))."""
    def d(step):
        return (u(z + step * v, t + step, r) - u(z - step * v, t - step, r)) / (2 * step)

    return (4 * d(h / 2) - d(h)) / 3


def mlp_batch(model, transport, term, seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, 3, generator=g, dtype=F64)
    drawn = term.inputs(transport, x1, torch.tensor([0, 3, 5, 1, 5, 2])[:n], g)
    x_t = transport.interpolant.interpolate(x1, drawn.noise, drawn.t)
    output = model(x_t, drawn.t, y=drawn.y, **drawn.model_kwargs)
    return StepBatch(x1, drawn.noise, drawn.t, x_t, drawn.y, output, r=drawn.r, model_kwargs=drawn.model_kwargs)


def test_the_dmf_target_is_v_plus_r_minus_t_times_the_float64_central_difference():
    tr, model = Transport("linear"), FlowMapMLP()
    term = DecoupledMeanFlowLoss(model, tr, share=1.0)
    batch = mlp_batch(model, tr, term)
    assert torch.all(batch.r > batch.t)
    v = tr.interpolant.conditional_velocity(batch.x1, batch.noise, batch.t)

    def u(z, tt, rr):
        return model(z, tt, y=batch.y, r=rr)

    want = v + (batch.r - batch.t)[:, None] * central_difference(u, batch.x_t, batch.t, batch.r, v, 1e-3)
    # the term computes in float32 (as under bf16 autocast): to float32 round-off
    assert (term.target(batch) - want).abs().max() < 1e-6 * want.abs().max()


def test_the_imf_jvp_runs_along_the_models_own_velocity_and_matches_float64_central_differences():
    tr, model = Transport("linear"), FlowMapMLP()
    term = ImprovedMeanFlowLoss(model, tr, share=1.0, omega_max=8.0)
    batch = mlp_batch(model, tr, term)
    omega = batch.model_kwargs["omega"]
    assert torch.all(omega >= 1) and torch.all(omega <= 8) and omega.unique().numel() == 6
    with torch.no_grad():
        own = model(batch.x_t, batch.t, y=batch.y, omega=omega, with_velocity=True)[:, 3:]

    def u(z, tt, rr):
        return model(z, tt, y=batch.y, r=rr, omega=omega)

    fd = central_difference(u, batch.x_t, batch.t, batch.r, own, 1e-3)
    _, du_dt = term.targets(batch)
    assert (du_dt - fd).abs().max() < 1e-6 * fd.abs().max()
    # ... and not along the conditional velocity (MeanFlow's tangent): the choice shows
    v = tr.interpolant.conditional_velocity(batch.x1, batch.noise, batch.t)
    assert (du_dt - central_difference(u, batch.x_t, batch.t, batch.r, v, 1e-3)).abs().max() > 1e-2


@pytest.mark.parametrize("form", [dict(dmf_depth=2), dict(mean_flow=True, omega_input=True)], ids=["dmf", "imf"])
def test_the_jvp_through_a_float64_sit_matches_central_differences(form):
    """Through SiT itself; its sinusoidal time features are computed in float32 by design (a float64 t is
    rounded first), which bounds central differences to ~1e-7 / h relative: 1e-4 at h = 4e-3."""
    model = random_sit(dtype=F64, **form)
    g = torch.Generator().manual_seed(0)
    z, v = torch.randn(2, 5, 4, 8, 8, generator=g, dtype=F64)
    t = torch.rand(5, generator=g, dtype=F64) * 0.5
    r = t + 0.4
    kwargs = {"omega": torch.linspace(1, 6, 5)} if form.get("omega_input") else {}

    def u(zz, tt, rr):
        return model(zz, tt, y=torch.tensor([0, 1, 2, 5, 4]), r=rr, **kwargs)

    _, du_dt = meanflow.total_derivative(u, z, t, r, v)
    fd = central_difference(u, z, t, r, v, 4e-3)
    assert (du_dt - fd).abs().max() < 1e-4 * fd.abs().max()


# ----------------------------------------------------------------------------------------- stop-gradient


def surrogate_gradients(model, loss):
    model.zero_grad()
    loss.sum().backward(retain_graph=True)
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("objective", ["dmf", "imf", "alphaflow-mid", "alphaflow-jvp"])
def test_gradients_reach_the_model_only_through_its_prediction(objective):
    """Each loss's gradient equals that of sg(w) |prediction - target|^2 with the target computed first
    and detached: nothing flows through the JVP, the guidance evaluations, the next jump or the weight."""
    tr = Transport("linear")
    model = random_sit(dmf_depth=2, omega_input=objective == "imf", velocity_head_depth=2 * (objective == "imf"))
    model.train()
    term = {"dmf": lambda: DecoupledMeanFlowLoss(model, tr, share=0.7, omega=2.0),
            "imf": lambda: ImprovedMeanFlowLoss(model, tr, share=0.7, omega_max=4.0),
            "alphaflow-mid": lambda: AlphaFlowLoss(model, tr, share=0.7, omega=2.0),
            "alphaflow-jvp": lambda: AlphaFlowLoss(model, tr, share=0.7, omega=2.0)}[objective]()
    if objective.startswith("alphaflow"):
        term.at_step(50 if objective == "alphaflow-mid" else 100, 100)
        assert (0 < term.alpha < 1) if objective == "alphaflow-mid" else term.alpha == 0
    batch = batch_for(model, tr, term)
    got = surrogate_gradients(model, term(batch))
    out = batch.output.float()
    if objective == "imf":
        v_g, du_dt = term.targets(batch)
        assert not v_g.requires_grad and not du_dt.requires_grad
        compound = out[:, :4] - (batch.r - batch.t).reshape(-1, 1, 1, 1) * du_dt
        losses = [compound - v_g, out[:, 4:] - v_g]
        weight = [1.0, 1.0]
    else:
        target, weight = (term.target(batch), 1.0) if objective == "dmf" else term.targets(batch)
        assert not target.requires_grad
        losses, weight = [out - target], [weight]
    loss = sum(w * meanflow.adaptive_weight(e, term.p, term.c) * e.pow(2).flatten(1).mean(1)
               for w, e in zip(weight, losses))
    want = surrogate_gradients(model, loss)
    assert len(got) == len(want) and all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(got, want))


# ----------------------------------------------------------------------------------------- the math


def gaussian_u(mu, s):
    """Closed-form average velocity of N(mu, s^2 I) under the linear interpolant: the flow map is affine,
    z_r = r mu + sd_r / sd_t (z_t - t mu), sd_t^2 = t^2 s^2 + (1 - t)^2."""
    def sd(t):
        return torch.sqrt(t**2 * s**2 + (1 - t) ** 2)[:, None]

    def u(z, t, r):
        return (r[:, None] * mu + sd(r) / sd(t) * (z - t[:, None] * mu) - z) / (r - t)[:, None]

    return u


def test_the_imf_compound_velocity_of_the_exact_average_velocity_is_the_exact_velocity():
    mu, s = torch.tensor([1.0, -0.5], dtype=F64), 0.4
    u, one = gaussian_u(mu, s), GaussianMixture(mu[None], [s])
    z = torch.randn(16, 2, dtype=F64)
    t, r = torch.rand(16, dtype=F64) * 0.5, 0.55 + torch.rand(16, dtype=F64) * 0.45
    v = one.velocity("linear", z, t)
    value, du_dt = meanflow.total_derivative(u, z, t, r, v)
    assert (fewstep.compound_velocity(value, du_dt, t, r) - v).abs().max() < 1e-10
    assert (value - v).abs().max() > 0.05  # u and v differ: the correction is doing the work


def test_the_alphaflow_target_of_the_exact_flow_errs_by_alpha_squared():
    mu, s = torch.tensor([1.0, -0.5], dtype=F64), 0.4
    u, one = gaussian_u(mu, s), GaussianMixture(mu[None], [s])
    z = torch.randn(64, 2, dtype=F64)
    t, r = torch.full((64,), 0.2, dtype=F64), torch.full((64,), 0.9, dtype=F64)
    v, exact = one.velocity("linear", z, t), u(z, t, r)
    errors = []
    for alpha in (0.1, 0.05, 0.025):
        delta = alpha * (r - t)
        target = fewstep.alphaflow_target(v, u(z + delta[:, None] * v, t + delta, r), alpha)
        errors.append(float((target - exact).abs().max()))
    assert torch.equal(fewstep.alphaflow_target(v, exact, 1.0), v)
    assert all(3.6 < a / b < 4.6 for a, b in zip(errors, errors[1:])), errors


def test_the_alphaflow_schedule_runs_from_flow_matching_to_mean_flows():
    alpha = [fewstep.alphaflow_alpha(k / 1000) for k in range(1001)]
    assert alpha[0] == 1.0 and alpha[-1] == 0.0 and alpha[500] == 0.5
    assert all(a >= b for a, b in zip(alpha, alpha[1:]))
    assert 0.2 < sum(0 < a < 1 for a in alpha) / 1001 < 0.6  # a sigmoid: the clamp cuts off both tails
    late = [fewstep.alphaflow_alpha(k / 100, start=0.5, end=0.8) for k in range(101)]
    assert late[:51] == [1.0] * 51 and late[80:] == [0.0] * 21 and late[65] == 0.5
    with pytest.raises(ValueError):
        fewstep.alphaflow_alpha(0.5, start=0.6, end=0.6)


def test_the_alphaflow_term_at_both_ends_is_flow_matching_and_the_mean_flow_target():
    tr = Transport("linear")
    model = random_sit(dmf_depth=2)
    term = AlphaFlowLoss(model, tr, share=0.75)
    assert term.alpha == 1.0  # before at_step: flow matching
    batch = batch_for(model, tr, term)
    target, weight = term.targets(batch)
    assert torch.equal(target, tr.interpolant.conditional_velocity(batch.x1, batch.noise, batch.t))
    assert torch.equal(weight, torch.ones(6))
    term.at_step(10, 10)
    target, weight = term.targets(batch)
    assert torch.equal(target, DecoupledMeanFlowLoss(model, tr).target(batch)) and torch.equal(weight, torch.ones(6))


def test_the_alphaflow_term_jumps_from_an_euler_step_of_the_velocity():
    """Between the ends the model is evaluated once, at (x_t + delta v, t + delta, r), delta = alpha (r - t)."""
    tr = Transport("linear")
    calls = []

    class Recorder(torch.nn.Module):
        num_classes = 5

        def forward(self, x, t, y=None, r=None, drop_labels=True):
            calls.append((x.clone(), t.clone(), r))
            return torch.zeros_like(x) + 3.0

    term = AlphaFlowLoss(Recorder(), tr, share=0.5)
    term.at_step(1, 2)
    alpha = term.alpha
    batch = batch_for(Recorder(), tr, term, n=6)
    calls.clear()
    target, weight = term.targets(batch)
    (z, tt, rr), = calls
    v = tr.interpolant.conditional_velocity(batch.x1, batch.noise, batch.t)
    delta = alpha * (batch.r - batch.t)
    assert torch.allclose(z, batch.x_t + delta.reshape(-1, 1, 1, 1) * v) and torch.allclose(tt, batch.t + delta)
    assert torch.equal(rr, batch.r)
    jump = (batch.r != batch.t).reshape(-1, 1, 1, 1)
    assert torch.allclose(target, torch.where(jump, alpha * v + (1 - alpha) * 3.0, v))
    assert torch.equal(weight, torch.where(batch.r != batch.t, alpha, 1.0))


def test_the_guided_target_has_the_guided_field_as_fixed_point():
    """v_g = v + (1 - 1/omega) (v_cond - v_uncond): a model whose conditional velocity is the guided field
    omega a + (1 - omega) b reproduces itself as target from the true conditional velocity a."""
    a, b = torch.randn(3, 2), torch.randn(3, 2)  # the conditional and unconditional velocities
    omega = torch.tensor([1.0, 2.5, 6.0])
    guided = omega[:, None] * a + (1 - omega[:, None]) * b
    assert torch.allclose(fewstep.guided_velocity(a, guided, b, omega), guided, atol=1e-6)
    assert torch.allclose(fewstep.guided_velocity(a[1:2], guided[1:2], b[1:2], 2.5), guided[1:2], atol=1e-6)
    assert torch.equal(fewstep.guided_velocity(a, b, guided, 1.0), a)


def test_omega_is_drawn_with_density_proportional_to_omega_to_the_minus_beta():
    g = torch.Generator().manual_seed(0)
    n = 40000
    log_uniform = fewstep.draw_omega(n, 8.0, 1.0, generator=g)
    assert 1 <= float(log_uniform.min()) and float(log_uniform.max()) <= 8
    assert abs(float((log_uniform <= math.sqrt(8)).float().mean()) - 0.5) < 0.01
    power = fewstep.draw_omega(n, 8.0, 2.0, generator=g)  # F(w) = (1 - 1/w) / (1 - 1/8)
    assert abs(float((power <= 2.0).float().mean()) - 0.5 / 0.875) < 0.01
    assert torch.equal(fewstep.draw_omega(5, 1.0), torch.ones(5))


def test_time_pairs_take_the_flow_matching_share_and_order_two_draws():
    def constant(value):
        return lambda batch, device=None, dtype=torch.float32, generator=None: torch.full((batch,), value, dtype=dtype)

    g = torch.Generator().manual_seed(0)
    t, r = fewstep.draw_time_pairs(constant(0.5), constant(0.7), constant(0.2), 20000, 0.7, generator=g)
    flow = t == 0.5
    assert torch.all(r[flow] == 0.5) and torch.all(t[~flow] == 0.2) and torch.all(r[~flow] == 0.7)
    assert abs(float(flow.float().mean()) - 0.3) < 0.015
    tr = Transport("linear", time_density="logit-normal", time_density_params={"logit_mean": 1.0})
    t, r = fewstep.draw_time_pairs(tr.sample_time, tr.sample_time, tr.sample_time, 5000, 1.0, generator=g)
    assert torch.all(t < r)


# ----------------------------------------------------------------------------------------- steps and sampling


@pytest.mark.parametrize("objective", ["dmf", "imf", "alphaflow"])
def test_one_training_step_of_each_objective_through_step_losses(objective):
    tr = Transport("linear")
    flow = random_sit()
    form = {"dmf": dict(dmf_depth=2), "imf": dict(mean_flow=True, omega_input=True, velocity_head_depth=1),
            "alphaflow": dict(mean_flow=True)}[objective]
    model = init_from_flow(SiT(**ARCH, **form), flow.state_dict()).train()
    term = {"dmf": lambda: DecoupledMeanFlowLoss(model, tr, omega=2.5, guidance_interval=(0.3, 1.0)),
            "imf": lambda: ImprovedMeanFlowLoss(model, tr, omega_max=8.0),
            "alphaflow": lambda: AlphaFlowLoss(model, tr, omega=1.5)}[objective]()
    term.at_step(3, 8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x1, y = torch.randn(6, 4, 8, 8, generator=g), torch.tensor([0, 1, 2, 3, 4, 1])
    loss, parts = step_losses(model, tr, [term], x1, y, g)
    assert list(parts) == [term.name] and math.isfinite(float(loss.detach()))
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), flow.state_dict().values()))


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_a_mean_flow_model_started_from_a_flow_sit_jumps_as_its_euler_steps_bit_for_bit(steps):
    """The iMF form (r_embedder, omega embedder and velocity head from init_from_flow) samples through
    ``sample_meanflow`` with NFE = steps; before any update its jumps are the flow model's Euler steps."""
    flow = random_sit()
    model = init_from_flow(SiT(**ARCH, mean_flow=True, omega_input=True, velocity_head_depth=2), flow.state_dict())
    model.eval()
    x0, y = torch.randn(4, 4, 8, 8), torch.tensor([0, 1, 2, 5])
    got, nfe = meanflow.sample_meanflow(model, x0, steps, model_kwargs={"y": y, "omega": 4.0})
    want, grid = x0, torch.linspace(0, 1, steps + 1, dtype=F64).tolist()
    with torch.no_grad():
        for t, r in zip(grid[:-1], grid[1:]):
            want = want + (r - t) * flow(want, torch.full((4,), t), y)
    assert nfe == steps and torch.equal(got, want)


def test_a_dmf_model_and_an_omega_model_sample_differently_at_different_r_and_omega():
    dmf, imf = random_sit(dmf_depth=2), random_sit(mean_flow=True, omega_input=True)
    x0, y = torch.randn(4, 4, 8, 8), torch.tensor([0, 1, 2, 5])
    one, nfe1 = meanflow.sample_meanflow(dmf, x0, 1, model_kwargs={"y": y})
    two, nfe2 = meanflow.sample_meanflow(dmf, x0, 2, model_kwargs={"y": y})
    assert (nfe1, nfe2) == (1, 2) and not torch.allclose(one, two)
    low, _ = meanflow.sample_meanflow(imf, x0, 1, model_kwargs={"y": y, "omega": 1.0})
    high, _ = meanflow.sample_meanflow(imf, x0, 1, model_kwargs={"y": y, "omega": 5.0})
    assert not torch.allclose(low, high)


@pytest.mark.slow
def test_the_fine_tuning_cost_benchmark_runs_every_variant(capsys):
    """examples/benchmarks/fewstep_cost.py --tiny: every objective's step runs and is printed against flow."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "examples" / "benchmarks" / "fewstep_cost.py"
    spec = importlib.util.spec_from_file_location("fewstep_cost", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--tiny", "--iters", "1", "--batch-size", "2"])
    out = capsys.readouterr().out
    assert set(results) == {"flow", "meanflow", "dmf", "dmf guided", "imf", "imf guided", "alphaflow mid",
                            "alphaflow end"}
    assert "| flow |" in out and out.count("x |") == 2 * len(results)
