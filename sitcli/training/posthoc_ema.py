r"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models",
EDM2): keep snapshots of two power-function EMAs while training, then build the EMA of any relative width
afterwards as a linear combination of the snapshots. Math only: no files (saving snapshots to a run and the
``sit ema`` job live elsewhere). Matches ``training/phema.py`` of NVlabs/edm2, with time counted in steps.

Power-function EMA. With exponent gamma > 0 the average at training step T weights the weights of step tau by

    p_{T,gamma}(tau) = (gamma + 1) tau^gamma / T^(gamma + 1),    0 < tau <= T,

a profile whose standard deviation relative to T is (EDM2 Eq. 123)

    sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))),

so gamma is the largest real root of gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + (12 - sigma_rel^-2) = 0
(Eq. 126; gamma > 0 for sigma_rel < 12^-1/2 = 0.2887). EDM2 tracks sigma_rel = 0.05 (gamma = 16.97) and
0.10 (gamma = 6.94). Step by step (Eq. 127, with EDM2's images counted as steps of one batch):

    ema_k = beta_k ema_{k-1} + (1 - beta_k) theta_k,    beta_k = (1 - 1 / k)^(gamma + 1),   k = 1, 2, ...

so ema_1 = theta_1 and ema_T = sum_k w_k theta_k with w_k = (k / T)^(gamma + 1) - ((k - 1) / T)^(gamma + 1),
the integral of p_{T,gamma} over (k - 1, k]: the profile exactly, for weights held over each step.

Reconstruction. Given snapshots i = 1..n (tracker gamma_i saved at step t_i), the EMA (T, gamma) is sought as
sum_i x_i snapshot_i, with x the least-squares fit of the profiles in L2(0, inf) (EDM2 Algorithm 3):

    A x = b,   A_ij = <p_{t_i,gamma_i}, p_{t_j,gamma_j}>,   b_i = <p_{t_i,gamma_i}, p_{T,gamma}>,

    <p_{a}, p_{b}> = (gamma_a + 1)(gamma_b + 1) (t_a / t_b)^gamma_b / ((gamma_a + gamma_b + 1) t_b)   for t_a <= t_b

(the integral of the product over (0, t_a]), then x is rescaled to sum to one (an average of averages).
The fit is not exact, since a power function is not a combination of others; ``profile_error`` gives the
relative L2 distance of the fitted profile from the wanted one.

Disk: each snapshot is one copy of the averaged weights per tracked width, so snapshots every K steps cost
(number of widths) x (weights) bytes per K steps (EDM2 stores them in float16, half of float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from sitcli.errors import InputError

EDM2_SIGMA_RELS = (0.05, 0.10)  # the two widths EDM2 tracks
MAX_SIGMA_REL = math.sqrt(1 / 12)  # gamma = 0, a uniform average over all steps so far


def gamma_to_sigma_rel(gamma: float | np.ndarray) -> np.ndarray:
    """sigma_rel of the power-function profile with exponent gamma (EDM2 Eq. 123)."""
    g = np.float64(gamma)
    return np.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma > 0 whose profile has relative width ``sigma_rel`` (EDM2 Eq. 126)."""
    if not 0 < sigma_rel < MAX_SIGMA_REL:
        raise InputError(f"--sigma-rel {sigma_rel} is out of range: pass a width in (0, {MAX_SIGMA_REL:.4f}), "
                         f"e.g. 0.05 or 0.10 as EDM2 (narrower averages the last steps more)")
    c = float(sigma_rel) ** -2
    return float(np.roots([1.0, 7.0, 16.0 - c, 12.0 - c]).real.max())


def power_function_beta(gamma: float, step: int) -> float:
    """beta_k = (1 - 1 / k)^(gamma + 1), the decay at training step k >= 1 (EDM2 Eq. 127)."""
    if step < 1:
        raise ValueError(f"steps count from 1, got {step}")
    return (1 - 1 / step) ** (gamma + 1)


def profile_inner_product(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
    """<p_{t_a,gamma_a}, p_{t_b,gamma_b}> in L2(0, inf), elementwise over broadcast arrays (module docstring)."""
    t_a, gamma_a, t_b, gamma_b = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a,
                                                                                              t_b, gamma_b)))
    first = t_a <= t_b  # the shorter profile ends first; write the integral from its side
    t_lo, t_hi = np.where(first, t_a, t_b), np.where(first, t_b, t_a)
    g_hi = np.where(first, gamma_b, gamma_a)
    return (gamma_a + 1) * (gamma_b + 1) * (t_lo / t_hi) ** g_hi / ((gamma_a + gamma_b + 1) * t_hi)


def _normal_equations(steps, sigma_rels, target_step, target_sigma_rel) -> tuple[np.ndarray, np.ndarray, float]:
    t = np.asarray(steps, dtype=np.float64)
    g = np.array([sigma_rel_to_gamma(s) for s in np.broadcast_to(np.asarray(sigma_rels, np.float64), t.shape)])
    g_out = sigma_rel_to_gamma(target_sigma_rel)
    a = profile_inner_product(t[:, None], g[:, None], t[None, :], g[None, :])
    b = profile_inner_product(t, g, float(target_step), g_out)
    c = float(profile_inner_product(target_step, g_out, target_step, g_out))
    return a, b, c


def solve_posthoc_coefficients(steps: Sequence[int], sigma_rels: Sequence[float] | float, target_step: int,
                               target_sigma_rel: float) -> np.ndarray:
    """The coefficients x (summing to 1) of snapshots (``steps[i]``, ``sigma_rels[i]``) whose combination best
    matches the EMA of width ``target_sigma_rel`` at ``target_step`` (EDM2 Algorithm 3; module docstring)."""
    steps = np.asarray(steps, dtype=np.float64)
    if steps.ndim != 1 or len(steps) == 0 or not (steps > 0).all():
        raise InputError("post-hoc EMA needs at least one snapshot, each at a step >= 1")
    if target_step <= 0:
        raise InputError(f"the reconstruction step must be >= 1, got {target_step}")
    pairs = list(zip(steps.tolist(), np.broadcast_to(np.asarray(sigma_rels, np.float64), steps.shape).tolist()))
    if len(set(pairs)) != len(pairs):
        raise InputError("two snapshots have the same step and width: each (step, sigma_rel) may appear once")
    a, b, _ = _normal_equations(steps, sigma_rels, target_step, target_sigma_rel)
    x = np.linalg.solve(a, b)
    return x / x.sum()


def profile_error(steps: Sequence[int], sigma_rels: Sequence[float] | float, target_step: int,
                  target_sigma_rel: float, coefficients: np.ndarray) -> float:
    """||sum_i x_i p_i - p_target|| / ||p_target|| in L2(0, inf): how far the reconstruction's averaging profile
    lies from the wanted one (0 is exact), from the same inner products as the solve."""
    a, b, c = _normal_equations(steps, sigma_rels, target_step, target_sigma_rel)
    x = np.asarray(coefficients, dtype=np.float64)
    return float(math.sqrt(max(x @ a @ x - 2 * x @ b + c, 0.0) / c))


def fit_errors(steps: Sequence[int], sigma_rels: Sequence[float] | float, target_step: int,
               target_sigma_rels: Sequence[float]) -> np.ndarray:
    """``profile_error`` of the least-squares reconstruction of each width in ``target_sigma_rels`` at
    ``target_step`` from the same snapshots: one factorisation of A for all of them (what a scan of widths needs)."""
    t = np.asarray(steps, dtype=np.float64)
    g = np.array([sigma_rel_to_gamma(s) for s in np.broadcast_to(np.asarray(sigma_rels, np.float64), t.shape)])
    a = profile_inner_product(t[:, None], g[:, None], t[None, :], g[None, :])
    g_out = np.array([sigma_rel_to_gamma(s) for s in target_sigma_rels])
    b = profile_inner_product(t[:, None], g[:, None], float(target_step), g_out[None, :])  # (snapshots, targets)
    c = profile_inner_product(float(target_step), g_out, float(target_step), g_out)
    x = np.linalg.solve(a, b)
    x = x / x.sum(axis=0)
    squared = np.einsum("it,ij,jt->t", x, a, x) - 2 * np.einsum("it,it->t", x, b) + c
    return np.sqrt(np.maximum(squared, 0.0) / c)


def discrete_weights(gamma: float, step: int) -> np.ndarray:
    """w_k, k = 1..step: the weight the step-by-step tracker gives theta_k at ``step`` (module docstring)."""
    k = np.arange(step + 1, dtype=np.float64) / step
    return np.diff(k ** (gamma + 1))


@dataclass(frozen=True)
class Snapshot:
    """One saved average: the tracker of width ``sigma_rel`` at training step ``step`` (its weights apart)."""

    step: int
    sigma_rel: float


class PowerFunctionEMA:
    """Power-function EMAs of the same weights at several relative widths, updated once per training step.

    Args:
        params: name -> floating tensor, the weights to average (e.g. ``dict(model.named_parameters())``);
            the averages start as copies and keep their dtype and device.
        sigma_rels: the widths to track (EDM2: 0.05 and 0.10).

    ``update(params, step)`` after optimizer step ``step`` (1, 2, ...); ``snapshots()`` are the averages
    now, to save every K steps; ``state_dict``/``load_state_dict`` resume it bit for bit.
    """

    def __init__(self, params: Mapping[str, torch.Tensor], sigma_rels: Sequence[float] = EDM2_SIGMA_RELS):
        if len(set(sigma_rels)) != len(sigma_rels) or not sigma_rels:
            raise InputError(f"--ema-sigma-rels {list(sigma_rels)}: pass one or more different widths")
        bad = [name for name, p in params.items() if not torch.is_floating_point(p)]
        if bad:
            raise ValueError(f"only floating tensors are averaged, not {bad[0]!r}")
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        self.gammas = tuple(sigma_rel_to_gamma(s) for s in self.sigma_rels)
        self.step = 0
        self.averages = [{name: p.detach().clone() for name, p in params.items()} for _ in self.sigma_rels]

    @torch.no_grad()
    def update(self, params: Mapping[str, torch.Tensor], step: int) -> None:
        """Fold in the weights after training step ``step``, which must follow the last one."""
        if step != self.step + 1:
            raise ValueError(f"the EMA was last updated at step {self.step}; step {step} does not follow it")
        for gamma, average in zip(self.gammas, self.averages):
            weight = 1 - power_function_beta(gamma, step)
            for name, p in params.items():
                average[name].lerp_(p.detach(), weight)
        self.step = step

    def snapshots(self) -> list[tuple[Snapshot, dict[str, torch.Tensor]]]:
        """(snapshot, weights) of every width at the current step; the weights are copies."""
        return [(Snapshot(self.step, s), {k: v.clone() for k, v in avg.items()})
                for s, avg in zip(self.sigma_rels, self.averages)]

    def state_dict(self) -> dict:
        return {"step": self.step, "sigma_rels": list(self.sigma_rels),
                "averages": [{k: v.clone() for k, v in avg.items()} for avg in self.averages]}

    def load_state_dict(self, state: Mapping) -> None:
        if tuple(float(s) for s in state["sigma_rels"]) != self.sigma_rels:
            raise InputError(f"the saved post-hoc EMA tracks widths {list(state['sigma_rels'])}, not "
                             f"{list(self.sigma_rels)}: resume with the run's own --ema-sigma-rels")
        for average, saved in zip(self.averages, state["averages"]):
            if saved.keys() != average.keys():
                raise InputError("the saved post-hoc EMA holds other tensors than the model: not this run's")
            for name, tensor in saved.items():
                average[name].copy_(tensor)
        self.step = int(state["step"])


def combine_snapshots(weighted: Iterable[tuple[float, Mapping[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """sum_i x_i state_i for (x_i, state_i) pairs, accumulated in float64 one state at a time (so a job can load
    the snapshots one by one) and returned in the first state's dtypes."""
    total: dict[str, torch.Tensor] | None = None
    dtypes: dict[str, torch.dtype] = {}
    for coefficient, state in weighted:
        if total is None:
            total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in state.items()}
            dtypes = {k: v.dtype for k, v in state.items()}
        if state.keys() != total.keys():
            raise InputError("the snapshots hold different tensors: they are not of one run")
        for name, tensor in state.items():
            if tensor.shape != total[name].shape:
                raise InputError(f"snapshot tensor {name!r} has shape {tuple(tensor.shape)}, others "
                                 f"{tuple(total[name].shape)}: they are not of one run")
            total[name].add_(tensor.to(torch.float64), alpha=float(coefficient))
    if total is None:
        raise InputError("no snapshots to combine")
    return {k: v.to(dtypes[k]) for k, v in total.items()}


def reconstruction_plan(snapshots: Sequence[Snapshot], sigma_rel: float, step: int | None = None
                        ) -> list[tuple[float, Snapshot]]:
    """(coefficient, snapshot) pairs that rebuild the EMA of width ``sigma_rel`` at ``step`` (default: the
    latest snapshot's step, which ``step`` must be one of, as in EDM2); later snapshots are left out."""
    if not snapshots:
        raise InputError("no post-hoc EMA snapshots: train with snapshots enabled first")
    steps = sorted({s.step for s in snapshots})
    step = steps[-1] if step is None else step
    if step not in steps:
        raise InputError(f"no snapshot at step {step}: reconstruct at a snapshot's step ({steps[0]} .. {steps[-1]})")
    used = [s for s in snapshots if s.step <= step]
    x = solve_posthoc_coefficients([s.step for s in used], [s.sigma_rel for s in used], step, sigma_rel)
    return list(zip(x.tolist(), used))
