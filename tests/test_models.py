"""SiT backbone: sizes, official parameter names, layouts, zero init, null class."""

import math

import numpy as np
import pytest
import torch

from sitcli.models import SiT, SiT_models, get_2d_sincos_pos_embed

PAPER_SIZES = {"S": 33, "B": 130, "L": 458, "XL": 675}  # millions of parameters at patch 2 (DiT/SiT papers)


def tiny(**kwargs) -> SiT:
    config = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=4, num_classes=10)
    config.update(kwargs)
    return SiT(**config)


def randomize(model: SiT) -> SiT:
    """Give the zero-initialised layers random values so the output depends on every input."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and (p == 0).all():
                p.normal_(std=0.05)
    return model


@pytest.mark.parametrize("name", [f"SiT-{s}/{p}" for s in PAPER_SIZES for p in (2, 4, 8)])
def test_every_official_configuration_builds_with_paper_shapes(name):
    size, patch = name[4:].split("/")
    with torch.device("meta"):
        model = SiT_models[name](input_size=32, num_classes=1000, learn_sigma=True)
        out = model(torch.zeros(2, 4, 32, 32), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    assert out.shape == (2, 4, 32, 32)
    depth = {"S": 12, "B": 12, "L": 24, "XL": 28}[size]
    hidden = {"S": 384, "B": 768, "L": 1024, "XL": 1152}[size]
    assert len(model.blocks) == depth and model.pos_embed.shape == (1, (32 // int(patch)) ** 2, hidden)
    assert model.blocks[0].attn.num_heads == {"S": 6, "B": 12, "L": 16, "XL": 16}[size]
    assert model.final_layer.linear.weight.shape == (int(patch) ** 2 * 8, hidden)
    if patch == "2":
        millions = sum(p.numel() for p in model.parameters()) / 1e6
        assert abs(millions - PAPER_SIZES[size]) < 1


def test_state_dict_names_and_shapes_are_the_official_ones():
    model = tiny(learn_sigma=True)
    expected = {
        "pos_embed": (1, 16, 32),
        "x_embedder.proj.weight": (32, 3, 2, 2),
        "x_embedder.proj.bias": (32,),
        "t_embedder.mlp.0.weight": (32, 256),
        "t_embedder.mlp.0.bias": (32,),
        "t_embedder.mlp.2.weight": (32, 32),
        "t_embedder.mlp.2.bias": (32,),
        "y_embedder.embedding_table.weight": (11, 32),
        "final_layer.linear.weight": (2 * 2 * 6, 32),
        "final_layer.linear.bias": (24,),
        "final_layer.adaLN_modulation.1.weight": (64, 32),
        "final_layer.adaLN_modulation.1.bias": (64,),
    }
    for i in range(2):
        expected.update({
            f"blocks.{i}.attn.qkv.weight": (96, 32), f"blocks.{i}.attn.qkv.bias": (96,),
            f"blocks.{i}.attn.proj.weight": (32, 32), f"blocks.{i}.attn.proj.bias": (32,),
            f"blocks.{i}.mlp.fc1.weight": (128, 32), f"blocks.{i}.mlp.fc1.bias": (128,),
            f"blocks.{i}.mlp.fc2.weight": (32, 128), f"blocks.{i}.mlp.fc2.bias": (32,),
            f"blocks.{i}.adaLN_modulation.1.weight": (192, 32), f"blocks.{i}.adaLN_modulation.1.bias": (192,),
        })
    state = model.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    # An official-layout state dict loads unchanged (strict) into a fresh model.
    tiny(learn_sigma=True).load_state_dict(state)


def test_zero_init_gives_zero_output_and_pos_embed_is_frozen():
    model = tiny()
    out = model(torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([1, 2]))
    assert torch.count_nonzero(out) == 0
    assert not model.pos_embed.requires_grad
    assert all(torch.count_nonzero(b.adaLN_modulation[-1].weight) == 0 for b in model.blocks)


def test_learn_sigma_channels_are_computed_but_dropped():
    torch.manual_seed(1)
    with_sigma = randomize(tiny(learn_sigma=True)).eval()
    x, t, y = torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([3, 4])
    out = with_sigma(x, t, y)
    assert out.shape == (2, 3, 8, 8)
    # The same network with all six channels kept: the output is its first three channels.
    with_sigma.learn_sigma = False
    everything = with_sigma(x, t, y)
    assert everything.shape == (2, 6, 8, 8)
    torch.testing.assert_close(out, everything[:, :3])


def test_unpatchify_lays_patches_out_row_by_row():
    model = tiny(in_channels=2, learn_sigma=False)
    p, c, grid = 2, 2, 4
    tokens = torch.arange(grid * grid * p * p * c, dtype=torch.float32).reshape(1, grid * grid, p * p * c)
    image = model.unpatchify(tokens)
    for i, j, a, b, ch in [(0, 0, 0, 0, 0), (1, 2, 1, 0, 1), (3, 3, 1, 1, 1), (2, 1, 0, 1, 0)]:
        assert image[0, ch, i * p + a, j * p + b] == tokens[0, i * grid + j, (a * p + b) * c + ch]


def test_position_embedding_matches_a_numpy_reference():
    dim, grid = 16, 3

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    cols, rows = np.meshgrid(np.arange(grid), np.arange(grid))  # xy indexing: first output varies along columns
    reference = np.concatenate([one_d(dim // 2, cols), one_d(dim // 2, rows)], axis=1)
    np.testing.assert_allclose(get_2d_sincos_pos_embed(dim, grid).numpy(), reference, atol=1e-6)


def test_timestep_embedding_is_cos_then_sin_of_continuous_time():
    model = tiny()
    emb = model.t_embedder.timestep_embedding(torch.tensor([0.0, 0.5]))
    assert emb.shape == (2, 256)
    torch.testing.assert_close(emb[0], torch.cat([torch.ones(128), torch.zeros(128)]))
    freqs = torch.exp(-math.log(10000) * torch.arange(128) / 128)
    torch.testing.assert_close(emb[1, :128], torch.cos(0.5 * freqs))
    torch.testing.assert_close(emb[1, 128:], torch.sin(0.5 * freqs))


def test_attention_equals_softmax_attention():
    torch.manual_seed(2)
    attn = tiny().blocks[0].attn
    x = torch.randn(2, 5, 32)
    qkv = attn.qkv(x).reshape(2, 5, 3, 4, 8).permute(2, 0, 3, 1, 4)
    q, k, v = qkv
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    reference = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 32))
    torch.testing.assert_close(attn(x), reference, atol=1e-5, rtol=1e-5)


def test_null_class_and_label_dropout():
    torch.manual_seed(3)
    model = randomize(tiny(class_dropout_prob=1.0)).eval()
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    null = model(x, t, torch.tensor([10, 10]))
    torch.testing.assert_close(model(x, t, None), null)  # y=None is the null class
    assert not torch.allclose(model(x, t, torch.tensor([1, 2])), null)
    dropped = model.y_embedder(torch.tensor([1, 2]), train=False, force_drop_ids=torch.tensor([1, 0]))
    table = model.y_embedder.embedding_table.weight
    torch.testing.assert_close(dropped, table[[10, 2]])
    model.train()  # dropout probability 1: every label becomes the null class
    torch.testing.assert_close(model(x, t, torch.tensor([1, 2])), null)


def test_unconditional_model_has_only_the_null_row():
    model = tiny(num_classes=0)
    assert model.y_embedder.embedding_table.weight.shape[0] == 1
    assert model(torch.randn(1, 3, 8, 8), torch.rand(1)).shape == (1, 3, 8, 8)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        tiny(input_size=9)
    with pytest.raises(ValueError, match="divisible"):
        tiny(num_heads=5)


def test_tokens_of_chosen_blocks_come_back_beside_an_unchanged_output():
    from helpers import random_sit

    model = random_sit(0, in_channels=1, depth=3, num_classes=4)
    x, t, y = torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0, 3])
    with torch.no_grad():
        plain = model(x, t, y)
        out, tokens = model(x, t, y, return_tokens=(1, 3))
        h = model.x_embedder(x) + model.pos_embed
        c = model.t_embedder(t) + model.y_embedder(y, False)
        after = []
        for block in model.blocks:
            h = block(h, c)
            after.append(h)
    assert torch.equal(out, plain) and set(tokens) == {1, 3}
    assert torch.equal(tokens[1], after[0]) and torch.equal(tokens[3], after[2])
    with pytest.raises(ValueError, match="outside 1..3"):
        model(x, t, y, return_tokens=(4,))


@pytest.mark.slow
@pytest.mark.parametrize("return_tokens", [(), (1, 3)])
def test_activation_checkpointing_gives_the_same_output_and_gradients(return_tokens):
    # Label dropout on (train mode) draws from the global RNG: both passes must draw the same labels.
    plain = randomize(tiny(depth=3, class_dropout_prob=0.5)).train()
    checked = randomize(tiny(depth=3, class_dropout_prob=0.5)).train()
    checked.load_state_dict(plain.state_dict())
    checked.grad_checkpointing = True
    x, t, y = torch.randn(4, 3, 8, 8), torch.rand(4), torch.tensor([0, 3, 5, 9])

    def loss_and_grads(model):
        torch.manual_seed(1)
        out = model(x, t, y, return_tokens=return_tokens)
        out, tokens = out if return_tokens else (out, {})
        loss = out.square().mean() + sum(v.square().mean() for v in tokens.values())
        model.zero_grad()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    saved = []
    hooks = (lambda tensor: saved.append(tensor.numel()) or tensor, lambda tensor: tensor)
    loss_a, grads_a = loss_and_grads(plain)
    with torch.autograd.graph.saved_tensors_hooks(*hooks):
        loss_b, grads_b = loss_and_grads(checked)
    kept_checked = sum(saved)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(*hooks):
        loss_and_grads(plain)
    assert kept_checked < sum(saved) / 2  # the blocks' activations were not kept for backward
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=0)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-7, msg=name)
    assert "grad_checkpointing" not in "".join(checked.state_dict())  # official checkpoints load unchanged
    with torch.no_grad():  # nothing to recompute when no gradient is recorded
        checked.eval(), plain.eval()
        torch.testing.assert_close(checked(x, t, y), plain(x, t, y), rtol=0, atol=0)


def test_patch_size_1_models_for_f16_latents_are_in_the_table_and_read_back():
    from sitcli.formats.architecture import describe, infer_architecture, registry_name

    # LightningDiT-XL/1's shape on f16c32 VA-VAE latents of 256 images: 16 x 16 x 32, one token per latent pixel.
    with torch.device("meta"):
        model = SiT_models["SiT-XL/1"](input_size=16, in_channels=32, num_classes=1000, learn_sigma=False)
        out = model(torch.zeros(2, 32, 16, 16), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    assert out.shape == (2, 32, 16, 16) and model.pos_embed.shape == (1, 256, 1152)
    assert model.final_layer.linear.weight.shape == (32, 1152)
    small = randomize(SiT_models["SiT-Ti/1"](input_size=4, in_channels=32, num_classes=3, learn_sigma=False))
    arch = infer_architecture(small.state_dict())
    assert (arch["patch_size"], arch["in_channels"], arch["input_size"]) == (1, 32, 4)
    assert registry_name(arch) == "SiT-Ti/1" and describe(arch).startswith("SiT-Ti/1 layout")
    x = torch.randn(2, 32, 4, 4)
    again = SiT(**arch)
    again.load_state_dict(small.state_dict(), strict=True)
    t, y = torch.tensor([0.3, 0.7]), torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.equal(again.eval()(x, t, y), small.eval()(x, t, y)) and small(x, t, y).abs().sum() > 0
