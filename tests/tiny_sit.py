"""Tiny random SiT models shared by the conversion tests."""

import torch

from sitcli.models import SiT

TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=5)


def random_sit(seed: int = 0, **arch) -> SiT:
    """A SiT with every trainable tensor random (adaLN-Zero would make its outputs 0), in eval mode."""
    torch.manual_seed(seed)
    model = SiT(**{**TINY, **arch})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.2)
    return model.eval()


def assert_same(a: dict, b: dict) -> None:
    """Two state dicts hold the same names, dtypes and values, bit for bit."""
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
