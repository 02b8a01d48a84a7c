"""Two CPU ranks (torchrun, gloo): DDP training through the CLI, exact resume, sharded sampling."""


from pathlib import Path

import pytest
import torch

from sitcli import runs
from sitcli.sample_config import SampleConfig
from sitcli.sample import sample
from helpers import assert_same_images, assert_same_state, pngs, torchrun

pytestmark = pytest.mark.slow

TINY = {"model": "SiT-Ti/4", "batch_size": 16, "lr": 0.001, "ckpt_every": 2, "sample_every": 0, "log_every": 1}


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs gloo"
)
def test_two_ranks_train_resume_and_sample(tmp_path):
    flags = [x for k, v in TINY.items() for x in ("--" + k.replace("_", "-"), v)]
    proc = torchrun("-m", "sitcli", "train", "--out", tmp_path / "straight", "--steps", 4, *flags, cwd=tmp_path)
    assert proc.stderr.count("trained ") == 1  # rank 0 reports, rank 1 stays quiet
    straight = runs.load_checkpoint(runs.latest_checkpoint(tmp_path / "straight"))
    assert {"noise.rank0", "noise.rank1"} <= set(straight["rng"]) and straight["state"]["world_size"] == 2

    torchrun(Path(__file__).parent / "ddp_jobs.py", tmp_path, *[f"{k}={v}" for k, v in TINY.items()], cwd=tmp_path)
    # 2 steps + resume + 2 steps on two ranks == 4 steps straight on two ranks, bit for bit.
    assert_same_state(straight, runs.load_checkpoint(runs.latest_checkpoint(tmp_path / "halves")))
    # Indices sharded over two ranks give the images one process draws.
    sample(
        SampleConfig(ckpt=str(tmp_path / "straight"), out=str(tmp_path / "one"), num=5, batch_size=3, steps=3),
        progress=False,
    )
    assert_same_images(pngs(tmp_path / "samples"), pngs(tmp_path / "one"))


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs gloo"
)
def test_two_ranks_with_the_alignment_term_resume_exactly_and_average_projector_gradients(tmp_path):
    from test_encoders import dinov2_folder

    dinov2_folder(tmp_path / "dino")
    torchrun(
        Path(__file__).parent / "ddp_jobs.py",
        "repa",
        tmp_path,
        tmp_path / "dino",
        *[f"{k}={v}" for k, v in TINY.items()],
        cwd=tmp_path,
    )
    straight = runs.load_checkpoint(runs.latest_checkpoint(tmp_path / "straight"))
    assert "projectors.0.4.weight" in straight["model"] and straight["state"]["world_size"] == 2
    assert_same_state(straight, runs.load_checkpoint(runs.latest_checkpoint(tmp_path / "halves")))


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs gloo"
)
def test_two_ranks_train_a_guided_mean_flow_run_and_resume_exactly(tmp_path):
    settings = {**TINY, "objective": "meanflow", "meanflow_omega": 1.5}
    torchrun(
        Path(__file__).parent / "ddp_jobs.py",
        "meanflow",
        tmp_path,
        *[f"{k}={v}" for k, v in settings.items()],
        cwd=tmp_path,
    )
    straight = runs.load_checkpoint(runs.latest_checkpoint(tmp_path / "straight"))
    assert "r_embedder.mlp.0.weight" in straight["model"] and straight["state"]["world_size"] == 2
    assert_same_state(straight, runs.load_checkpoint(runs.latest_checkpoint(tmp_path / "halves")))
