"""sitcli/ema.py (`sit ema`): the EMA of a width rebuilt from a run's snapshots matches one tracked directly, is
written as a run that `sit sample`, `sit fid` and `sit convert` read, records how it was made, and bad requests are
refused before anything is written."""

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sitcli import runs
from sitcli.cli import app
from sitcli.ema import EmaConfig, reconstruct
from sitcli.errors import InputError
from sitcli.training.posthoc_ema import solve_posthoc_coefficients

runner = CliRunner(env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def snapshot_run(tiny_run, tmp_path):
    """tiny_run with snapshots of widths 0.05 and 0.1 at steps 1..4 written by hand (random weights around its own)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    weights = runs.load_checkpoint(runs.latest_checkpoint(run))["ema"]
    g = torch.Generator().manual_seed(0)
    for step in range(1, 5):
        for sigma_rel in (0.05, 0.1):
            noisy = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in weights.items()}
            runs.save_ema_snapshot(run, step, sigma_rel, noisy)
    return run


def test_the_result_is_the_least_squares_combination_and_records_it(snapshot_run, tmp_path):
    out = tmp_path / "ema"
    result = reconstruct(EmaConfig(str(snapshot_run), 0.075, str(out)))
    assert result.step == 4 and len(result.coefficients) == 8
    found = runs.list_ema_snapshots(snapshot_run)
    x = solve_posthoc_coefficients([s for s, _, _ in found], [w for _, w, _ in found], 4, 0.075)
    np.testing.assert_allclose([c for c, _, _ in result.coefficients], x, rtol=0, atol=1e-12)
    want = {k: sum(c * runs.load_ema_snapshot(p)[k].double() for c, (_, _, p) in zip(x, found)).float()
            for k in runs.load_ema_snapshot(found[0][2])}
    state = runs.load_checkpoint(out / "checkpoints" / "0000004")
    for name in ("model", "ema"):  # the one reconstruction, as both weight sets
        assert state[name].keys() == want.keys()
        for k in want:
            torch.testing.assert_close(state[name][k], want[k], rtol=1e-6, atol=1e-7)
    record = state["state"]["posthoc_ema"]
    assert (record["sigma_rel"], record["step"], record["data"]) == (0.075, 4, "digits")
    assert record["fit_error"] == pytest.approx(result.fit_error) and 0 < result.fit_error < 0.05
    assert [c["coefficient"] for c in record["coefficients"]] == pytest.approx(list(x), abs=1e-12)
    assert {c["file"] for c in record["coefficients"]} == {p.name for _, _, p in found}
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == "external" and config["steps"] == 4 and config["model"] == "SiT-Ti/4"
    # A tracked width at a snapshot's step is that snapshot.
    reconstruct(EmaConfig(str(snapshot_run), 0.1, str(tmp_path / "own"), step=2))
    own = runs.load_checkpoint(tmp_path / "own" / "checkpoints" / "0000002")["ema"]
    snap = runs.load_ema_snapshot(snapshot_run / runs.SNAPSHOTS / "0000002-0.1.safetensors")
    assert all(torch.allclose(own[k], snap[k], rtol=0, atol=1e-7) for k in snap)


@pytest.mark.slow
def test_sample_fid_and_convert_read_the_result(snapshot_run, tmp_path, stand_in, one_thread):
    result = invoke("ema", snapshot_run, "--sigma-rel", 0.075, "--out", tmp_path / "ema")
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())
    assert "rebuilt the EMA of sigma_rel 0.075 at step 4 from 8 snapshots" in shown and "profile fit error" in shown
    for out in ("a", "b"):
        sampled = invoke("sample", "--ckpt", tmp_path / "ema", "--num-samples", 6, "--steps", 2, "--seed",
                         int(out == "b"), "--out", tmp_path / out)
        assert sampled.exit_code == 0, sampled.output
    fid = invoke("fid", tmp_path / "a", tmp_path / "b", "--num-workers", 0, "--device", "cpu")
    assert fid.exit_code == 0 and "FID" in fid.output, fid.output
    converted = invoke("convert", tmp_path / "ema", tmp_path / "SiT-ema.pt")
    assert converted.exit_code == 0, converted.output
    from sitcli.loading import load_model

    a, b = load_model(tmp_path / "ema"), load_model(tmp_path / "SiT-ema.pt")
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    resumed = invoke("train", "--resume", tmp_path / "ema", "--steps", 10)
    assert resumed.exit_code == 2 and "it cannot be resumed" in " ".join(resumed.output.split())


def test_refusals_come_before_anything_is_written(snapshot_run, tiny_run, tmp_path):
    out = tmp_path / "out"
    cases = [
        ((tiny_run, 0.075), "holds no post-hoc EMA snapshots in ema_snapshots/; it was trained without them: train "
                            "with --ema-snapshots-every K"),
        ((snapshot_run, 0.01), "--sigma-rel 0.01 is outside what the snapshots of"),
        ((snapshot_run, 0.075, 3.5), "--step 3.5: pass an integer >= 1"),
        ((snapshot_run, 0.3), r"--sigma-rel 0.3: pass a finite number in (0, 0.288675)"),
        ((snapshot_run, 0.075, 7), "no snapshot at step 7: reconstruct at a snapshot's step (1 .. 4)"),
    ]
    for args, message in cases:
        with pytest.raises(InputError) as err:
            reconstruct(EmaConfig(str(args[0]), args[1], str(out), *args[2:]))
        assert message in str(err.value), str(err.value)
        assert not out.exists()
    with pytest.raises(InputError) as err:
        reconstruct(EmaConfig(str(snapshot_run), 0.01, str(out)))
    low, high = (float(v) for v in str(err.value).split(") rebuild ")[1].split(":")[0].split(" .. "))
    assert low < 0.05 and 0.1 < high  # the widths it does rebuild, the tracked ones among them
    with pytest.raises(InputError, match="must lie outside the run"):
        EmaConfig(str(snapshot_run), 0.075, str(snapshot_run / "ema"))
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists: pass --overwrite"):
        reconstruct(EmaConfig(str(snapshot_run), 0.075, str(out)))
    assert (out / "keep.txt").read_text() == "mine"
    reconstruct(EmaConfig(str(snapshot_run), 0.075, str(out), overwrite=True))
    assert not (out / "keep.txt").exists() and runs.latest_checkpoint(out) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]  # no staging folder left behind


@pytest.mark.slow
def test_a_rebuilt_0_075_from_a_training_run_matches_the_ema_tracked_directly(tmp_path, one_thread):
    """One run tracks widths 0.05, 0.1 and 0.075 (every 2 of 30 steps); rebuilt from the 0.05 / 0.1 snapshots
    alone, the 0.075 EMA matches the one tracked, to the stated tolerance."""
    from sitcli.config import TrainConfig
    from sitcli.training import train

    run = tmp_path / "run"
    train(TrainConfig(data="digits", out=str(run), model="SiT-Ti/4", batch_size=16, steps=30, lr=1e-3,
                      sample_every=0, ckpt_every=30, ema_snapshots_every=2, ema_sigma_rels=[0.05, 0.1, 0.075]),
          progress=False)
    direct = runs.load_ema_snapshot(run / runs.SNAPSHOTS / "0000030-0.075.safetensors")
    others = [runs.load_ema_snapshot(run / runs.SNAPSHOTS / f"0000030-{w}.safetensors") for w in (0.05, 0.1)]
    for path in (run / runs.SNAPSHOTS).glob("*-0.075.safetensors"):
        path.unlink()
    result = reconstruct(EmaConfig(str(run), 0.075, str(tmp_path / "ema")))
    rebuilt = runs.load_checkpoint(tmp_path / "ema" / "checkpoints" / "0000030")["ema"]
    flat = {n: torch.cat([w[k].flatten() for k in sorted(direct)]) for n, w in
            (("direct", direct), ("rebuilt", rebuilt), ("a", others[0]), ("b", others[1]))}
    error = float((flat["rebuilt"] - flat["direct"]).norm())
    spread = float((flat["a"] - flat["b"]).norm())  # how far apart the two inputs are
    assert result.fit_error < 0.005  # the profiles: 0.39% apart (15 snapshot steps of each width)
    assert error < 2e-3 * spread  # measured 3.9e-4 of it
    assert error < 2e-5 * float(flat["direct"].norm())  # measured 4.2e-6 of |EMA|
