"""Validation before side effects: for every command, a bad flag is refused (exit 2, one line) before
anything on disk is created or changed, and the corrected command then works."""


from pathlib import Path

import pytest
from typer.testing import CliRunner

from sitcli.cli import app
from sitcli.config import TrainConfig
from sitcli.training import train

runner = CliRunner()


def snapshot(root: Path) -> dict:
    """Every path under ``root`` with its size and modification time: a change anywhere shows."""
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished tiny digits run, and a file to put outputs under by mistake."""
    root = tmp_path_factory.mktemp("validate-first")
    train(TrainConfig(data="digits", out=str(root / "run"), model="SiT-Ti/4", batch_size=16, steps=2, log_every=1,
                      ckpt_every=2, sample_every=0), progress=False)
    (root / "afile").write_text("not a folder\n")
    return root


# (bad arguments, the fix that makes them work, a fragment of the one-line message); {w} is the world folder.
TRAIN = ["train", "--out", "{w}/new", "--steps", "1", "--sample-every", "0", "--ckpt-every", "1", "--batch-size", "16"]
SAMPLE = ["sample", "--ckpt", "{w}/run", "--out", "{w}/samples", "--num-samples", "2", "--steps", "2"]
NLL = ["nll", "--ckpt", "{w}/run", "--num-samples", "2", "--method", "euler", "--steps", "2", "--batch-size", "2"]
CONVERT = ["convert", "{w}/run", "{w}/converted.pt"]
CASES = [
    (TRAIN, ["--batch-size", "2000"], [], "fewer than --batch-size 2000"),  # the data set is opened first
    (TRAIN, ["--lr", "inf"], [], "--lr inf"),
    (TRAIN, ["--grad-clip", "-1"], [], "--grad-clip -1"),
    (TRAIN, ["--threads", "-1"], [], "--threads -1"),
    (TRAIN, ["--eval-every", "5"], [], "--eval-ref"),
    (TRAIN, ["--out", "{w}/afile/run"], ["--out", "{w}/new"], "which is a file"),
    (SAMPLE, ["--steps", "-3"], [], "--steps -3"),
    (SAMPLE, ["--steps", "0"], [], "--steps 0"),
    (SAMPLE, ["--cfg-scale", "nan"], [], "--cfg-scale nan"),
    (SAMPLE, ["--sampler", "sde", "--steps", "1"], [], "--steps must be >= 2"),  # the SDE grid's own check, built first
    (SAMPLE, ["--sampler", "sde", "--last-step-size", "1.5"], [], "--last-step-size 1.5"),
    (SAMPLE, ["--num-samples", "0"], [], "--num-samples 0"),
    (SAMPLE, ["--out", "{w}/afile/s"], ["--out", "{w}/samples"], "which is a file"),
    (SAMPLE, ["--grid", "{w}/afile/grid.png"], [], "--grid"),  # the grid is written last: checked first
    (NLL, ["--num-samples", "0"], [], "--num-samples 0"),
    (NLL, ["--atol", "-1"], [], "--atol -1"),
    (CONVERT, ["--num-heads", "0"], [], "--num-heads 0"),
    (["fid", "{w}/run", "{w}/run", "--save-stats", "{w}/stats.npz"], ["--batch-size", "0"], None, "--batch-size 0"),
    (["cache-latents", "--data", "{w}/run", "--vae", "{w}/vae", "--out", "{w}/cache"], ["--shard-size", "0"], None,
     "--shard-size 0"),
]


@pytest.mark.parametrize("base, bad, fix, message", CASES, ids=[f"{c[0][0]} {' '.join(c[1])}" for c in CASES])
def test_a_bad_flag_changes_nothing_and_the_corrected_command_works(world, base, bad, fix, message, one_thread):
    fill = lambda words: [w.format(w=world) for w in words]  # noqa: E731
    before = snapshot(world)
    result = runner.invoke(app, fill(base + bad))
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and len(result.output.strip().splitlines()) == 1, result.output
    assert snapshot(world) == before
    if fix is None:  # fid and cache-latents need Inception / VAE weights: their runs are tested in their own modules
        return
    corrected = fill(base + fix)
    result = runner.invoke(app, corrected)
    assert result.exit_code == 0, result.output
    for made in ("new", "samples", "converted.pt"):  # leave the world as the next case expects it
        path = world / made
        if path.is_dir():
            __import__("shutil").rmtree(path)
        elif path.exists():
            path.unlink()


def test_resume_after_a_refused_resume_flag_still_works(world, one_thread):
    """A resumed run's refused flag leaves config.json as it was, and the corrected resume trains on."""
    run = world / "run"
    config = (run / "config.json").read_text()
    result = runner.invoke(app, ["train", "--resume", str(run), "--steps", "4", "--lr", "nan"])
    assert result.exit_code == 2 and "--lr nan" in result.output
    assert (run / "config.json").read_text() == config
    result = runner.invoke(app, ["train", "--resume", str(run), "--steps", "3"])
    assert result.exit_code == 0, result.output
    assert (run / "checkpoints" / "0000003").is_dir()
