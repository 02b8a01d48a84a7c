"""Helpers shared by the test modules: tiny random models and files, tiny training settings, comparisons.

Test modules import from here (or from ``behaviour`` and ``documents``), never from one another; fixtures
shared by several modules live in ``conftest.py``.
"""

from __future__ import annotations

import argparse
import math
import os
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sitcli import runs
from sitcli.config import TrainConfig
from sitcli.models import SiT

# ---------------------------------------------------------------- tiny models and training settings

TINY_ARCH = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=5)
TINY_TRAIN = dict(data="digits", model="SiT-Ti/4", batch_size=16, lr=1e-3, log_every=2, ckpt_every=2, sample_every=0)


def random_sit(seed: int = 0, **arch) -> SiT:
    """A SiT with every trainable tensor random (adaLN-Zero would make its outputs 0), in eval mode."""
    torch.manual_seed(seed)
    model = SiT(**{**TINY_ARCH, **arch})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.2)
    return model.eval()


def tiny(tmp_path: Path, name: str = "run", **kw) -> TrainConfig:
    """A digits run of SiT-Ti/4 with a checkpoint every 2 steps, in ``tmp_path / name``."""
    return TrainConfig(out=str(tmp_path / name), **{**TINY_TRAIN, **kw})


def repa_file(tmp_path: Path, path_type="linear", name="repa.pt", model="SiT-B/2", **arch):
    """A REPA-style training checkpoint: a random SiT (no learned sigma) with one projector; and its backbone."""
    torch.manual_seed(0)
    net = random_sit(seed=4, learn_sigma=False, projector_dims=(16,), projector_hidden=8, **arch)
    state = net.state_dict()
    args = argparse.Namespace(model=model, path_type=path_type, prediction="v", enc_type="dinov2-vit-b",
                              encoder_depth=1, resolution=64)
    torch.save({"model": state, "ema": state, "opt": {}, "args": args}, tmp_path / name)
    net = random_sit(seed=4, learn_sigma=False, **arch)  # the same backbone, without the projectors
    net.load_state_dict({k: v for k, v in state.items() if not k.startswith("projectors.")})
    return tmp_path / name, net.eval()


# ---------------------------------------------------------------- encoders and Inception, random, on disk

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=4)


def dinov2_folder(path, registers: int = 0, **config):
    """A 2-layer random DINOv2 saved as a transformers folder."""
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(1)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
            **{**SMALL, "image_size": 16, "num_register_tokens": registers, **config}))
    else:
        model = Dinov2Model(Dinov2Config(**{**SMALL, "image_size": 16, **config}))
    model.save_pretrained(path)
    return model.eval()


def hub_file(folder, registers: bool = False):
    """A 2-layer random timm DINOv2, saved in torch hub's layout (the inverse of timm's conversion)."""
    import timm

    torch.manual_seed(2)
    name = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    model = timm.create_model(name, pretrained=False, num_classes=0, embed_dim=64, depth=2, num_heads=1, img_size=28,
                              dynamic_img_size=True).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["mask_token"] = torch.zeros(1, 64)
    if registers:  # hub: a position for the class token, which timm folds into cls_token
        first = torch.randn(1, 1, 64)
        state["register_tokens"] = state.pop("reg_token")
        state["cls_token"] = state["cls_token"] - first
        state["pos_embed"] = torch.cat([first, state["pos_embed"]], dim=1)
    path = folder / f"dinov2_vits14{'_reg4' if registers else ''}_pretrain.pth"
    torch.save(state, path)
    return model, path


def random_inception_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under pytorch-fid's key names, scaled so activations neither vanish nor explode.

    He-normal convolutions and batch-norm statistics near identity keep every layer at unit
    scale; the last block's batch-norm gain of ~0.15 brings pool features to ~0.1-0.3, the
    range of the real network's, so FID values are of a realistic size.
    """
    from sitcli.evaluate import inception

    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, ref in inception.FIDInceptionV3().state_dict().items():
        if key.endswith("conv.weight"):
            state[key] = torch.randn(ref.shape, generator=g) * math.sqrt(2.0 / ref[0].numel())
        elif key.endswith("bn.weight"):
            state[key] = (0.5 + torch.rand(ref.shape, generator=g)) * (0.15 if key.startswith("Mixed_7c") else 1.0)
        elif key.endswith(("bn.bias", "running_mean")):
            state[key] = 0.1 * torch.randn(ref.shape, generator=g)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(ref.shape, generator=g)
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key == "fc.weight":
            state[key] = torch.randn(ref.shape, generator=g)
        else:
            state[key] = 0.1 * torch.randn(ref.shape, generator=g)
    return state


class StandIn(torch.nn.Module):
    """Deterministic cheap features of Inception's shapes, so the FID pipeline runs in milliseconds."""

    def __init__(self):
        super().__init__()
        from sitcli.evaluate import inception

        g = torch.Generator().manual_seed(0)
        self.proj = {
            "pool": torch.randn(6, inception.POOL_DIM, generator=g),
            "spatial": torch.randn(6, inception.SPATIAL_DIM, generator=g),
            "logits": torch.randn(6, inception.NUM_CLASSES, generator=g) * 5,
        }

    def forward(self, images, outputs=("pool",)):
        x = torch.cat([images.mean((2, 3)), images.amax((2, 3))], 1)  # works for any image size
        return {k: x @ self.proj[k] for k in outputs}


def tiny_vae(path: Path) -> Path:
    """A random diffusers AutoencoderKL (RGB, 4 latent channels, 4x down), saved as a local folder."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
        norm_num_groups=4, sample_size=16,
    )
    vae.save_pretrained(path)
    return path


def image_folder(root: Path, classes=("a", "b"), per_class: int = 4, size=(20, 24), seed: int = 0) -> Path:
    """Random RGB PNGs, one sub-folder per class."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / name / f"{k}.png")
    return root


# ---------------------------------------------------------------- comparisons


def assert_same(a: dict, b: dict) -> None:
    """Two state dicts hold the same names, dtypes and values, bit for bit."""
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def final_state(run):
    """(name, loaded state) of a run's newest checkpoint."""
    ckpt = runs.latest_checkpoint(run)
    return ckpt.name, runs.load_checkpoint(ckpt)


def assert_same_state(a, b):
    """Two loaded checkpoints hold the same weights, EMA, optimizer moments and step, bit for bit."""
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    for pa, pb in zip(a["optimizer"]["optimizer"]["state"].values(), b["optimizer"]["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert a["state"]["step"] == b["state"]["step"]


def pngs(folder):
    """The PNGs of a folder as int16 arrays, by name."""
    return {p.name: np.asarray(Image.open(p), dtype=np.int16) for p in sorted(Path(folder).glob("*.png"))}


def assert_same_images(a, b):
    """The same images, up to one level (float rounding of different batch shapes)."""
    assert a.keys() == b.keys()
    for name in a:
        assert np.abs(a[name] - b[name]).max() <= 1, name


# ---------------------------------------------------------------- processes


def torchrun(*args, cwd):
    """``torchrun --standalone --nproc_per_node=2 ARGS`` on CPU (gloo), this checkout's sitcli first."""
    here = Path(__file__).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(here.parent), str(here)])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its digest: what a refusal must leave as it was."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
