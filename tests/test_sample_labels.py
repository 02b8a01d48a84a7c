"""Balanced labels (SampleConfig.labels, TrainConfig.eval_labels): exactly N / K of each class through the real
``sample()``, the same labels and images for any batch size, restart or number of ranks, refused before anything
is written when K does not divide N."""

import collections
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sitcli.config import TrainConfig

from sitcli.sample_config import SampleConfig
from sitcli.errors import InputError
from sitcli.sample import sample
from sitcli.seeds import balanced_labels
from helpers import assert_same_images, pngs, torchrun


def labels(folder: Path) -> list[int]:
    with open(folder / "labels.csv", newline="") as f:
        return [int(row["label"]) for row in csv.DictReader(f)]


def draw(run, out, **kw):
    return sample(SampleConfig(ckpt=str(run), out=str(out), steps=2, **kw), progress=False)


def test_balanced_draws_exactly_n_over_k_of_each_class_and_records_it(tiny_run, tmp_path, one_thread):
    draw(tiny_run, tmp_path / "b", num=30, batch_size=7, labels="balanced")
    got = labels(tmp_path / "b")
    assert collections.Counter(got) == {k: 3 for k in range(10)}  # the digits' 10 classes, 3 each
    assert got == balanced_labels(0, range(30), 30, 10).tolist()
    assert json.loads((tmp_path / "b" / "sample.json").read_text())["labels"] == "balanced"
    # Every block of 10 consecutive indices holds each class once: any multiple of K indices from 0 is balanced.
    assert all(sorted(got[i : i + 10]) == list(range(10)) for i in range(0, 30, 10))
    draw(tiny_run, tmp_path / "r", num=30, batch_size=7)
    random = labels(tmp_path / "r")
    assert max(collections.Counter(random).values()) > 3  # the default draws each index's label on its own
    assert json.loads((tmp_path / "r" / "sample.json").read_text())["labels"] == "random"
    # The starting noise is the index's either way: class by class, an image differs only through its label.
    same = [i for i in range(30) if got[i] == random[i]]
    b, r = pngs(tmp_path / "b"), pngs(tmp_path / "r")
    assert same and all(np.array_equal(b[f"{i:06d}.png"], r[f"{i:06d}.png"]) for i in same)


def test_balanced_labels_do_not_depend_on_batches_or_restarts(tiny_run, tmp_path, one_thread):
    draw(tiny_run, tmp_path / "once", num=20, batch_size=20, labels="balanced")
    draw(tiny_run, tmp_path / "parts", num=10, batch_size=3, labels="balanced")  # a first run of 10 ...
    (tmp_path / "parts" / "000004.png").unlink()  # ... one image lost ...
    result = draw(tiny_run, tmp_path / "parts", num=20, batch_size=4, labels="balanced")  # ... extended to 20
    assert result.new == 11
    assert labels(tmp_path / "parts") == labels(tmp_path / "once")
    assert_same_images(pngs(tmp_path / "parts"), pngs(tmp_path / "once"))


def test_refused_before_anything_is_written(tiny_run, tmp_path, one_thread):
    with pytest.raises(InputError, match=r"--labels balanced draws exactly N / K of each class, but --num-samples 25 "
                                         r"is not a multiple of the 10 classes: pass --num-samples 20 or 30"):
        draw(tiny_run, tmp_path / "x", num=25, labels="balanced")
    assert not (tmp_path / "x").exists()
    with pytest.raises(InputError, match="--class-labels fixes every label"):
        SampleConfig(ckpt="run", class_labels="3", labels="balanced")
    with pytest.raises(InputError, match="unknown --labels 'equal'; choose one of random, balanced"):
        SampleConfig(ckpt="run", labels="equal")
    # A folder drawn with random labels is not extended with balanced ones (the images would disagree).
    draw(tiny_run, tmp_path / "r", num=10)
    with pytest.raises(InputError, match=r"other settings \(labels differ\)"):
        draw(tiny_run, tmp_path / "r", num=20, labels="balanced")


def test_a_folder_from_before_the_setting_existed_is_extended_with_random_labels(tiny_run, tmp_path, one_thread):
    draw(tiny_run, tmp_path / "old", num=4)
    settings = tmp_path / "old" / "sample.json"
    saved = json.loads(settings.read_text())
    del saved["labels"], saved["recipe"], saved["recipe_overrides"]
    settings.write_text(json.dumps(saved))  # what sit wrote before these settings
    assert draw(tiny_run, tmp_path / "old", num=6).new == 2
    with pytest.raises(InputError, match=r"labels differ"):
        draw(tiny_run, tmp_path / "old", num=10, labels="balanced")


@pytest.mark.slow
@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs gloo"
)
def test_two_ranks_draw_the_labels_and_images_of_one_process(tiny_run, tmp_path, one_thread):
    torchrun("-m", "sitcli", "sample", "--ckpt", tiny_run, "--out", tmp_path / "two", "--num-samples", 20,
             "--batch-size", 3, "--steps", 2, "--labels", "balanced", cwd=tmp_path)
    draw(tiny_run, tmp_path / "one", num=20, batch_size=8, labels="balanced")
    assert labels(tmp_path / "two") == labels(tmp_path / "one")
    assert collections.Counter(labels(tmp_path / "two")) == {k: 2 for k in range(10)}
    assert_same_images(pngs(tmp_path / "two"), pngs(tmp_path / "one"))


# ----------------------------------------------------------------------------- --eval-every's samples


@pytest.mark.slow
def test_training_evaluation_draws_balanced_labels(tiny_run, tmp_path, monkeypatch, stand_in, one_thread):
    from sitcli import distributed
    from sitcli.evaluate import inception
    from sitcli.loading import load_model
    from sitcli.training import evaluation

    stats = tmp_path / "stats.npz"
    np.savez(stats, mu=np.zeros(inception.POOL_DIM), sigma=np.eye(inception.POOL_DIM))
    loaded = load_model(tiny_run)
    seen = []

    def recording(*args, **kwargs):
        y, x0 = labels_and_noise(*args, **kwargs)
        seen.extend(y.tolist())
        return y, x0

    labels_and_noise = evaluation.labels_and_noise
    monkeypatch.setattr(evaluation, "labels_and_noise", recording)
    dist = distributed.Dist(0, 1, 0, torch.device("cpu"))
    for kind, want in (("balanced", True), ("random", False)):
        seen.clear()
        cfg = TrainConfig(**{**loaded.config.to_dict(), "eval_every": 1, "eval_num": 30, "eval_ref": str(stats),
                             "eval_method": "euler", "eval_steps": 2, "eval_labels": kind})
        fid = evaluation.TrainingEval(cfg, dist, batch_size=7).run(loaded.model, 1)["fid"]
        assert np.isfinite(fid) and len(seen) == 30
        assert (collections.Counter(seen) == {k: 3 for k in range(10)}) == want, kind


def test_training_refuses_an_eval_num_the_classes_do_not_divide_before_writing(tmp_path):
    from sitcli.training import train

    cfg = TrainConfig(data="digits", out=str(tmp_path / "run"), steps=2, eval_every=1, eval_num=15,
                      eval_ref=str(tmp_path / "stats.npz"), eval_labels="balanced")
    with pytest.raises(InputError, match=r"--eval-labels balanced draws exactly N / K of each class, but --eval-num "
                                         r"15 is not a multiple of the 10 classes: pass --eval-num 10 or 20"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(InputError, match="unknown --eval-labels 'equal'"):
        from sitcli.training.presets import apply_presets

        apply_presets(TrainConfig(data="digits", eval_labels="equal")).check()
