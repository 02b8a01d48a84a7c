"""sitcli/encoders.py: frozen encoders from tiny random files written here (nothing downloaded)."""

import pytest
import torch
import torch.nn.functional as F
from transformers import ViTConfig, ViTModel

from sitcli.encoders import IMAGENET_MEAN, IMAGENET_STD, load_encoder, match_grid
from helpers import SMALL, dinov2_folder, hub_file
from sitcli.errors import InputError

def by_hand(images, size, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    x = F.interpolate((images + 1) / 2, size=(size, size), mode="bicubic", align_corners=False)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("registers", [0, 2])
def test_transformers_dinov2_gives_patch_tokens_without_class_and_registers(tmp_path, registers):
    model = dinov2_folder(tmp_path / "dino", registers)
    encoder = load_encoder(tmp_path / "dino")
    assert (encoder.patch_size, encoder.width, encoder.resolution) == (4, 32, None)
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    tokens = encoder.features(images, grid=3)  # any multiple of the patch: 12 pixels, a 3x3 grid
    assert tokens.shape == (2, 9, 32) and tokens.dtype == torch.float32 and not tokens.requires_grad
    with torch.no_grad():
        full = model(pixel_values=by_hand(images, 12)).last_hidden_state
    assert full.shape[1] == 1 + registers + 9
    torch.testing.assert_close(tokens, full[:, 1 + registers:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("registers", [False, True])
def test_torch_hub_dinov2_file_is_read_through_timm(tmp_path, registers):
    model, path = hub_file(tmp_path, registers)
    encoder = load_encoder(path)
    assert (encoder.patch_size, encoder.width) == (14, 64)
    images = torch.rand(2, 1, 8, 8) * 2 - 1  # one channel: repeated to three
    tokens = encoder.features(images, grid=2)
    with torch.no_grad():
        full = model.forward_features(by_hand(images.expand(-1, 3, -1, -1), 28))
    torch.testing.assert_close(tokens, full[:, model.num_prefix_tokens:], rtol=0, atol=1e-6)
    assert tokens.shape == (2, 4, 64)


def test_fixed_size_vit_keeps_its_resolution_and_grids_are_matched(tmp_path):
    torch.manual_seed(3)
    ViTModel(ViTConfig(**SMALL, image_size=20), add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    encoder = load_encoder(tmp_path / "vit")
    assert encoder.resolution == 20 and encoder.token_grid(2) == 5
    tokens = encoder.features(torch.zeros(1, 3, 8, 8), grid=2)
    assert tokens.shape == (1, 25, 32)
    assert torch.equal(match_grid(tokens, 5), tokens)
    smaller = match_grid(tokens, 2)
    grid = tokens.transpose(1, 2).reshape(1, 32, 5, 5)
    want = (
        F.interpolate(grid, size=(2, 2), mode="bilinear", align_corners=False, antialias=True)
        .flatten(2)
        .transpose(1, 2)
    )
    assert smaller.shape == (1, 4, 32) and torch.equal(smaller, want)
    constant = torch.ones(3, 25, 7) * torch.arange(7.0)
    torch.testing.assert_close(match_grid(constant, 3), torch.ones(3, 9, 7) * torch.arange(7.0))


def test_encoder_is_frozen(tmp_path):
    dinov2_folder(tmp_path / "dino")
    encoder = load_encoder(tmp_path / "dino")
    assert not encoder.module.training and not any(p.requires_grad for p in encoder.module.parameters())
    images = (torch.rand(2, 3, 8, 8) * 2 - 1).requires_grad_(True)
    assert encoder.features(images, grid=2).grad_fn is None


def test_missing_or_foreign_files_say_what_to_download(tmp_path):
    with pytest.raises(InputError, match="does not exist: download a DINOv2 model and put it there"):
        load_encoder(tmp_path / "dinov2_vitb14_pretrain.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="without config.json"):
        load_encoder(tmp_path / "empty")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="not a DINOv2 checkpoint"):
        load_encoder(tmp_path / "other.pth")
