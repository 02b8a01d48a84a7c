"""The Gaussian-mixture proof of fine-tuning a flow model into a one-step model (Decoupled MeanFlow and
improved MeanFlow), against the mixture's exact velocity (``transport.mixture``, sit's time: t = 0 noise).

A small DMF-shaped network (a trunk that sees t, a head that sees r) is first made the flow model of four
Gaussians by regressing u(z, t, t) on the exact velocity (a frozen exact teacher, 600 steps); then each
objective fine-tunes it for 400 steps (batch 256, half the rows jumping, p = 1, c = 0.01). Distances are sliced
W1 (128 fixed directions) to 20,000 fresh data points, from the same 20,000 noise draws for every sampler.
Measured on this machine (3 seeds, mean ± sd):

    exact velocity, 100 Euler steps   0.022 ± 0.005   (near the finite-sample floor of this distance)
    flow model, 1 Euler step          1.72 ± 0.02     (every point lands near the data mean)
    DMF fine-tuned, 1 / 2 / 4 jumps   0.200 ± 0.036 / 0.195 ± 0.068 / 0.240 ± 0.060
    iMF fine-tuned, 1 / 2 / 4 jumps   0.162 ± 0.011 / 0.154 ± 0.002 / 0.198 ± 0.003

so one jump of the fine-tuned model lands at 9.2x (DMF; 7-14x per seed) and 7.5x (iMF; 7-9x per seed) the
distance of 100 Euler steps of the exact field, from 79x for the flow model's one step. The test asserts:
mean 1-jump distance < 12 x mean 100-step exact Euler distance, and per seed 1 jump < (flow model's 1 Euler
step) / 5. 2 and 4 jumps are printed (-s), not asserted: after 400 steps 2 jumps are about as good as 1
and 4 are worse, so this proves the one-step claim only; iMF's tangent (the model's own velocity) gives
it a smaller spread than DMF's (the conditional velocity).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import functools
import math
import statistics

import pytest
import torch
from torch import nn

from sitcli.training.fewstep_losses import DecoupledMeanFlowLoss, ImprovedMeanFlowLoss
from sitcli.training.losses import step_losses
from sitcli.transport import GaussianMixture, Transport, meanflow

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
MIXTURE = GaussianMixture([[-2.0, -2.0], [2.0, 2.0], [-2.0, 2.0], [2.0, -2.0]], [0.3] * 4, dtype=torch.float32)


def features(s: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.sin(math.pi * s), torch.cos(math.pi * s), s, s * s], 1)


class TinyFlowMap(nn.Module):
    """u(x, t, r) on 2-D points, shaped like a DMF model: the trunk sees t, the head sees r (r = t: a flow model)."""

    num_classes = 0

    def __init__(self, width: int = 128):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU())
        self.head = nn.Sequential(nn.Linear(width + 4, width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x, t, y=None, r=None, drop_labels=True):
        hidden = self.trunk(torch.cat([x, features(t)], 1))
        return self.head(torch.cat([hidden, features(t if r is None else r)], 1))


def sliced_w1(a: torch.Tensor, b: torch.Tensor, projections: int = 128) -> float:
    d = torch.randn(a.shape[1], projections, generator=torch.Generator().manual_seed(1), dtype=a.dtype)
    d = d / d.norm(dim=0)
    return float(((a @ d).sort(0).values - (b @ d).sort(0).values).abs().mean())


def euler(velocity, z: torch.Tensor, steps: int) -> torch.Tensor:
    for i in range(steps):
        z = z + velocity(z, torch.full((z.shape[0],), i / steps)) / steps
    return z


@functools.lru_cache(maxsize=None)
def flow_weights(seed: int, steps: int = 600) -> dict[str, torch.Tensor]:
    """The flow model's weights: u(z, t, t) regressed on the exact velocity at z ~ p_t (shared by both objectives)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = TinyFlowMap()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        x1, t, eps = MIXTURE.sample(512, g), torch.rand(512, generator=g), torch.randn(512, 2, generator=g)
        z = t[:, None] * x1 + (1 - t[:, None]) * eps
        loss = (model(z, t) - MIXTURE.velocity("linear", z, t)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def flow_model(seed: int) -> TinyFlowMap:
    model = TinyFlowMap()
    model.load_state_dict(flow_weights(seed))
    return model


def fine_tune(model: TinyFlowMap, objective: str, seed: int, steps: int = 400) -> None:
    tr, g = Transport("linear"), torch.Generator().manual_seed(100 + seed)
    term = {"dmf": DecoupledMeanFlowLoss, "imf": ImprovedMeanFlowLoss}[objective](model, tr, share=0.5, c=1e-2)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        loss, _ = step_losses(model, tr, [term], MIXTURE.sample(256, g), None, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()


@pytest.mark.parametrize("objective", ["dmf", "imf"])
def test_fine_tuning_the_flow_model_brings_one_jump_within_12x_of_100_exact_euler_steps(objective):
    rows = []
    for seed in range(3):
        model = flow_model(seed)
        g = torch.Generator().manual_seed(1000 + seed)
        n = 20000
        real, z0 = MIXTURE.sample(n, g), torch.randn(n, 2, generator=g)
        with torch.no_grad():
            exact = sliced_w1(euler(lambda z, t: MIXTURE.velocity("linear", z, t), z0, 100), real)
            flow_one = sliced_w1(euler(model, z0, 1), real)
        fine_tune(model, objective, seed)
        jumps = {k: sliced_w1(meanflow.sample_meanflow(model, z0, k)[0], real) for k in (1, 2, 4)}
        rows.append((exact, flow_one, jumps))
        print(f"{objective} seed {seed}: exact 100 Euler {exact:.3f}, flow 1 Euler {flow_one:.3f}, "
              f"fine-tuned jumps 1/2/4: {jumps[1]:.3f} {jumps[2]:.3f} {jumps[4]:.3f}")
    for name, values in (("exact 100", [r[0] for r in rows]), ("flow 1", [r[1] for r in rows]),
                         ("fine-tuned 1", [r[2][1] for r in rows])):
        print(f"{objective} {name}: {statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}")
    mean_exact, mean_one = statistics.mean(r[0] for r in rows), statistics.mean(r[2][1] for r in rows)
    assert mean_one < 12 * mean_exact, (mean_one, mean_exact)
    for exact, flow_one, jumps in rows:
        assert jumps[1] < flow_one / 5, (exact, flow_one, jumps)
