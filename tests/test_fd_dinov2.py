"""sitcli/evaluate/dinov2.py through `evaluate(metrics="fd_dinov2")`: a tiny random DINOv2 on disk."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg

from sitcli.encoders import IMAGENET_MEAN, IMAGENET_STD
from sitcli.errors import InputError
from sitcli.evaluate import FidConfig, evaluate, inception
from helpers import dinov2_folder, random_inception_state

pytestmark = pytest.mark.slow


def frechet(a, b):
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def class_tokens(model, images):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255
    x = F.interpolate(x.float(), size=(224, 224), mode="bicubic", align_corners=False)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(pixel_values=x).last_hidden_state[:, 0].double().numpy()


def test_fd_dinov2_is_the_frechet_distance_of_class_tokens_and_its_stats_are_cached(tmp_path, one_thread):
    model = dinov2_folder(tmp_path / "dino", patch_size=16)  # 14 x 14 tokens at 224 pixels
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "a.npz", arr_0=a)
    np.savez(tmp_path / "b.npz", arr_0=b)
    weights = tmp_path / inception.PYTORCH_FID_FILE  # --save-stats writes FID's statistics too
    torch.save(random_inception_state(), weights)
    result = evaluate(
        FidConfig(
            tmp_path / "a.npz",
            tmp_path / "b.npz",
            "fd_dinov2",
            dinov2=tmp_path / "dino",
            batch_size=8,
            num_workers=0,
            save_stats=tmp_path / "a_stats.npz",
            inception_weights=weights,
        ),
        device="cpu",
    )
    want = frechet(class_tokens(model, a), class_tokens(model, b))
    assert result.metrics["fd_dinov2"] == pytest.approx(want, rel=1e-4)
    with np.load(tmp_path / "a_stats.npz") as f:
        assert {"mu", "sigma", "mu_d", "sigma_d"} <= set(f.files) and f["mu_d"].shape == (32,)
    again = evaluate(
        FidConfig(
            tmp_path / "a_stats.npz",
            tmp_path / "b.npz",
            "fd_dinov2",
            dinov2=tmp_path / "dino",
            batch_size=8,
            num_workers=0,
        ),
        device="cpu",
    )
    assert again.metrics["fd_dinov2"] == pytest.approx(result.metrics["fd_dinov2"], rel=1e-9)


def test_fd_dinov2_needs_an_encoder_or_cached_statistics(tmp_path):
    np.savez(tmp_path / "a.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(InputError, match="fd_dinov2 needs a DINOv2 encoder: pass --dinov2"):
        evaluate(FidConfig(tmp_path / "a.npz", tmp_path / "a.npz", "fd_dinov2"))
    np.savez(tmp_path / "s.npz", mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(InputError, match="no FD-DINOv2 statistics"):
        evaluate(FidConfig(tmp_path / "s.npz", tmp_path / "a.npz", "fd_dinov2", dinov2=tmp_path / "x"))
