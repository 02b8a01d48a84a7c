"""A solver searched for one model: per-step time points and multistep coefficients fitted to its own trajectories.

The solver (NeuralSolver, MCG-NJU/NeuralSolver, ``src/diffusion/flow_matching/neuralsolver.py``: its flow-matching
form) takes N steps on times t0 = tau_0 < tau_1 < ... < tau_N = t1, one velocity evaluation per step, and moves
along a learned combination of every velocity so far:

    v_i = v(x_i, tau_i),    x_{i+1} = x_i + (tau_{i+1} - tau_i) [v_i + sum_{j<i} c_ij (v_j - v_i)].

With c = 0 it is Euler; with c_ij the weights of the polynomial through the last k velocities it is the
variable-step Adams-Bashforth of order k that sit already ships (``adams``). The time points are

    tau_i = t0 + (t1 - t0) sum_{m<i} softmax(theta)_m,

so the increments stay positive and the ends stay exact. The search starts from Adams-Bashforth: of
``init_order`` on the grid ``init_spacing`` / ``init_shift`` (``time_grids``) when they are given, otherwise from
the candidate of ``INIT_CANDIDATES`` (orders 2-4 on the uniform and cosine grids, sit's ``adams`` among them)
with the least loss on the training noises. It fits (theta, c) by Adam (torch.optim; the learning rate rises
linearly over the first tenth of ``iterations``, then decays as a cosine to 0: the first full-size Adam steps
otherwise throw the coefficients out of the start's stable region) to the mean squared distance between the
solver's endpoints and reference endpoints for the same starting noises (``reference_endpoints``: dopri5 at a
tight tolerance, through ``integrate``):

    loss(theta, c) = mean_n mean_d (x_N(x0_n) - x_ref_n)^2.

With full batches the solver kept is the iterate of least loss among those whose loss was computed (every one
but the last; the start included), so a search never ends worse on its own noises than where it began; with
mini-batches, whose losses are not comparable, the last.

NeuralSolver fits to a 100-step Euler trajectory and adds a loss at every step; here only the endpoint counts,
against a far more accurate reference, since the endpoint is what sampling returns.

The search is deterministic: its only randomness is the order of mini-batches, drawn from ``seed`` and the
epoch, so it is a function of the iteration number. ``search_solver`` returns a ``SearchState`` (parameters,
Adam's state, the iteration, the losses), and given that state continues to the same result as one
uninterrupted search. ``SearchState.solver()`` is the small ``SearchedSolver`` (times, coefficients, metadata)
that ``searched_sample`` applies. Both have ``to_dict`` / ``from_dict`` (tensors, numbers, strings), for the
caller to save; nothing here reads or writes files.

A searched solver belongs to one model (``model_fingerprint`` of its weights), interpolant and time interval:
``check_solver`` refuses it for another.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch

from sitcli.errors import InputError
from sitcli.transport.integrate import integrate
from sitcli.transport.time_grids import time_grid

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
F64 = torch.float64
FORMAT = "sit-searched-solver/1"
# (Adams-Bashforth order, spacing) a search may start from; ("4", "cosine") is sit's ``adams``.
INIT_CANDIDATES: tuple[tuple[int, str], ...] = ((2, "uniform"), (3, "uniform"), (4, "uniform"), (2, "cosine"),
                                                 (3, "cosine"), (4, "cosine"))


# ---------------------------------------------------------------- the solver and its application


@dataclass
class SearchedSolver:
    """N steps: ``times`` (N + 1,) from t0 to t1 and strictly lower-triangular ``coefficients`` (N, N), float64;
    ``metadata``: nfe, interpolant, t0, t1, fingerprint, and how it was searched."""

    times: torch.Tensor
    coefficients: torch.Tensor
    metadata: dict = field(default_factory=dict)

    @property
    def nfe(self) -> int:
        return len(self.times) - 1

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "times": self.times.clone(), "coefficients": self.coefficients.clone(),
                "metadata": dict(self.metadata)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchedSolver":
        if data.get("format") != FORMAT:
            raise InputError(f"not a searched solver (format {data.get('format')!r}, expected {FORMAT!r})")
        times = torch.as_tensor(data["times"], dtype=F64)
        coefficients = torch.as_tensor(data["coefficients"], dtype=F64)
        n = len(times) - 1
        if n < 1 or coefficients.shape != (n, n) or not bool((times[1:] > times[:-1]).all()):
            raise InputError(f"a searched solver needs N + 1 increasing times and N x N coefficients: got "
                             f"{tuple(times.shape)} and {tuple(coefficients.shape)}")
        if bool(torch.triu(coefficients).ne(0).any()):
            raise InputError("a searched solver's coefficients must be strictly lower-triangular")
        return cls(times, coefficients, dict(data.get("metadata", {})))


def _solve(velocity: Velocity, x0: torch.Tensor, times: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """x_N of the solver (module docstring); differentiable in ``times`` and ``coefficients``."""
    x, velocities = x0, []
    for i in range(len(times) - 1):
        velocities.append(velocity(times[i].to(x0.dtype), x))
        direction = velocities[i]
        for j in range(i):
            direction = direction + coefficients[i, j].to(x0.dtype) * (velocities[j] - velocities[i])
        x = x + (times[i + 1] - times[i]).to(x0.dtype) * direction
    return x


def searched_sample(velocity: Velocity, x0: torch.Tensor, solver: SearchedSolver) -> tuple[torch.Tensor, int]:
    """Apply a searched solver: (x at t1, nfe = its number of steps). ``velocity(t, x)`` takes a 0-dim t."""
    times = solver.times.to(x0.device)
    return _solve(velocity, x0, times, solver.coefficients.to(x0.device)), solver.nfe


# ---------------------------------------------------------------- fingerprints and checks


def model_fingerprint(state_dict: Mapping[str, torch.Tensor], values: int = 8) -> str:
    """A short hash of a model's weights: every tensor's name, shape and dtype, and its first and last
    ``values`` entries (enough to tell checkpoints apart without hashing gigabytes)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach()
        flat = tensor.reshape(-1)  # only the entries hashed go to the CPU (a model may be large and on a GPU)
        sample = (torch.cat([flat[:values], flat[-values:]]) if flat.numel() > 2 * values else flat).to("cpu", F64)
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def check_solver(solver: SearchedSolver, fingerprint: str, interpolant: str, t0: float, t1: float) -> None:
    """Refuse a searched solver fitted for another model, interpolant or time interval."""
    meta = solver.metadata
    if meta.get("fingerprint") != fingerprint:
        raise InputError(f"this searched solver was fitted for another model (fingerprint {meta.get('fingerprint')},"
                         f" this model's is {fingerprint}): search one for this model")
    if meta.get("interpolant") != interpolant:
        raise InputError(f"this searched solver was fitted for the {meta.get('interpolant')} interpolant, "
                         f"not {interpolant}")
    if not (math.isclose(meta.get("t0", math.nan), t0, abs_tol=1e-12)
            and math.isclose(meta.get("t1", math.nan), t1, abs_tol=1e-12)):
        raise InputError(f"this searched solver runs from t={meta.get('t0')} to {meta.get('t1')}, the sampler "
                         f"from t={t0:g} to {t1:g}")


# ---------------------------------------------------------------- the search


def reference_endpoints(velocity: Velocity, x0: torch.Tensor, t0: float, t1: float, atol: float = 1e-8,
                        rtol: float = 1e-8, method: str = "dopri5") -> torch.Tensor:
    """x(t1) from x(t0) = x0 by an adaptive method at a tight tolerance (``integrate``), without gradients."""
    times = torch.tensor([t0, t1], dtype=x0.dtype, device=x0.device)
    with torch.no_grad():
        return integrate(velocity, x0, method, times, atol=atol, rtol=rtol)


def adams_coefficients(times: torch.Tensor, order: int) -> torch.Tensor:
    """c_ij of variable-step Adams-Bashforth of ``order`` on ``times`` (the k = min(order, i + 1) last velocities;
    the polynomial through them integrated exactly over each step), as a strictly lower-triangular (N, N)."""
    t = times.tolist()
    n = len(t) - 1
    c = torch.zeros(n, n, dtype=F64)
    for i in range(n):
        past = t[max(0, i - order + 1): i + 1]
        for m, tm in enumerate(past):
            basis = np.poly1d([1.0])
            for q, tq in enumerate(past):
                if q != m:
                    basis = basis * np.poly1d([1.0, -tq]) / (tm - tq)
            weight = (basis.integ()(t[i + 1]) - basis.integ()(t[i])) / (t[i + 1] - t[i])
            j = i - len(past) + 1 + m
            if j < i:
                c[i, j] = weight
    return c


@dataclass
class SearchState:
    """Where a search stands: its settings, the Adams-Bashforth start it chose (``init``), the parameters
    (theta, c), Adam's state, the iteration and the losses so far."""

    settings: dict
    init: dict
    theta: torch.Tensor
    coefficients: torch.Tensor
    optimizer: dict
    iteration: int = 0
    losses: list[float] = field(default_factory=list)
    best: dict = field(default_factory=dict)  # {"loss", "iteration", "theta", "coefficients"} of full batches

    def times(self) -> torch.Tensor:
        return _times(self.theta, self.settings["t0"], self.settings["t1"])

    def solver(self) -> SearchedSolver:
        """The solver found: the best full-batch iterate, or the current one with mini-batches."""
        theta, coefficients = (self.best["theta"], self.best["coefficients"]) if self.best else \
            (self.theta, self.coefficients)
        meta = {k: self.settings[k] for k in ("interpolant", "t0", "t1", "fingerprint", "fit_times", "seed", "lr",
                                              "samples")}
        meta.update(nfe=len(self.theta), iterations=self.iteration, init_order=self.init["order"],
                    init_spacing=self.init["spacing"], init_loss=self.init["loss"],
                    loss=self.best["loss"] if self.best else (self.losses[-1] if self.losses else None),
                    best_iteration=self.best.get("iteration"))
        return SearchedSolver(_times(theta, self.settings["t0"], self.settings["t1"]).detach(),
                              torch.tril(coefficients.detach(), -1), meta)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT + "-search", "settings": dict(self.settings), "init": dict(self.init),
                "theta": self.theta.detach().clone(), "coefficients": self.coefficients.detach().clone(),
                "optimizer": _clone(self.optimizer), "iteration": self.iteration, "losses": list(self.losses),
                "best": _clone(self.best)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchState":
        if data.get("format") != FORMAT + "-search":
            raise InputError(f"not a solver search state (format {data.get('format')!r})")
        return cls(dict(data["settings"]), dict(data["init"]), data["theta"].clone(), data["coefficients"].clone(),
                   _clone(data["optimizer"]), int(data["iteration"]), list(data["losses"]), _clone(data["best"]))


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return value


def _times(theta: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
    fractions = torch.cumsum(torch.softmax(theta, dim=0), dim=0)[:-1]
    inner = t0 + (t1 - t0) * fractions
    return torch.cat([inner.new_tensor([t0]), inner, inner.new_tensor([t1])])


def _batch(n: int, batch_size: int | None, seed: int, iteration: int) -> torch.Tensor | None:
    """The rows of mini-batch ``iteration``: a fixed function of (seed, iteration); None for the full batch."""
    if batch_size is None or batch_size >= n:
        return None
    per_epoch = n // batch_size
    epoch, position = divmod(iteration, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[position * batch_size: (position + 1) * batch_size]


def _data_hash(*tensors: torch.Tensor) -> str:
    """A hash of the noises and references, so that a search resumes only on the data it began with."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _loss(velocity: Velocity, x0: torch.Tensor, reference: torch.Tensor, times: torch.Tensor,
          coefficients: torch.Tensor) -> torch.Tensor:
    x = _solve(velocity, x0, times.to(x0.device), coefficients.to(x0.device))
    return (x - reference).pow(2).flatten(1).mean(dim=1).mean()


def _start(velocity: Velocity, x0: torch.Tensor, reference: torch.Tensor, nfe: int, t0: float, t1: float,
           init_order: int | None, init_spacing: str | None, init_shift: float,
           init_grid: torch.Tensor | None) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """(init, theta, c) of the Adams-Bashforth start: the one asked for, or the candidate of least loss."""
    candidates = [(o, sp) for o, sp in INIT_CANDIDATES
                  if (init_order is None or o == init_order) and (init_spacing is None or sp == init_spacing)]
    if not candidates:
        candidates = [(init_order or 2, init_spacing or "uniform")]
    if init_grid is not None:
        candidates = sorted({(o, "given") for o, _ in candidates})
    best = None
    for order, spacing in candidates:
        grid = init_grid.detach().to("cpu", F64) if init_grid is not None else \
            time_grid(t0, t1, nfe, spacing, dtype=F64, time_shift=init_shift)
        if len(grid) != nfe + 1:
            raise ValueError(f"init_grid has {len(grid)} points; {nfe} steps need {nfe + 1}")
        coefficients = adams_coefficients(grid, order)
        with torch.no_grad():
            loss = float(_loss(velocity, x0, reference, grid, coefficients)) if len(candidates) > 1 else None
        if best is None or loss < best[0]["loss"]:
            best = ({"order": order, "spacing": spacing, "shift": init_shift, "loss": loss},
                    torch.log(grid.diff() / (t1 - t0)), coefficients)
    return best


def search_solver(
    velocity: Velocity,
    x0: torch.Tensor,
    reference: torch.Tensor,
    nfe: int,
    t0: float,
    t1: float,
    iterations: int = 300,
    lr: float = 2e-2,
    init_order: int | None = None,
    init_spacing: str | None = None,
    init_shift: float = 1.0,
    init_grid: torch.Tensor | None = None,
    fit_times: bool = True,
    batch_size: int | None = None,
    seed: int = 0,
    interpolant: str = "",
    fingerprint: str = "",
    state: SearchState | None = None,
    callback: Callable[[SearchState], None] | None = None,
    batch_velocity: Callable[[torch.Tensor], Velocity] | None = None,
) -> SearchState:
    """Fit an ``nfe``-step solver to ``reference`` endpoints of the noises ``x0`` (module docstring).

    Runs ``iterations`` Adam steps in all (peak learning rate ``lr``, warm-up and cosine decay), from ``state``
    when given (a search interrupted earlier, with the same settings) or from an Adams-Bashforth start:
    ``init_order`` on the ``init_spacing`` / ``init_shift`` grid (``time_grids``) or on ``init_grid``; what is
    left None is chosen among ``INIT_CANDIDATES`` by the loss on ``x0`` (one solve each, without gradients).
    In discrete time pass the snapped grid as ``init_grid`` with ``fit_times=False``. ``callback(state)`` is
    called after every step, e.g. to save it.

    Args:
        fit_times: fit the time points too; False keeps the initial grid and fits the coefficients only.
        batch_size: rows per Adam step (None: all); the mini-batches follow from ``seed`` and the iteration.
        interpolant, fingerprint: recorded in the solver's metadata, for ``check_solver``.
        batch_velocity: the velocity on the mini-batch of rows ``rows`` of ``x0``, where the field depends on
            the row (a class-conditional model's labels); None: ``velocity`` serves every batch.
    """
    if nfe < 1:
        raise InputError(f"nfe={nfe} is invalid: a searched solver takes at least 1 step")
    if reference.shape != x0.shape:
        raise ValueError(f"reference endpoints {tuple(reference.shape)} do not match the noises {tuple(x0.shape)}")
    settings = dict(nfe=nfe, t0=float(t0), t1=float(t1), iterations=int(iterations), lr=float(lr),
                    init_order=init_order, init_spacing=init_spacing, init_shift=float(init_shift),
                    init_grid=None if init_grid is None else init_grid.tolist(), fit_times=bool(fit_times),
                    batch_size=batch_size, seed=int(seed), interpolant=interpolant, fingerprint=fingerprint,
                    samples=int(x0.shape[0]), data=_data_hash(x0, reference))
    if state is None:
        init, theta, coefficients = _start(velocity, x0, reference, nfe, t0, t1, init_order, init_spacing,
                                           init_shift, init_grid)
        state = SearchState(settings, init, theta, coefficients, optimizer={})
    elif state.settings != settings:
        changed = sorted(k for k in settings if state.settings.get(k) != settings[k])
        raise InputError(f"cannot resume this search with other settings ({', '.join(changed)} differ)")

    theta = state.theta.clone().requires_grad_(fit_times)
    coefficients = state.coefficients.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([coefficients, theta] if fit_times else [coefficients], lr=lr)
    if state.optimizer:
        optimizer.load_state_dict(state.optimizer)
    lower = torch.tril(torch.ones(nfe, nfe, dtype=F64), -1)
    warm_up = max(1, iterations // 10)
    while state.iteration < iterations:
        k = state.iteration
        rows = _batch(x0.shape[0], batch_size, seed, k)
        noise, target = (x0, reference) if rows is None else (x0[rows.to(x0.device)], reference[rows.to(x0.device)])
        field = velocity if rows is None or batch_velocity is None else batch_velocity(rows)
        optimizer.zero_grad()
        loss = _loss(field, noise, target, _times(theta, t0, t1), coefficients * lower)
        best, value = state.best, float(loss.detach())
        if rows is None and (not best or value < best["loss"]):  # the loss of the parameters before step k
            best = {"loss": value, "iteration": k, "theta": theta.detach().clone(),
                    "coefficients": (coefficients * lower).detach().clone()}
        loss.backward()
        progress = (k - warm_up) / max(1, iterations - warm_up)
        scale = (k + 1) / warm_up if k < warm_up else 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        optimizer.step()
        state = SearchState(settings, state.init, theta.detach().clone(), coefficients.detach().clone(),
                            _clone(optimizer.state_dict()), k + 1, [*state.losses, value], best)
        if callback is not None:
            callback(state)
    return state
