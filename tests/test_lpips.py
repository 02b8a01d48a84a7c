"""sitcli/autoencoder/lpips.py: LPIPS from local files, against the metric written here from the
LPIPS paper's definition (VGG16 relu1_2..relu5_3, unit-normalised channels, linear heads, spatial
mean), with random weights saved in torchvision's and the lpips package's layouts."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.vgg import cfgs, make_layers

from sitcli.autoencoder.lpips import load_lpips
from sitcli.errors import InputError

CHANNELS = (64, 128, 256, 512, 512)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """torchvision's vgg16-397923af.pth layout (features.N.*, plus a classifier key that is ignored) and
    the lpips package's vgg.pth layout (linK.model.1.weight), random."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("lpips")
    features = make_layers(cfgs["D"])
    vgg = {f"features.{k}": v for k, v in features.state_dict().items()}
    vgg["classifier.6.bias"] = torch.zeros(1000)
    torch.save(vgg, folder / "vgg16-397923af.pth")
    lins = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) * 0.1 for k, c in enumerate(CHANNELS)}
    torch.save(lins, folder / "vgg.pth")
    return folder, features.eval(), lins


def reference(features, lins, x, y):
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    taps = {3: 0, 8: 1, 15: 2, 22: 3, 29: 4}  # the ReLU after conv1_2, conv2_2, conv3_3, conv4_3, conv5_3
    total = 0
    a, b = (x - shift) / scale, (y - shift) / scale
    for i, layer in enumerate(features[:30]):
        a, b = layer(a.clone()), layer(b.clone())
        if i in taps:
            na = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            nb = b / (b.norm(dim=1, keepdim=True) + 1e-10)
            total = total + F.conv2d((na - nb) ** 2, lins[f"lin{taps[i]}.model.1.weight"]).mean(dim=(1, 2, 3))
    return total


def test_lpips_from_a_folder_is_the_metric(weights):
    folder, features, lins = weights
    lpips = load_lpips(folder)
    assert not any(p.requires_grad for p in lpips.parameters())
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        d = lpips(x, y)
        torch.testing.assert_close(d, reference(features, lins, x, y), rtol=1e-5, atol=1e-7)
    assert d.shape == (2,) and bool((d > 0).all()) and torch.equal(lpips(x, x), torch.zeros(2))
    grey = x[:, :1]
    torch.testing.assert_close(lpips(grey, y[:, :1]), lpips(grey.expand(-1, 3, -1, -1), y[:, :1].expand(-1, 3, -1, -1)))
    # A gradient flows to the images (the decoder's loss), not to the frozen weights.
    x.requires_grad_(True)
    lpips(x, y).sum().backward()
    assert x.grad.abs().sum() > 0


def test_one_file_holding_both_sets_works_and_missing_parts_are_named(weights, tmp_path):
    folder, _, _ = weights
    both = {**torch.load(folder / "vgg16-397923af.pth"), **torch.load(folder / "vgg.pth")}
    torch.save(both, tmp_path / "lpips_vgg.pth")
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(load_lpips(tmp_path / "lpips_vgg.pth")(x, -x), load_lpips(folder)(x, -x))
    (tmp_path / "only").mkdir()
    torch.save(torch.load(folder / "vgg.pth"), tmp_path / "only" / "vgg.pth")
    with pytest.raises(InputError, match="lack the VGG16 weights .*vgg16-397923af.pth"):
        load_lpips(tmp_path / "only")
    with pytest.raises(InputError, match="no LPIPS weights at .*lpips package's v0.1 vgg.pth"):
        load_lpips(tmp_path / "missing")
