"""`sit search-solver` (sitcli/search_solver.py) and `sit sample --method searched --solver FILE`: the solver file
beside the run, what sample.json records, the refusals of a solver made for something else, and resumption."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import sitcli.search_solver as job
from helpers import pngs
from sitcli.cli import app
from sitcli.sample_config import SampleConfig
from sitcli.errors import InputError
from sitcli.models import SiT_models
from sitcli.sample import sample
from sitcli.search_solver import SearchConfig, search
from sitcli.solver_file import file_sha256, read_solver, write_solver
from sitcli.transport.searched import model_fingerprint

runner = CliRunner()
FAST = dict(samples=8, iterations=6, reference_tol=1e-6)  # the references' tolerance kept loose for speed


def sit(*args):
    return runner.invoke(app, [str(a) for a in args])


def said(result) -> str:
    return " ".join(result.output.split())


def random_weights(path, seed=0):
    """SiT-Ti/4 for the 8x8 digits with every tensor random (trained weights would give a nearly linear field)."""
    torch.manual_seed(seed)
    model = SiT_models["SiT-Ti/4"](input_size=8, in_channels=1, num_classes=10)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.05)
    save_file(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("searched")
    return random_weights(root / "w.safetensors"), random_weights(root / "other.safetensors", seed=1)


@pytest.fixture(scope="module")
def solver(weights, one_thread):
    """A 4-step solver searched for ``w.safetensors`` (written beside it), unguided."""
    result = search(SearchConfig(ckpt=str(weights[0]), nfe=4, **FAST), progress=False)
    return result.out


@pytest.mark.slow
def test_search_solver_cli_writes_a_solver_that_sit_sample_runs_and_records(weights, tmp_path, one_thread):
    w, _ = weights
    out = tmp_path / "nfe3.safetensors"
    result = sit("search-solver", "--ckpt", w, "--nfe", 3, "--samples", 8, "--iterations", 5, "--reference-tol", 1e-6,
                 "--batch-size", 4, "--cfg-scale", 1.5, "--out", out, "--threads", 1)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: a 3-step solver" in said(result) and not (tmp_path / "nfe3.search").exists()
    solver = read_solver(out)
    meta = solver.metadata
    assert solver.nfe == 3 and meta["fingerprint"] == model_fingerprint(load_file(w))
    assert meta["interpolant"] == "linear"
    assert meta["guidance"]["cfg_scale"] == 1.5 and meta["iterations"] == 5 and (meta["t0"], meta["t1"]) == (0.0, 1.0)
    # The file is small: its times and weights, float64.
    assert set(load_file(out)) == {"times", "coefficients"} and out.stat().st_size < 4096

    result = sit("sample", "--ckpt", w, "--method", "searched", "--solver", out, "--cfg-scale", 1.5, "--num", 3,
                 "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert "NFE per sample 3.0" in said(result) and len(pngs(tmp_path / "s")) == 3
    recorded = json.loads((tmp_path / "s" / "sample.json").read_text())
    assert recorded["method"] == "searched" and recorded["steps"] == 3
    assert recorded["solver"] == str(out.resolve()) and recorded["solver_sha256"] == file_sha256(out)
    # Another solver file (the same search, longer) may not add images to that folder.
    other = tmp_path / "nfe3-b.safetensors"
    assert sit("search-solver", "--ckpt", w, "--nfe", 3, "--samples", 8, "--iterations", 6, "--reference-tol", 1e-6,
               "--cfg-scale", 1.5, "--out", other).exit_code == 0
    result = sit("sample", "--ckpt", w, "--method", "searched", "--solver", other, "--cfg-scale", 1.5, "--num", 4,
                 "--out", tmp_path / "s")
    assert result.exit_code == 2 and "solver, solver_sha256 differ" in said(result)


def test_a_solver_made_for_something_else_is_refused_before_anything_is_written(weights, solver, tiny_run, tmp_path):
    w, other = weights
    refusals = [
        ([other], "fitted for another model"),
        ([w, "--steps", 5], "takes 4 steps, not --steps 5"),
        ([w, "--cfg-scale", 2], "searched under other guidance (cfg_scale differ)"),
        ([w, "--sample-eps", 0.01], "runs from t=0.0 to 1.0, the sampler from t=0.01 to 0.99"),
        ([w, "--interpolant", "gvp"], "fitted for the linear interpolant, not gvp"),
    ]
    for i, ((ckpt, *flags), message) in enumerate(refusals):
        out = tmp_path / f"s{i}"
        result = sit("sample", "--ckpt", ckpt, "--method", "searched", "--solver", solver, "--num", 2, "--out", out,
                     *flags)
        assert result.exit_code == 2 and message in said(result), (flags, said(result))
        assert not out.exists()
    # The fingerprint is of the weights loaded: a run's EMA solver does not serve its raw weights.
    ema = search(SearchConfig(ckpt=str(tiny_run), nfe=2, out=str(tmp_path / "ema.safetensors"), **FAST),
                 progress=False).out
    result = sit("sample", "--ckpt", tiny_run, "--no-ema", "--method", "searched", "--solver", ema, "--num", 2,
                 "--out", tmp_path / "raw")
    assert result.exit_code == 2 and "fitted for another model" in said(result) and not (tmp_path / "raw").exists()


@pytest.mark.parametrize("flags,message", [
    (["--solver", "x.safetensors"], "--solver is read by --sampler ode --method searched only"),
    (["--method", "heun", "--solver", "x.safetensors"], "--solver is read by --sampler ode --method searched only"),
    (["--sampler", "sde", "--solver", "x.safetensors"], "--solver is read by --sampler ode --method searched only"),
    (["--method", "searched"], "--method searched needs --solver FILE"),
    (["--method", "searched", "--solver", "x.safetensors", "--spacing", "uniform"], "drop --time-shift and --spacing"),
    (["--method", "searched", "--solver", "x.safetensors", "--time-shift", 3], "drop --time-shift and --spacing"),
    (["--method", "searched", "--solver", "missing.safetensors"], "--solver missing.safetensors does not exist"),
])
def test_solver_flags_that_do_nothing_or_are_missing_are_refused(tiny_run, tmp_path, flags, message):
    result = sit("sample", "--ckpt", tiny_run, "--num", 2, "--out", tmp_path / "s", *flags)
    assert result.exit_code == 2 and message in said(result), said(result)
    assert not (tmp_path / "s").exists()


def test_a_file_that_is_not_a_solver_is_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="is not a readable solver file"):
        read_solver(bad)
    save_file({"weight": torch.zeros(2)}, tmp_path / "weights.safetensors")
    with pytest.raises(InputError, match="not a searched solver's times and coefficients"):
        read_solver(tmp_path / "weights.safetensors")


def test_the_solver_file_round_trips_and_the_library_samples_with_it(weights, solver):
    from sitcli.loading import load_model
    from sitcli.transport import sample_ode

    back = read_solver(solver)
    copy = solver.parent / "copy.safetensors"
    write_solver(copy, back)
    again = read_solver(copy)
    assert torch.equal(again.times, back.times) and torch.equal(again.coefficients, back.coefficients)
    assert again.metadata == back.metadata
    loaded = load_model(weights[0])
    x0 = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, nfe = sample_ode(loaded.transport, loaded.model, x0, method="searched", solver=back,
                            model_kwargs={"y": torch.tensor([1, 2])})
    assert nfe == 4 and bool(torch.isfinite(x).all())


def test_search_settings_are_refused_where_they_are_defined(tmp_path):
    with pytest.raises(InputError, match="^--nfe 0: pass an integer >= 1$"):
        SearchConfig(ckpt="run", nfe=0)
    with pytest.raises(InputError, match="--out x.pt: name a .safetensors file"):
        SearchConfig(ckpt="run", nfe=5, out="x.pt")
    with pytest.raises(InputError, match="--guidance-model .* and --cfg-scale .* do not combine"):
        SearchConfig(ckpt="run", nfe=5, cfg_scale=2.0, guidance_model="weak")
    with pytest.raises(InputError, match="pass one of them"):
        SearchConfig(ckpt="run", nfe=5, resume=True, overwrite=True)


def test_an_existing_solver_is_kept_unless_overwrite(weights, solver, tmp_path):
    before = solver.read_bytes()
    with pytest.raises(InputError, match="exists: pass --overwrite"):
        search(SearchConfig(ckpt=str(weights[0]), nfe=4, **FAST), progress=False)
    assert solver.read_bytes() == before
    with pytest.raises(InputError, match="no interrupted search to resume"):
        search(SearchConfig(ckpt=str(weights[0]), nfe=4, out=str(tmp_path / "new.safetensors"), resume=True, **FAST),
               progress=False)


def _interrupt_after(monkeypatch, iteration):
    """Make the search stop with Ctrl-C once the state after ``iteration`` Adam steps is saved."""
    real = job.search_solver

    def interrupted(*args, callback, **kwargs):
        def save_then_stop(state):
            callback(state)
            if state.iteration == iteration:
                raise KeyboardInterrupt

        return real(*args, callback=save_then_stop, **kwargs)

    monkeypatch.setattr(job, "search_solver", interrupted)


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [None, 3])
def test_an_interrupted_search_resumes_to_the_uninterrupted_solver_bit_for_bit(weights, tmp_path, monkeypatch,
                                                                              one_thread, batch_size):
    """Full batches (the best iterate is kept across the interruption) and mini-batches with class labels (their
    order is a function of the iteration); the references are computed once and read back on resumption."""
    common = dict(ckpt=str(weights[0]), nfe=3, samples=7, iterations=8, reference_tol=1e-6, batch_size=batch_size,
                  class_labels="1,4,7" if batch_size else None, seed=3)
    straight = search(SearchConfig(out=str(tmp_path / "straight.safetensors"), **common), progress=False)
    out = tmp_path / "resumed.safetensors"
    _interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        search(SearchConfig(out=str(out), **common), progress=False)
    work = tmp_path / "resumed.search"
    assert sorted(p.name for p in work.iterdir()) == ["reference.safetensors", "search.json", "state.pt"]
    assert not out.exists()
    monkeypatch.undo()
    # Other settings are refused while that search is unfinished; the same ones resume it.
    with pytest.raises(InputError, match=r"holds an interrupted search with other settings \(lr differ\)"):
        search(SearchConfig(out=str(out), **{**common, "lr": 0.01}), progress=False)
    resumed = search(SearchConfig(out=str(out), resume=True, **common), progress=False)
    assert resumed.resumed_from == 3 and resumed.reference_nfe == 0 < straight.reference_nfe
    assert not work.exists()
    a, b = read_solver(straight.out), read_solver(out)
    assert torch.equal(a.times, b.times) and torch.equal(a.coefficients, b.coefficients)
    assert a.metadata == b.metadata and resumed.loss == straight.loss
    assert straight.loss < straight.init_loss or batch_size  # a full-batch search never ends worse than it began


@pytest.mark.slow
def test_a_discrete_time_model_gets_a_solver_on_its_training_times(tmp_path, one_thread):
    from sitcli.config import TrainConfig
    from sitcli.loading import load_model
    from sitcli.training import train
    from sitcli.transport.time_grids import snap_to_grid

    run = tmp_path / "run"
    train(TrainConfig(data="digits", out=str(run), model="SiT-Ti/4", batch_size=8, steps=2, num_timesteps=30,
                      log_every=1, ckpt_every=2, sample_every=0), progress=False)
    result = search(SearchConfig(ckpt=str(run), nfe=5, **FAST), progress=False)
    assert result.out == run / "solver-nfe5.safetensors"
    solver = read_solver(result.out)
    training = load_model(run).transport.timestep_grid(dtype=torch.float64)
    assert len(training) == 30 and solver.metadata["fit_times"] is False
    torch.testing.assert_close(snap_to_grid(solver.times, training), solver.times, rtol=0, atol=1e-12)
    sample(SampleConfig(ckpt=str(run), method="searched", solver=str(result.out), num=2, out=str(tmp_path / "s")),
           progress=False)
    assert len(pngs(tmp_path / "s")) == 2


def test_training_evaluation_refuses_the_searched_method():
    from sitcli.config import TrainConfig
    from sitcli.training.presets import apply_presets

    with pytest.raises(InputError, match="--eval-method searched needs a solver searched for fixed weights"):
        apply_presets(TrainConfig(data="digits", eval_method="searched")).check()
    evaluated = dict(eval_every=10, eval_ref="ref.npz")
    apply_presets(TrainConfig(data="digits", eval_method="dpm++2m", **evaluated)).check()  # exponential ones: welcome
