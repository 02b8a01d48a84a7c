"""The searched solver (``transport/searched.py``): its parameterisation contains sit's Adams-Bashforth, the search
beats DPM-Solver++ 2M on held-out noises of the mixture, and it is deterministic, resumable and tied to a model."""


import pytest
import torch

from sitcli.errors import InputError
from sitcli.guidance import ClassifierFreeGuidance
from sitcli.transport import GaussianMixture, Transport, get_interpolant
from sitcli.transport.adams import adams_bashforth
from sitcli.transport.multistep import dpm_solver_pp, unipc
from sitcli.transport.samplers import CountingModel
from sitcli.transport.searched import (
    INIT_CANDIDATES,
    SearchedSolver,
    SearchState,
    adams_coefficients,
    check_solver,
    model_fingerprint,
    reference_endpoints,
    search_solver,
    searched_sample,
)
from sitcli.transport.time_grids import time_grid
from helpers import random_sit

F64 = torch.float64
GM = GaussianMixture([[-1.0], [2.0]], [0.3, 0.5], [0.4, 0.6])


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


def mixture_velocity(name):
    interpolant = get_interpolant(name)
    return lambda t, x: GM.velocity(interpolant, x, t.expand(x.shape[0]))


def noise(n, seed):
    return torch.randn(n, 1, dtype=F64, generator=torch.Generator().manual_seed(seed))


def test_zero_coefficients_are_euler_and_adams_coefficients_are_sits_adams():
    velocity = mixture_velocity("linear")
    x0 = noise(40, 0)
    grid = time_grid(0.0, 1.0, 9, "cosine", dtype=F64)
    x, nfe = searched_sample(velocity, x0, SearchedSolver(grid, adams_coefficients(grid, 4)))
    torch.testing.assert_close(x, adams_bashforth(velocity, x0, grid, order=4), rtol=0, atol=1e-12)
    assert nfe == 9
    euler = x0
    for t, t_next in zip(grid[:-1], grid[1:]):
        euler = euler + (t_next - t) * velocity(t, euler)
    torch.testing.assert_close(searched_sample(velocity, x0, SearchedSolver(grid, torch.zeros(9, 9, dtype=F64)))[0],
                               euler, rtol=0, atol=1e-14)


@pytest.mark.slow
@pytest.mark.parametrize("interpolant", ["linear", "gvp"])
def test_a_searched_5_step_solver_beats_dpm_solver_2m_on_held_out_noises(interpolant):
    """Fitted on 128 noises (120 Adam steps from AB3 on the uniform grid, the best start), measured on 1000
    others against dopri5 at 1e-10 (mean |x - reference|), DPM-Solver++ 2M and UniPC on uniform grids (the better
    grid for these): linear: searched 1.4e-2, 2M 9.9e-2, UniPC 1.0e-1; gvp: searched 1.1e-2, 2M 1.2e-1, UniPC 1.2e-1."""
    velocity = mixture_velocity(interpolant)
    t0, t1 = Transport(interpolant, "velocity").sample_interval()
    train, held_out = noise(128, 1), noise(1000, 2)
    state = search_solver(velocity, train, reference_endpoints(velocity, train, t0, t1, 1e-10, 1e-10), 5, t0, t1,
                          iterations=120, interpolant=interpolant)
    reference = reference_endpoints(velocity, held_out, t0, t1, 1e-10, 1e-10)
    x, nfe = searched_sample(velocity, held_out, state.solver())
    searched = (x - reference).abs().mean().item()
    grid = time_grid(t0, t1, 5, "uniform", dtype=F64)
    dpm = (dpm_solver_pp(velocity, held_out, grid, get_interpolant(interpolant))[0] - reference).abs().mean().item()
    uni = (unipc(velocity, held_out, grid, get_interpolant(interpolant))[0] - reference).abs().mean().item()
    assert nfe == 5 and state.losses[-1] < state.losses[0] / 10
    assert searched < min(dpm, uni) / 4, (searched, dpm, uni)


def small_search(iterations=7, state=None, callback=None, **overrides):
    velocity = mixture_velocity("gvp")
    x0 = noise(60, 5)
    settings = dict(iterations=iterations, lr=0.05, batch_size=25, seed=3, interpolant="gvp", fingerprint="abc")
    settings.update(overrides)
    return search_solver(velocity, x0, reference_endpoints(velocity, x0, 0.0, 1.0), 4, 0.0, 1.0, state=state,
                         callback=callback, **settings)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("batch_size", [25, None])
def test_a_resumed_search_ends_where_an_uninterrupted_one_does(batch_size):
    """A search of 7 steps is killed after its third (its callback saved the state, through to_dict, as it would
    to a file), then resumed from that state. With mini-batches of 25 (two per epoch of 60 noises) the break
    falls inside an epoch; the learning-rate schedule and the batches depend on the iteration only. With full
    batches the best iterate is carried over too."""
    straight = small_search(batch_size=batch_size)
    saved = []

    def save_then_die(state):
        saved.append(state.to_dict())
        if state.iteration == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        small_search(callback=save_then_die, batch_size=batch_size)
    resumed = small_search(state=SearchState.from_dict(saved[-1]), batch_size=batch_size)
    assert resumed.iteration == straight.iteration == 7 and resumed.init == straight.init
    assert torch.equal(resumed.theta, straight.theta) and torch.equal(resumed.coefficients, straight.coefficients)
    assert resumed.losses == straight.losses and bool(resumed.best) == (batch_size is None)
    a, b = resumed.solver(), straight.solver()
    assert torch.equal(a.times, b.times) and torch.equal(a.coefficients, b.coefficients) and a.metadata == b.metadata
    assert not torch.equal(saved[-1]["theta"], straight.theta)  # it did move on after the break
    assert torch.equal(small_search(batch_size=batch_size).theta, straight.theta)  # and runs repeat bit for bit
    with pytest.raises(InputError, match="lr"):
        small_search(state=SearchState.from_dict(saved[-1]), lr=0.1, batch_size=batch_size)
    with pytest.raises(InputError, match="data"):
        search_solver(mixture_velocity("gvp"), noise(60, 6), noise(60, 6), 4, 0.0, 1.0, iterations=7, lr=0.05,
                      batch_size=batch_size, seed=3, interpolant="gvp", fingerprint="abc",
                      state=SearchState.from_dict(saved[-1]))


def test_the_search_starts_from_the_best_adams_candidate_and_improves_on_it():
    velocity = mixture_velocity("gvp")
    x0 = noise(60, 5)
    reference = reference_endpoints(velocity, x0, 0.0, 1.0)
    state = search_solver(velocity, x0, reference, 4, 0.0, 1.0, iterations=30, lr=0.05)
    losses = {}
    for order, spacing in INIT_CANDIDATES:
        grid = time_grid(0.0, 1.0, 4, spacing, dtype=F64)
        x, _ = searched_sample(velocity, x0, SearchedSolver(grid, adams_coefficients(grid, order)))
        losses[order, spacing] = (x - reference).pow(2).mean().item()
    assert state.init["loss"] == pytest.approx(min(losses.values()), rel=1e-12)
    assert losses[state.init["order"], state.init["spacing"]] == min(losses.values())
    x, _ = searched_sample(velocity, x0, state.solver())
    assert (x - reference).pow(2).mean().item() < min(losses.values()) / 3


def test_fitting_coefficients_only_keeps_the_grid():
    state = small_search(4, fit_times=False, init_spacing="uniform")
    torch.testing.assert_close(state.solver().times, time_grid(0.0, 1.0, 4, "uniform", dtype=F64), rtol=0,
                               atol=1e-15)
    assert state.solver().coefficients.abs().sum() > 0


def test_in_discrete_time_the_snapped_grid_is_kept():
    """A model trained on 25 time points: the search keeps the snapped grid (its times stay training times)
    and picks the Adams order on it."""
    transport = Transport("gvp", "velocity", num_timesteps=25)
    grid = transport.time_grid(0.0, 1.0, 4, dtype=F64, spacing="cosine")
    state = small_search(5, fit_times=False, init_grid=grid)
    times = state.solver().times
    torch.testing.assert_close(times, grid, rtol=0, atol=1e-15)
    snapped = transport.timestep_grid(dtype=F64)
    assert bool(((times[:, None] - snapped[None]).abs().min(dim=1).values < 1e-15).all())
    assert state.init["spacing"] == "given" and state.init["order"] in (2, 3, 4)


def test_solver_round_trip_and_refusals():
    solver = small_search(2).solver()
    again = SearchedSolver.from_dict(solver.to_dict())
    assert torch.equal(again.times, solver.times) and torch.equal(again.coefficients, solver.coefficients)
    assert again.metadata == solver.metadata and again.nfe == 4 and solver.metadata["iterations"] == 2
    check_solver(again, "abc", "gvp", 0.0, 1.0)
    with pytest.raises(InputError, match="another model"):
        check_solver(again, "abd", "gvp", 0.0, 1.0)
    with pytest.raises(InputError, match="interpolant"):
        check_solver(again, "abc", "linear", 0.0, 1.0)
    with pytest.raises(InputError, match="runs from"):
        check_solver(again, "abc", "gvp", 1e-3, 1.0)
    bad = solver.to_dict()
    bad["coefficients"] = bad["coefficients"] + torch.eye(4, dtype=F64)
    with pytest.raises(InputError, match="lower-triangular"):
        SearchedSolver.from_dict(bad)
    with pytest.raises(InputError, match="not a searched solver"):
        SearchedSolver.from_dict({"format": "something else"})


def test_fingerprint_tells_models_apart():
    weights = random_sit(0).state_dict()
    assert model_fingerprint(weights) == model_fingerprint({k: v.clone() for k, v in weights.items()})
    assert model_fingerprint(weights) != model_fingerprint(random_sit(1).state_dict())
    changed = {k: v.clone() for k, v in weights.items()}
    changed["x_embedder.proj.weight"].view(-1)[0] += 1e-3
    assert model_fingerprint(weights) != model_fingerprint(changed)
    changed = dict(weights)
    changed["extra.bias"] = torch.zeros(3)
    assert model_fingerprint(weights) != model_fingerprint(changed)


def test_search_runs_through_a_guided_network_and_counts_one_evaluation_per_step():
    """The phase-2 path: a CountingModel around classifier-free guidance of a tiny SiT, the velocity from the
    transport; gradients reach the times through the network's time embedding."""
    model = random_sit(0)
    transport = Transport("linear", "velocity")
    y = torch.tensor([0, 2, 4])
    counter = CountingModel(ClassifierFreeGuidance(model, 1.5, null_class=model.num_classes), {"y": y})

    def velocity(t, x):
        output, t_batch = counter(x, t)
        return transport.velocity(output, x, t_batch)

    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = reference_endpoints(velocity, x0, 0.0, 1.0, 1e-4, 1e-4)
    counter.nfe = 0
    state = search_solver(velocity, x0, reference, 3, 0.0, 1.0, iterations=2, lr=0.05, init_order=2,
                          init_spacing="uniform")
    assert counter.nfe == 2 * 3  # an explicit start: no candidates to try (each would cost 3 more)
    assert state.solver().times[1:-1].sub(torch.tensor([1 / 3, 2 / 3], dtype=F64)).abs().max() > 1e-4
    counter.nfe = 0
    with torch.no_grad():
        _, nfe = searched_sample(velocity, x0, state.solver())
    assert nfe == counter.nfe == 3


def test_bad_search_arguments():
    velocity = mixture_velocity("linear")
    x0 = noise(4, 0)
    with pytest.raises(InputError, match="nfe=0"):
        search_solver(velocity, x0, x0, 0, 0.0, 1.0)
    with pytest.raises(ValueError, match="do not match"):
        search_solver(velocity, x0, x0[:2], 3, 0.0, 1.0)
    with pytest.raises(ValueError, match="init_grid"):
        search_solver(velocity, x0, x0, 3, 0.0, 1.0, init_grid=torch.linspace(0, 1, 3, dtype=F64))


def test_adams_coefficients_warm_up_in_order():
    """Step 0 is Euler, step 1 second order, then the last ``order`` velocities."""
    grid = torch.tensor([0.0, 0.1, 0.3, 0.6, 1.0], dtype=F64)
    c = adams_coefficients(grid, 3)
    assert c[0].abs().sum() == 0 and c[1, 0] != 0 and c[3, 0] == 0 and c[3, 1] != 0 and c[3, 2] != 0
    # On step 1 AB2 with steps h0 = 0.1, h1 = 0.2: weight of v_0 is -h1 / (2 h0) = -1.
    assert c[1, 0].item() == pytest.approx(-1.0, abs=1e-12)
