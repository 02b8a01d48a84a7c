"""Settings and fixtures shared by every test module: nothing reaches the network, runs are deterministic.

Helpers that are not fixtures live in ``helpers.py``.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import helpers  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine run many times faster without intra-op threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A digits run of SiT-Ti/4 trained for 3 steps (one checkpoint, 0000003), shared by every module: read only.

    A test that writes into the run folder copies it first (``shutil.copytree``).
    """
    from sitcli.config import TrainConfig
    from sitcli.training import train

    run = tmp_path_factory.mktemp("tiny") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(data="digits", out=str(run), model="SiT-Ti/4", batch_size=16, steps=3, lr=3e-3,
                          log_every=1, ckpt_every=3, sample_every=0), progress=False)
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.fixture(scope="session")
def vae_and_images(tmp_path_factory):
    """A tiny random AutoencoderKL in ``vae/`` and ``images/`` with classes a and b of 4 PNGs (20x24), plus one
    unreadable file (``images/b/bad.jpg``): read only."""
    root = tmp_path_factory.mktemp("latent")
    helpers.tiny_vae(root / "vae")
    helpers.image_folder(root / "images")
    (root / "images" / "b" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    return root


@pytest.fixture
def stand_in(monkeypatch):
    """Cheap deterministic features in place of Inception (``helpers.StandIn``) for this test."""
    from sitcli.evaluate import inception

    net = helpers.StandIn()
    monkeypatch.setattr(inception, "load_inception", lambda path=None, device="cpu": net)
    monkeypatch.setattr(inception, "find_inception_weights", lambda path=None: "stand-in")
    return net


@pytest.fixture
def fresh_wandb():
    """wandb keeps one setup per process (its mode, its key) from the first run that starts it: a test that starts
    wandb gets a setup from its own environment, and leaves none behind."""
    import wandb

    wandb.teardown()
    yield
    wandb.teardown()
