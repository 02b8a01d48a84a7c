"""LPIPS (Zhang et al. 2018, VGG16 with the v0.1 linear heads) from local weight files only.

For images x, y in [-1, 1], with phi_l the VGG16 activations after relu1_2, relu2_2, relu3_3,
relu4_3 and relu5_3 of the scaled input (x - shift) / scale, and hat the unit-normalisation of
each position's channel vector (a / (|a| + 1e-10)):

    LPIPS(x, y) = sum_l mean_hw( w_l . (hat phi_l(x) - hat phi_l(y))^2 )

This is the metric RAE's decoder training uses (``src/disc/lpips.py``, taming's copy of the lpips
package). It needs two files and downloads neither:
    * torchvision's ImageNet VGG16, ``vgg16-397923af.pth`` (keys ``features.N.*``), from
      https://download.pytorch.org/models/vgg16-397923af.pth;
    * the linear heads ``vgg.pth`` (keys ``linK.model.1.weight``) of the lpips package
      (``lpips/weights/v0.1/vgg.pth`` in its wheel; taming's and RAE's ``vgg.pth`` is the same file).
``load_lpips`` takes a folder holding both, or one file holding both sets of keys.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sitcli.errors import InputError

CHANNELS = (64, 128, 256, 512, 512)
TAPS = (4, 9, 16, 23, 30)  # VGG16 ``features`` indices after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
WHERE_TO_GET = ("LPIPS needs local weights, a folder holding torchvision's vgg16-397923af.pth "
                "(https://download.pytorch.org/models/vgg16-397923af.pth) and the lpips package's v0.1 vgg.pth "
                "(lpips/weights/v0.1/vgg.pth in `pip download lpips`)")


class LPIPS(nn.Module):
    """The LPIPS distance, (B,) per image pair; frozen (no parameter needs a gradient)."""

    def __init__(self):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        # VGG16's convolutional layers only (torchvision's own builder; its 120M-parameter classifier is not needed).
        self.features = make_layers(cfgs["D"])[: TAPS[-1]]
        for k, c in enumerate(CHANNELS):
            # Sequential(Dropout, Conv): the lpips package's layout, hence the key ``linK.model.1.weight``;
            # forward calls the conv alone (the package's dropout is off in eval mode, which RAE uses).
            setattr(self, f"lin{k}", nn.Module())
            getattr(self, f"lin{k}").model = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, taps, start = (x - self.shift) / self.scale, [], 0
        for end in TAPS:
            for layer in self.features[start:end]:
                h = layer(h)
            taps.append(h)
            start = end
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        total = 0.0
        for k, (a, b) in enumerate(zip(self.activations(x), self.activations(y))):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{k}").model[1]((a - b) ** 2).mean(dim=(2, 3))
        return total[:, 0]


def load_lpips(path: str | Path) -> LPIPS:
    """LPIPS with the weights at ``path`` (a folder with the VGG16 and vgg.pth files, or one file with both)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".pth", ".pt", ".safetensors"))
    elif path.is_file():
        files = [path]
    else:
        raise InputError(f"no LPIPS weights at {path}: {WHERE_TO_GET}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update({k: v for k, v in _read(file).items() if k.startswith(("features.", "lin"))})
    model = LPIPS()
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    if missing:
        what = "the VGG16 weights" if any(k.startswith("features.") for k in missing) else "the linear heads (vgg.pth)"
        raise InputError(f"LPIPS weights at {path} lack {what} (e.g. {missing[0]}): {WHERE_TO_GET}")
    model.load_state_dict({k: state[k] for k in expected}, strict=True)
    return model


def _read(file: Path) -> dict[str, torch.Tensor]:
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(file)
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds on non-checkpoints
        raise InputError(f"{file} is not a readable weights file ({type(err).__name__}): {WHERE_TO_GET}") from None
    return state if isinstance(state, dict) else {}
