"""The FID variant of Inception-v3, and where its weights come from.

This is the network every published FID number is computed with: the TensorFlow graph
``inception-2015-12-05`` (Szegedy et al. 2016, as frozen for the 2015 ImageNet release), in the
PyTorch port that pytorch-fid publishes. It differs from torchvision's Inception-v3 in four
places, all reproduced here:

- the average pools inside the 35x35, 17x17 and first 8x8 blocks ignore zero padding
  (``count_include_pad=False``), as TensorFlow's pooling does;
- the last block (``Mixed_7c``) max-pools instead of average-pooling in its pool branch;
- the classifier has 1008 outputs (1000 ImageNet classes plus 8 unused ones);
- the weights are the TensorFlow ones, not torchvision's.

Preprocessing is pytorch-fid's, inside ``forward``: images in [0, 1] are resized to 299x299 with
``F.interpolate(mode="bilinear", align_corners=False)`` and mapped to [-1, 1] by ``2x - 1``.
(TensorFlow resizes differently, so numbers from the ADM evaluator or torch-fidelity differ
slightly; we match pytorch-fid, the tool most FID numbers in PyTorch papers come from.)

Module names equal the key names of pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` and of
torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (both follow torchvision's names);
``canonical_state_dict`` maps the small differences between the two files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sitcli.errors import InputError

PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + PYTORCH_FID_FILE
)
TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"

POOL_DIM = 2048
NUM_CLASSES = 1008
SPATIAL_CHANNELS = 7
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS  # 2023, as in the ADM evaluator
OUTPUTS = ("pool", "logits", "spatial")


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, TensorFlow's), ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))

    @torch.no_grad()
    def fold_batch_norm(self) -> None:
        """Fold the frozen batch norm into the convolution, which then carries a bias:
        bn(conv(x)) = conv(x) * s + (beta - mean * s),  s = gamma / sqrt(var + eps)."""
        if isinstance(self.bn, nn.Identity):
            return
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        self.conv.weight.mul_(scale[:, None, None, None])
        self.conv.bias = nn.Parameter(self.bn.bias - self.bn.running_mean * scale, requires_grad=False)
        self.bn = nn.Identity()


def _tf_avg_pool(x: Tensor) -> Tensor:
    # TensorFlow averages only over the pixels inside the image at the border.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_tf_avg_pool(x)),
            ],
            1,
        )


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, kernel_size=3, stride=2),
            ],
            1,
        )


class InceptionC(nn.Module):
    """17x17 block (Mixed_6b..6e) with factorised 7x7 convolutions."""

    def __init__(self, cin: int, channels_7x7: int) -> None:
        super().__init__()
        c = channels_7x7
        row, col = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c, 1)
        self.branch7x7_2 = BasicConv2d(c, c, **row)
        self.branch7x7_3 = BasicConv2d(c, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(cin, c, 1)
        self.branch7x7dbl_2 = BasicConv2d(c, c, **col)
        self.branch7x7dbl_3 = BasicConv2d(c, c, **row)
        self.branch7x7dbl_4 = BasicConv2d(c, c, **col)
        self.branch7x7dbl_5 = BasicConv2d(c, 192, **row)
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def branches(self, x: Tensor) -> list[Tensor]:
        """The four branch outputs before concatenation (the first one feeds sFID)."""
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d7 = layer(d7)
        return [self.branch1x1(x), b7, d7, self.branch_pool(_tf_avg_pool(x))]

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(self.branches(x), 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction (Mixed_7a)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        t = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            t = layer(t)
        return torch.cat(
            [self.branch3x3_2(self.branch3x3_1(x)), t, F.max_pool2d(x, kernel_size=3, stride=2)], 1
        )


class InceptionE(nn.Module):
    """8x8 block (Mixed_7b, Mixed_7c) with split 1x3 / 3x1 outputs.

    ``pool="avg"`` for Mixed_7b; the FID graph's Mixed_7c uses ``pool="max"`` (a quirk of the
    2015 TensorFlow graph that every FID implementation keeps).
    """

    def __init__(self, cin: int, pool: str) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        if self.pool == "max":
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _tf_avg_pool(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(s),
                self.branch3x3_2b(s),
                self.branch3x3dbl_3a(d),
                self.branch3x3dbl_3b(d),
                self.branch_pool(pooled),
            ],
            1,
        )


# --------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------


class FIDInceptionV3(nn.Module):
    """Inception-v3 as used for FID, returning the features the metrics need.

    ``forward(images, outputs)`` takes float images (N, 3, H, W) in [0, 1], any H and W, and
    returns a dict with any of:

    - ``"pool"``: (N, 2048) global average of the last 8x8 block (TF name ``pool_3``), for FID,
      precision/recall and KID;
    - ``"logits"``: (N, 1008) ``pool @ fc.weight.T`` *without* the fc bias, which is what the
      Inception Score has always used (the original improved-gan code multiplies ``pool_3`` by
      the ``softmax/logits`` weights only; the ADM evaluator and torch-fidelity do the same);
    - ``"spatial"``: (N, 2023) the sFID features of the ADM evaluator: TF tensor
      ``mixed_6/conv``, which is the ReLU output of the 1x1 branch of ``Mixed_6d`` (192x17x17),
      first 7 channels, flattened in TensorFlow's (H, W, C) order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(POOL_DIM, NUM_CLASSES)
        self.channels_last = False
        self.eval()
        self.requires_grad_(False)

    def forward(self, images: Tensor, outputs: Iterable[str] = ("pool",)) -> dict[str, Tensor]:
        wanted = set(outputs)
        if not wanted <= set(OUTPUTS):
            raise ValueError(f"unknown outputs {sorted(wanted - set(OUTPUTS))}; choose from {OUTPUTS}")
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c):
            x = block(x)
        parts = self.Mixed_6d.branches(x)
        result: dict[str, Tensor] = {}
        if "spatial" in wanted:
            spatial = parts[0][:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1)
            result["spatial"] = spatial.reshape(len(spatial), -1)
            if wanted == {"spatial"}:
                return result
        x = torch.cat(parts, 1)
        for block in (self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
        if "pool" in wanted:
            result["pool"] = pool
        if "logits" in wanted:
            result["logits"] = pool @ self.fc.weight.T
        return result


# --------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------


def default_weight_paths() -> list[Path]:
    """Where pytorch-fid (then torch-fidelity) caches its weights: ``torch.hub.get_dir()/checkpoints``."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return [folder / PYTORCH_FID_FILE, folder / TORCH_FIDELITY_FILE]


def find_inception_weights(path: str | Path | None = None) -> Path:
    """The weight file to use: ``path`` if given, else the first file of ``default_weight_paths``."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise InputError(f"Inception weights file {path} does not exist; check --inception-weights")
        return path
    for candidate in default_weight_paths():
        if candidate.is_file():
            return candidate
    folder = default_weight_paths()[0].parent
    raise InputError(
        f"Inception weights {PYTORCH_FID_FILE} not found: download it from {PYTORCH_FID_URL} "
        f"and put it in {folder}/ (or pass --inception-weights PATH)"
    )


def canonical_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a pytorch-fid or torch-fidelity state dict onto ``FIDInceptionV3`` names.

    pytorch-fid saved torchvision's module names, with batch-norm ``num_batches_tracked``
    counters; torch-fidelity uses the same names without them. Both may come wrapped in a
    ``{"state_dict": ...}`` dict or with a ``module.`` prefix (DataParallel). The counters and
    torchvision's auxiliary classifier are not part of the FID network and are dropped.
    """
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    out = {}
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        if key.endswith("num_batches_tracked") or key.startswith("AuxLogits."):
            continue
        out[key] = value
    return out


def load_inception(path: str | Path | None = None, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """Build ``FIDInceptionV3`` with weights from ``find_inception_weights(path)``.

    The file is read with ``torch.load(weights_only=True)``: no pickled code is ever run.
    """
    file = find_inception_weights(path)
    try:
        raw = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a file that is not a checkpoint
        raise InputError(
            f"cannot read Inception weights {file} ({type(err).__name__}); is it a .pth state dict?"
        ) from None
    if not isinstance(raw, Mapping):
        raise InputError(f"Inception weights {file} hold a {type(raw).__name__}, not a state dict")
    state = canonical_state_dict(raw)
    net = FIDInceptionV3()
    expected = {k: v.shape for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise InputError(
            f"{file} is not FID Inception-v3 weights ({detail}); use pytorch-fid's {PYTORCH_FID_FILE}"
        )
    net.load_state_dict(state, strict=False)
    return net.to(device)


def optimize_for_inference(net: FIDInceptionV3) -> FIDInceptionV3:
    """Fold every batch norm into its convolution and keep activations channels-last, in place.

    The same function of the images, computed in a different order: features move by float32
    round-off (~1e-7 relative), so statistics are no longer bit-for-bit those of the plain
    network (nor of pytorch-fid), while FID moves by far less than its reported digits.
    Both changes cut memory traffic (examples/benchmarks/fid_speed.py times the two side by side).
    """
    for module in net.modules():
        if isinstance(module, BasicConv2d):
            module.fold_batch_norm()
    net.channels_last = True
    return net.to(memory_format=torch.channels_last)
