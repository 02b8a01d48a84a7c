"""Post-hoc EMA snapshots during training (--ema-snapshots-every): they leave the run's weights as they are, hold the
power-function EMAs of the weights after each step, and a resumed run writes the snapshots of an uninterrupted one,
bit for bit."""

import pytest
import torch

from sitcli import runs
from sitcli.config import TrainConfig
from sitcli.errors import InputError
from sitcli.training import resume_config, train
from sitcli.training.posthoc_ema import PowerFunctionEMA
from helpers import assert_same_state, final_state, tiny

SNAP = dict(ema_snapshots_every=2, ema_sigma_rels=[0.05, 0.1])


def snapshots(run) -> dict[tuple[int, float], dict[str, torch.Tensor]]:
    return {(step, sigma_rel): runs.load_ema_snapshot(path) for step, sigma_rel, path in runs.list_ema_snapshots(run)}


def assert_same_snapshots(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][n], b[key][n]) for n in a[key]), key


@pytest.mark.slow
def test_snapshots_change_no_weight_and_hold_the_tracked_averages(tmp_path, one_thread):
    train(tiny(tmp_path, "plain", steps=6, ckpt_every=1), progress=False)
    train(tiny(tmp_path, "snap", steps=6, ckpt_every=1, **SNAP), progress=False)
    plain, snap = final_state(tmp_path / "plain")[1], final_state(tmp_path / "snap")[1]
    assert_same_state(plain, snap)  # model, EMA, optimizer moments, bit for bit
    log = [(tmp_path / name / "log.csv").read_text().splitlines() for name in ("plain", "snap")]
    assert [row.split(",")[:3] for row in log[0]] == [row.split(",")[:3] for row in log[1]]  # step, loss
    saved = snapshots(tmp_path / "snap")
    assert sorted(saved) == [(k, s) for k in (2, 4, 6) for s in (0.05, 0.1)]
    # The averages of the raw weights after steps 1..6 (each step's checkpoint), folded in by a tracker here.
    raw = [runs.load_checkpoint(p)["model"] for p in runs.list_checkpoints(tmp_path / "plain")]
    tracker = PowerFunctionEMA(raw[0], (0.05, 0.1))
    for step, weights in enumerate(raw, start=1):
        tracker.update(weights, step)
        if step % 2 == 0:
            for sigma_rel, average in zip(tracker.sigma_rels, tracker.averages):
                assert_same_snapshots({0: saved[(step, sigma_rel)]}, {0: average})
    assert all(t.dtype == torch.float32 for t in saved[(6, 0.1)].values())
    # Each snapshot is one float32 copy of the weights: K steps cost (widths) x (weights) bytes on disk.
    size = sum(t.numel() * 4 for t in raw[0].values())
    for _, _, path in runs.list_ema_snapshots(tmp_path / "snap"):
        assert size < path.stat().st_size < size + 20_000  # + the safetensors header


@pytest.mark.slow
def test_a_resumed_run_writes_the_snapshots_of_an_uninterrupted_one(tmp_path, one_thread):
    train(tiny(tmp_path, "straight", steps=8, ckpt_every=4, **SNAP), progress=False)
    train(tiny(tmp_path, "halves", steps=3, ckpt_every=3, **SNAP), progress=False)  # stops between two snapshots
    assert sorted(snapshots(tmp_path / "halves")) == [(2, 0.05), (2, 0.1)]
    train(resume_config(tmp_path / "halves", {"steps": 8}), resume=True, progress=False)
    assert_same_snapshots(snapshots(tmp_path / "straight"), snapshots(tmp_path / "halves"))
    a, b = final_state(tmp_path / "straight")[1], final_state(tmp_path / "halves")[1]
    assert_same_state(a, b)
    for x, y in zip(a["optimizer"]["posthoc_ema"]["averages"], b["optimizer"]["posthoc_ema"]["averages"]):
        assert_same_snapshots({0: x}, {0: y})
    assert a["optimizer"]["posthoc_ema"]["step"] == 8


def test_the_settings_are_checked_and_fixed_for_a_run(tmp_path):
    from sitcli.training.presets import apply_presets

    def check(**kw):
        apply_presets(TrainConfig(data="digits", **kw)).check()

    with pytest.raises(InputError, match="--ema-sigma-rels is a setting of post-hoc EMA: add --ema-snapshots-every"):
        check(ema_sigma_rels=[0.05])
    with pytest.raises(InputError, match=r"--ema-sigma-rels \[0.05, 0.05\]: pass one or more different widths"):
        check(ema_snapshots_every=10, ema_sigma_rels=[0.05, 0.05])
    with pytest.raises(InputError, match=r"--ema-sigma-rels 0.3: pass a finite number in \(0, 0.288675\)"):
        check(ema_snapshots_every=10, ema_sigma_rels=[0.05, 0.3])
    check(ema_snapshots_every=10, ema_sigma_rels=[0.075])
    from sitcli.training.posthoc_ema import EDM2_SIGMA_RELS, MAX_SIGMA_REL
    from sitcli.config import TRAIN_DOMAINS

    assert tuple(TrainConfig(data="digits").ema_sigma_rels) == EDM2_SIGMA_RELS
    assert TRAIN_DOMAINS["ema_sigma_rels"].hi == MAX_SIGMA_REL
    runs.write_config(tmp_path / "run", TrainConfig(data="digits", out=str(tmp_path / "run"), **SNAP).to_dict())
    with pytest.raises(InputError, match="was trained with --ema-snapshots-every 2; a resumed run keeps"):
        resume_config(tmp_path / "run", {"ema_snapshots_every": 5})
