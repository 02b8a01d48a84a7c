"""Files and folders that sit writes honour the umask (0644/0755 under 022, 0600/0700 under 077), though
the atomic writes go through mkstemp/mkdtemp, whose modes are private."""

import os

import stat
from pathlib import Path

import pytest
import torch

from sitcli.config import TrainConfig

from sitcli.sample_config import SampleConfig
from sitcli.convert import ConvertConfig, convert
from sitcli.evaluate import FidConfig, evaluate
from sitcli.sample import sample
from sitcli.training import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    from test_fid import random_inception_state

    path = tmp_path_factory.mktemp("inception") / "pt_inception.pth"
    torch.save(random_inception_state(), path)
    return path


@pytest.fixture
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def assert_modes(root: Path, mask: int) -> None:
    found = modes(root)
    wrong = {k: oct(v) for k, v in found.items()
             if v != (0o777 if (root / k).is_dir() else 0o666) & ~mask}
    assert not wrong, f"under umask {oct(mask)}: {wrong}"
    assert len(found) >= 2  # the folder and at least one file


@pytest.mark.parametrize("umask", [0o022, 0o077], indirect=True, ids=["022", "077"])
def test_runs_samples_statistics_and_conversions_honour_the_umask(tmp_path, umask, inception_weights, one_thread):
    run = tmp_path / "run"
    train(TrainConfig(data="digits", out=str(run), model="SiT-Ti/4", batch_size=16, steps=2, log_every=1, ckpt_every=1,
                      sample_every=2), progress=False)
    assert_modes(run, umask)  # config.json, log.csv, grids/, checkpoints/NNNNNNN/ and their files
    sample(SampleConfig(ckpt=str(run), out=str(tmp_path / "samples"), num=2, steps=2, npz=True,
                        grid=str(tmp_path / "samples" / "grid.png")), progress=False)
    assert_modes(tmp_path / "samples", umask)
    stats = tmp_path / "stats"
    stats.mkdir()
    evaluate(
        FidConfig(
            tmp_path / "samples", save_stats=stats / "ref.npz", inception_weights=inception_weights, num_workers=0
        ),
        device="cpu",
    )
    assert_modes(stats, umask)
    convert(ConvertConfig(run, tmp_path / "converted" / "SiT-Ti-4.pt"))
    convert(ConvertConfig(run, tmp_path / "converted" / "sit", dst_format="sit"))
    assert_modes(tmp_path / "converted", umask)
