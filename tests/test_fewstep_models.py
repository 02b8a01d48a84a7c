"""models.py's few-step forms: Decoupled MeanFlow's (dmf_depth), iMF's omega input and velocity head, and
``init_from_flow``, which starts them from a trained flow SiT.

Every source model here has random weights everywhere (adaLN-Zero would make its output 0 and every
comparison empty), in eval mode, in float32: "bit for bit" means torch.equal.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from sitcli.models import SiT
from sitcli.training.init_from import init_from_flow

pytestmark = pytest.mark.usefixtures("one_thread")
ARCH = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=4, num_heads=2, num_classes=5)


def random_sit(seed: int = 0, **arch) -> SiT:
    torch.manual_seed(seed)
    model = SiT(**{**ARCH, **arch})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.2)
    return model.eval()


def inputs(batch: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    t = torch.rand(batch, generator=g)
    y = torch.tensor([0, 3, 5, 1, 5, 2])[:batch]  # 5 is the null class
    return x, t, y


FORMS = [
    dict(dmf_depth=2),
    dict(dmf_depth=0),  # every block sees r
    dict(dmf_depth=4),  # only the final layer sees r
    dict(mean_flow=True),
    dict(mean_flow=True, omega_input=True, velocity_head_depth=2),
    dict(dmf_depth=3, omega_input=True, velocity_head_depth=4),
]


@pytest.mark.parametrize("learn_sigma", [True, False])
@pytest.mark.parametrize("form", FORMS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_a_converted_flow_sit_fed_r_equal_t_is_the_source_bit_for_bit(form, learn_sigma):
    source = random_sit(learn_sigma=learn_sigma)
    x, t, y = inputs()
    with torch.no_grad():
        want = source(x, t, y)
        model = init_from_flow(SiT(**ARCH, learn_sigma=learn_sigma, **form), source.state_dict()).eval()
        head = form.get("velocity_head_depth", 0) > 0
        for kwargs in ({"r": t}, {"r": t.clone()}, {}):
            out = model(x, t, y, with_velocity=head, **kwargs)
            assert torch.equal(out[:, :4], want)
            if head:  # the velocity head starts as the flow model's last blocks: v is the flow model's output too
                assert torch.equal(out[:, 4:], want)
        if form.get("omega_input"):  # the omega embedding starts at zero: every omega gives the flow model's output
            assert torch.equal(model(x, t, y, r=t, omega=torch.linspace(1, 8, 6))[:, :4], want)


def test_the_dmf_form_conditions_the_first_blocks_on_t_and_the_rest_on_r():
    source = random_sit()
    x, t, y = inputs()
    model = init_from_flow(SiT(**ARCH, dmf_depth=2), source.state_dict()).eval()
    assert set(model.state_dict()) == set(source.state_dict())  # no new parameters: a SiT's state dict
    with torch.no_grad():
        _, at_t = model(x, t, y, r=t, return_tokens=[2, 3])
        out, later = model(x, t, y, r=(t + 0.4).clamp(max=1), return_tokens=[2, 3])
    assert torch.equal(at_t[2], later[2])  # blocks 1-2 see t only
    assert not torch.allclose(at_t[3], later[3])  # block 3 sees r
    assert not torch.allclose(out, source(x, t, y))


def test_the_velocity_head_of_a_dmf_model_never_sees_r_when_its_trunk_does_not():
    source = random_sit()
    x, t, y = inputs()
    model = init_from_flow(SiT(**ARCH, dmf_depth=2, velocity_head_depth=2), source.state_dict()).eval()
    with torch.no_grad():
        a = model(x, t, y, r=t, with_velocity=True)
        b = model(x, t, y, r=(t + 0.5).clamp(max=1), with_velocity=True)
    assert torch.equal(a[:, 4:], b[:, 4:]) and not torch.allclose(a[:, :4], b[:, :4])


def test_the_new_zero_layers_learn_from_the_first_step():
    """init_from_flow's zero last layers of r_embedder and omega_embedder get gradients at once."""
    source = random_sit()
    model = init_from_flow(SiT(**ARCH, mean_flow=True, omega_input=True), source.state_dict()).train()
    x, t, y = inputs()
    model(x, t, y, r=(t + 0.3).clamp(max=1), omega=3.0, drop_labels=False).pow(2).sum().backward()
    for name in ("r_embedder.mlp.2.weight", "omega_embedder.mlp.2.weight"):
        assert model.get_parameter(name).grad.abs().max() > 0, name


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients_with_a_velocity_head():
    outs, grads = [], []
    for recompute in (False, True):
        model = random_sit(dmf_depth=1, velocity_head_depth=2, omega_input=True).train()
        model.grad_checkpointing = recompute
        x, t, y = inputs()
        out = model(x, t, y, r=(t + 0.2).clamp(max=1), omega=2.0, drop_labels=False, with_velocity=True)
        out.pow(2).sum().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.equal(outs[0], outs[1]) and torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_what_each_form_refuses():
    with pytest.raises(ValueError, match="two forms"):
        SiT(**ARCH, dmf_depth=2, mean_flow=True)
    with pytest.raises(ValueError, match="0..4"):
        SiT(**ARCH, dmf_depth=5)
    with pytest.raises(ValueError, match="velocity_head_depth"):
        SiT(**ARCH, velocity_head_depth=5)
    plain, x = random_sit(), inputs()[0]
    t = torch.rand(6)
    with pytest.raises(ValueError, match="omega"):
        plain(x, t, omega=2.0)
    with pytest.raises(ValueError, match="velocity head"):
        plain(x, t, with_velocity=True)
    with pytest.raises(ValueError, match="second time"):
        plain(x, t, r=t)
    other = random_sit(hidden_size=64)
    with pytest.raises(ValueError, match="shape"):
        init_from_flow(SiT(**ARCH, dmf_depth=2), other.state_dict())
    with pytest.raises(ValueError, match="backbone"):
        init_from_flow(SiT(**ARCH, dmf_depth=2), {**random_sit().state_dict(), "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="different architecture"):
        init_from_flow(SiT(**{**ARCH, "depth": 5}, dmf_depth=2), random_sit().state_dict())
