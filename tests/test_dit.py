"""DiT under sit's samplers: the DDPM interpolant, the timestep wrapper, and sampling against DDIM / DDPM.

The references are written here from the DDPM/DDIM update rules on the plain cumulative-product
table, calling the network with integer timesteps; they share nothing with sit's samplers.
"""


import pytest
import torch

from sitcli.models import SiT
from sitcli.transport import sample_ode, sample_sde
from sitcli.loading import DiscreteTimestepModel
from sitcli.transport.ddpm import (
    DDPMInterpolant,
    dit_transport,
    time_from_timestep,
    timestep_from_time,
)

N = 1000


pytestmark = pytest.mark.usefixtures("one_thread")


def chain() -> tuple[torch.Tensor, torch.Tensor]:
    """(betas, alphas_cumprod) of DiT's schedule, float64, by the plain product."""
    betas = torch.linspace(1e-4, 0.02, N, dtype=torch.float64)
    return betas, torch.cumprod(1 - betas, dim=0)


def test_interpolant_passes_through_the_discrete_chain():
    interp = DDPMInterpolant()
    _, abar = chain()
    t = time_from_timestep(torch.arange(N, dtype=torch.float64))
    assert torch.allclose(interp.alpha(t) ** 2, abar, rtol=1e-9, atol=0)
    assert torch.allclose(interp.alpha(t) ** 2 + interp.sigma(t) ** 2, torch.ones_like(t), atol=1e-12)
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert torch.allclose(interp.alpha(ends), torch.stack([abar[-1].sqrt(), torch.tensor(1.0, dtype=torch.float64)]))
    assert interp.sigma(ends)[1] == 0
    assert not interp.singular_at_noise_end() and interp.singular_at_data_end()


def test_derivatives_match_finite_differences():
    interp, h = DDPMInterpolant(), 1e-4  # the Gamma-function form is good to ~1e-10, so h cannot be tiny
    t = torch.linspace(0.0, 0.99, 40, dtype=torch.float64)
    for f, df in ((interp.alpha, interp.d_alpha), (interp.sigma, interp.d_sigma)):
        numeric = (f(t + h) - f(t - h)) / (2 * h)
        assert torch.allclose(df(t), numeric, rtol=1e-5, atol=1e-8)
    assert torch.allclose(interp.eta(t), interp.d_alpha(t) / interp.alpha(t) * interp.sigma(t) ** 2
                          - interp.sigma(t) * interp.d_sigma(t), rtol=1e-9)


def test_float32_times_stay_float32():
    interp = DDPMInterpolant()
    t = torch.rand(5)
    for f in (interp.alpha, interp.sigma, interp.d_alpha, interp.d_sigma, interp.eta):
        assert f(t).dtype == torch.float32


def test_timestep_mapping_and_discrete_grid():
    k = torch.arange(N, dtype=torch.float64)
    assert torch.allclose(timestep_from_time(k / N), N - 1 - k, rtol=0, atol=1e-12)
    assert torch.allclose(time_from_timestep(timestep_from_time(k / N)), k / N)
    grid = dit_transport(discrete=True).timestep_grid(dtype=torch.float64)
    assert torch.allclose(timestep_from_time(grid), torch.arange(N - 1, -1, -1, dtype=torch.float64), atol=1e-9)
    # default sampling interval: DiT's timestep 999 (t = 0) down to 0 (t = 1 - 1/N)
    assert dit_transport().sample_interval() == (0.0, 1 - 1 / N)


def test_wrapper_feeds_dit_timesteps_and_drops_sigma_channels():
    seen = {}

    def network(x, s, y=None):
        seen["s"], seen["y"] = s, y
        return torch.cat([x * 2, torch.full_like(x, 7.0)], dim=1)  # eps, then "learned sigma"

    wrapped = DiscreteTimestepModel(network)
    x, t = torch.randn(3, 2, 4, 4), torch.tensor([0.0, 0.5, 0.999])
    out = wrapped(x, t, y=torch.tensor([1, 2, 3]))
    assert torch.equal(out, 2 * x)
    assert torch.allclose(seen["s"], torch.tensor([999.0, 499.0, 0.0]), atol=1e-3)
    assert seen["y"].tolist() == [1, 2, 3]
    wrapped(x, t, torch.tensor([4, 5, 6]))  # labels passed positionally, as model(x, t, y)
    assert seen["y"].tolist() == [4, 5, 6]
    module = DiscreteTimestepModel(torch.nn.Linear(2, 2))
    assert len(list(module.parameters())) == 2  # a wrapped module moves with .to() and .eval()


def test_noise_of_standard_normal_data_gives_zero_velocity():
    # For data ~ N(0, I) on a VP path, E[eps | x_t] = sigma_t x exactly and the flow is still.
    tr, interp = dit_transport(), DDPMInterpolant()
    x = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0.0, 0.3, 0.7, 0.999], dtype=torch.float64)
    v = tr.velocity(interp.sigma(t)[:, None] * x, x, t)
    assert v.abs().max() < 1e-12


#################################################################################
#                     Sampling a tiny random DiT against DDIM / DDPM            #
#################################################################################


def tiny_dit():
    """A DiT-shaped noise predictor: the exact one for N(0, I) data plus a small random DiT.

    A random network alone predicts noise unrelated to x, so x1 = (x - sigma eps) / alpha grows by
    1 / alpha_0 ~ 160 and both samplers would only agree on an explosion; the exact part keeps the
    trajectories of order one while the random DiT makes them non-trivial. Its time MLP ignores the
    32 fastest of the 128 timestep frequencies (periods under ~60 timesteps): random weights would
    turn them into wiggles that only steps of one timestep resolve, and the test is about the
    transport, not about how many steps an arbitrary network needs.
    """
    torch.manual_seed(0)
    net = SiT(input_size=8, patch_size=4, in_channels=2, hidden_size=32, depth=1, num_heads=2, num_classes=3).double()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.1)
        first = net.t_embedder.mlp[0].weight  # columns: 128 cosines, then 128 sines, fastest first
        first[:, :32] = 0
        first[:, 128:160] = 0
    net.eval()
    interp = DDPMInterpolant()

    def dit(x, s, y=None):
        sigma = torch.sqrt(-torch.expm1(interp.log_abar(s))).to(x.dtype).reshape(-1, 1, 1, 1)
        return sigma * x + 0.3 * net(x, s, y)

    return dit


def ddim(eps, x, timesteps, abar):
    """Deterministic DDIM (eta = 0) through the given decreasing integer timesteps."""
    for n, m in zip(timesteps[:-1], timesteps[1:]):
        e = eps(x, n)
        x1 = (x - (1 - abar[n]).sqrt() * e) / abar[n].sqrt()
        x = abar[m].sqrt() * x1 + (1 - abar[m]).sqrt() * e
    return x


@pytest.mark.slow
@torch.no_grad()
def test_probability_flow_ode_converges_to_ddim():
    dit, (_, abar) = tiny_dit(), chain()
    x0, y = torch.randn(6, 2, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])

    def eps(x, n):
        return dit(x, torch.full((x.shape[0],), float(n), dtype=x.dtype), y)

    # sit: t from 0 (timestep 999) to 1 - 1/N (timestep 0); rk4 at 111 steps is converged to ~1e-4
    x_ode, nfe = sample_ode(dit_transport(), DiscreteTimestepModel(dit), x0, "rk4", 111, model_kwargs={"y": y})
    assert nfe == 444
    errors = []
    for steps in (111, 333, 999):
        timesteps = torch.linspace(N - 1, 0, steps + 1).round().long().tolist()
        errors.append((ddim(eps, x0, timesteps, abar) - x_ode).abs().max().item())
    scale = x_ode.abs().max().item()
    # DDIM is a first-order solver of the same ODE: 3x the steps, a third of the error
    # (measured: 0.070, 0.023, 0.0078 of max |x| = 4.8).
    assert errors[2] < 0.003 * scale
    assert 2.5 < errors[0] / errors[1] < 3.5 and 2.5 < errors[1] / errors[2] < 3.5
    # and sit's Euler on DDIM's own grid agrees with DDIM to first order as well
    x_euler, _ = sample_ode(dit_transport(), DiscreteTimestepModel(dit), x0, "euler", 999, model_kwargs={"y": y})
    assert (x_euler - x_ode).abs().max() < 0.005 * scale


@pytest.mark.slow
@torch.no_grad()
def test_sbdm_sde_follows_ddpm_ancestral_sampling_path_by_path():
    """With the same Gaussian increments, sit's Euler-Maruyama SDE with w = SBDM (the reverse SDE of
    the DDPM chain) stays next to DDPM's ancestral sampler (variance beta_n) step for step."""
    dit, (betas, abar) = tiny_dit(), chain()
    x0, y = torch.randn(6, 2, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])

    def eps(x, n):
        return dit(x, torch.full((x.shape[0],), float(n), dtype=x.dtype), y)

    def ddpm(x, generator):
        for n in range(N - 1, 0, -1):
            x1 = (x - (1 - abar[n]).sqrt() * eps(x, n)) / abar[n].sqrt()
            mean = (abar[n - 1].sqrt() * betas[n] * x1 + (1 - betas[n]).sqrt() * (1 - abar[n - 1]) * x) / (1 - abar[n])
            x = mean + betas[n].sqrt() * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        return (x - (1 - abar[0]).sqrt() * eps(x, 0)) / abar[0].sqrt()

    reference = ddpm(x0, torch.Generator().manual_seed(1))
    x_sde, nfe = sample_sde(
        dit_transport(), DiscreteTimestepModel(dit), x0, "euler", N, w="SBDM", last_step="tweedie",
        last_step_size=1 / N, generator=torch.Generator().manual_seed(1), model_kwargs={"y": y},
    )
    assert nfe == N
    other_noise = ddpm(x0, torch.Generator().manual_seed(2))
    spread = (other_noise - reference).pow(2).mean().sqrt()
    assert (x_sde - reference).pow(2).mean().sqrt() < 0.01 * spread
    assert (x_sde - reference).abs().max() < 0.05 * spread
