"""sitcli/ddt.py and sitcli/formats/rae.py: DiT^DH against a reference written here from the equations of
RAE's stage2/models/DDT.py and model_utils.py (read, not imported: RAE's code needs einops and is not a
package), with random weights under RAE's parameter names."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sitcli.ddt import DDT_models, DiTwDDTHead, from_rae_params
from sitcli.errors import InputError
from sitcli.formats.rae import build_ddt, ddt_architecture, is_ddt, load_ddt, read_state_dict
from sitcli.transport import Transport

# A tiny DiT^DH: 8 channels on a 4 x 4 grid, trunk 2 x 32 wide (2 heads), head 2 x 48 wide (3 heads).
TINY = dict(input_size=4, in_channels=8, hidden_size=32, depth=2, num_heads=2, head_width=48, head_depth=2,
            head_heads=3, num_classes=5)


# ---------------------------------------------------------------- RAE's module, as key names and equations


def rae_shapes(input_size, in_channels, hidden_size, depth, num_heads, head_width, head_depth, head_heads,
               num_classes, mlp_ratio=4.0):
    """name -> shape of the state dict RAE's DiTwDDTHead (use_swiglu, use_rope, use_rmsnorm, use_pos_embed,
    no qk-norm, with shift) registers, written from its __init__ (timm PatchEmbed: proj only)."""
    n = input_size * input_size
    shapes = {
        "pos_embed": (1, n, hidden_size),
        "x_embedder.proj.weight": (head_width, in_channels, 1, 1), "x_embedder.proj.bias": (head_width,),
        "s_embedder.proj.weight": (hidden_size, in_channels, 1, 1), "s_embedder.proj.bias": (hidden_size,),
        "t_embedder.W": (256,),
        "t_embedder.mlp.0.weight": (hidden_size, 512), "t_embedder.mlp.0.bias": (hidden_size,),
        "t_embedder.mlp.2.weight": (hidden_size, hidden_size), "t_embedder.mlp.2.bias": (hidden_size,),
        "y_embedder.embedding_table.weight": (num_classes + 1, hidden_size),
        "final_layer.norm_final.weight": (head_width,),
        "final_layer.linear.weight": (in_channels, head_width), "final_layer.linear.bias": (in_channels,),
        "final_layer.adaLN_modulation.1.weight": (2 * head_width, head_width),
        "final_layer.adaLN_modulation.1.bias": (2 * head_width,),
        "enc_feat_rope.freqs_cos": (n, hidden_size // num_heads),
        "enc_feat_rope.freqs_sin": (n, hidden_size // num_heads),
        "dec_feat_rope.freqs_cos": (n, head_width // head_heads),
        "dec_feat_rope.freqs_sin": (n, head_width // head_heads),
    }
    if hidden_size != head_width:
        shapes |= {"s_projector.weight": (head_width, hidden_size), "s_projector.bias": (head_width,)}
    for i in range(depth + head_depth):
        d = hidden_size if i < depth else head_width
        hid = int(2 / 3 * int(d * mlp_ratio))
        shapes |= {
            f"blocks.{i}.norm1.weight": (d,), f"blocks.{i}.norm2.weight": (d,),
            f"blocks.{i}.attn.qkv.weight": (3 * d, d), f"blocks.{i}.attn.qkv.bias": (3 * d,),
            f"blocks.{i}.attn.proj.weight": (d, d), f"blocks.{i}.attn.proj.bias": (d,),
            f"blocks.{i}.mlp.w12.weight": (2 * hid, d), f"blocks.{i}.mlp.w12.bias": (2 * hid,),
            f"blocks.{i}.mlp.w3.weight": (d, hid), f"blocks.{i}.mlp.w3.bias": (d,),
            f"blocks.{i}.adaLN_modulation.1.weight": (6 * d, d), f"blocks.{i}.adaLN_modulation.1.bias": (6 * d,),
        }
    return shapes


def rope_tables(head_dim, grid):
    """VisionRotaryEmbeddingFast(dim=head_dim // 2, pt_seq_len=grid): (cos, sin), each (grid^2, head_dim)."""
    dim = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    t = torch.arange(grid) / grid * grid
    f = torch.einsum("i,f->if", t, freqs)
    f = torch.stack([f, f], dim=-1).flatten(-2)  # einops '... n -> ... (n r)', r=2
    table = torch.cat([f[:, None, :].expand(grid, grid, dim), f[None, :, :].expand(grid, grid, dim)], dim=-1)
    return table.reshape(grid * grid, head_dim).cos(), table.reshape(grid * grid, head_dim).sin()


def sincos_2d(dim, grid):
    """DiT/MAE's numpy get_2d_sincos_pos_embed (w first in the meshgrid)."""
    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    g = np.stack(np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)), axis=0)
    return np.concatenate([one(dim // 2, g[0]), one(dim // 2, g[1])], axis=1)


def reference_forward(sd, x, tau, y, cfg, literal=True):
    """RAE's DiTwDDTHead.forward(x, t, y) in eval mode, from its equations. ``literal``: RAE's RMSNorm
    computes in float32 (x.float()); off, in x's dtype (for a float64 comparison)."""
    D, Dh, depth = cfg["hidden_size"], cfg["head_width"], cfg["depth"]
    lin = lambda v, name: F.linear(v, sd[name + ".weight"], sd.get(name + ".bias"))  # noqa: E731

    def rms(v, w):
        u = v.float() if literal else v
        return (u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + 1e-6)).type_as(v) * w

    def rotate_half(v):
        a = v.reshape(*v.shape[:-1], -1, 2)
        return torch.stack([-a[..., 1], a[..., 0]], dim=-1).reshape(v.shape)

    def attention(v, p, heads, cos, sin):
        B, N, C = v.shape
        q, k, w = lin(v, p + "qkv").reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        a = ((q * (C // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ w
        return lin(a.transpose(1, 2).reshape(B, N, C), p + "proj")

    def block(i, v, c, heads, cos, sin):
        p = f"blocks.{i}."
        if c.dim() < v.dim():
            c = c[:, None]
        sh1, sc1, g1, sh2, sc2, g2 = lin(F.silu(c), p + "adaLN_modulation.1").chunk(6, dim=-1)
        v = v + g1 * attention(rms(v, sd[p + "norm1.weight"]) * (1 + sc1) + sh1, p + "attn.", heads, cos, sin)
        a, b = lin(rms(v, sd[p + "norm2.weight"]) * (1 + sc2) + sh2, p + "mlp.w12").chunk(2, dim=-1)
        return v + g2 * lin(F.silu(a) * b, p + "mlp.w3")

    grid = cfg["input_size"]
    enc = rope_tables(D // cfg["num_heads"], grid)
    dec = rope_tables(Dh // cfg["head_heads"], grid)
    enc, dec = [t.to(x.dtype) for t in enc], [t.to(x.dtype) for t in dec]
    f = tau[:, None] * sd["t_embedder.W"][None, :] * 2 * torch.pi
    e = lin(F.silu(lin(torch.cat([torch.sin(f), torch.cos(f)], dim=-1), "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = F.silu(e + sd["y_embedder.embedding_table.weight"][y])
    tokens = x.flatten(2).transpose(1, 2)  # a 1x1 convolution is a linear map of each position's channels
    s = tokens @ sd["s_embedder.proj.weight"][:, :, 0, 0].T + sd["s_embedder.proj.bias"] + sd["pos_embed"]
    for i in range(depth):
        s = block(i, s, c, cfg["num_heads"], *enc)
    s = lin(F.silu(e[:, None].repeat(1, s.shape[1], 1) + s), "s_projector")
    h = tokens @ sd["x_embedder.proj.weight"][:, :, 0, 0].T + sd["x_embedder.proj.bias"]
    for i in range(depth, depth + cfg["head_depth"]):
        h = block(i, h, s, cfg["head_heads"], *dec)
    shift, scale = lin(F.silu(s), "final_layer.adaLN_modulation.1").chunk(2, dim=-1)
    out = lin(rms(h, sd["final_layer.norm_final.weight"]) * (1 + scale) + shift, "final_layer.linear")
    B, C = x.shape[:2]
    out = torch.einsum("nhwpqc->nchpwq", out.reshape(B, grid, grid, 1, 1, C))
    return out.reshape(B, C, grid, grid)


def random_rae_state(cfg, seed=0, dtype=torch.float32):
    """A state dict under RAE's names: every parameter random (adaLN and output layers too, so nothing
    is zero), the rotary buffers RAE's tables."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: (torch.randn(shape, generator=g) * (0.15 if len(shape) > 1 else 0.5)).to(dtype)
          for k, shape in rae_shapes(**cfg).items()}
    heads = (("enc", cfg["hidden_size"] // cfg["num_heads"]), ("dec", cfg["head_width"] // cfg["head_heads"]))
    for name, head_dim in heads:
        cos, sin = rope_tables(head_dim, cfg["input_size"])
        sd[f"{name}_feat_rope.freqs_cos"], sd[f"{name}_feat_rope.freqs_sin"] = cos.to(dtype), sin.to(dtype)
    for k in sd:
        if k.endswith("norm1.weight") or k.endswith("norm2.weight") or k.endswith("norm_final.weight"):
            sd[k] = (1 + 0.2 * torch.randn(sd[k].shape, generator=g)).to(dtype)
    return sd


def inputs(cfg, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, cfg["in_channels"], cfg["input_size"], cfg["input_size"], generator=g, dtype=dtype)
    return x, torch.tensor([0.05, 0.5, 0.93], dtype=dtype), torch.tensor([0, 4, 5])  # 5: the null class


# ---------------------------------------------------------------- tests


def test_a_state_dict_in_raes_names_loads_strictly_and_gives_raes_output():
    sd = random_rae_state(TINY)
    model = DiTwDDTHead(**TINY).eval()
    model.load_state_dict(sd, strict=True)  # every name and shape as RAE's module registers them
    x, tau, y = inputs(TINY)
    with torch.no_grad():
        ours = model.forward_native(x, tau, y)
        ref = reference_forward(sd, x, tau, y, TINY)
    assert ours.shape == x.shape and ref.abs().mean() > 0.1  # nothing zeroed out
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)  # float32, another op order: kernels differ


def test_float64_outputs_agree_to_1e_10():
    sd = random_rae_state(TINY, seed=3, dtype=torch.float64)
    model = DiTwDDTHead(**TINY).double().eval()
    model.load_state_dict(sd, strict=True)
    x, tau, y = inputs(TINY, seed=4, dtype=torch.float64)
    with torch.no_grad():
        want = reference_forward(sd, x, tau, y, TINY, literal=False)
        torch.testing.assert_close(model.forward_native(x, tau, y), want, rtol=1e-10, atol=1e-10)


def test_fixed_tables_are_raes():
    model = DiTwDDTHead(**TINY)
    for name, head_dim in (("enc", 16), ("dec", 16)):
        cos, sin = rope_tables(head_dim, 4)
        assert torch.equal(getattr(model, f"{name}_feat_rope").freqs_cos, cos)
        assert torch.equal(getattr(model, f"{name}_feat_rope").freqs_sin, sin)
    pos = torch.from_numpy(sincos_2d(32, 4)).float()
    torch.testing.assert_close(model.pos_embed[0], pos, rtol=0, atol=1e-7)
    assert not model.pos_embed.requires_grad and not model.t_embedder.W.requires_grad
    # RAE's initialisation: adaLN-Zero, so a fresh model predicts zero.
    x, tau, y = inputs(TINY)
    assert model(x, tau, y).abs().max() == 0


def test_sit_time_is_raes_reversed_and_the_velocity_negated():
    sd = random_rae_state(TINY, seed=5)
    model = DiTwDDTHead(**TINY).eval()
    model.load_state_dict(sd)
    x, t, y = inputs(TINY, seed=6)
    with torch.no_grad():
        assert torch.equal(model(x, t, y), -model.forward_native(x, 1 - t, y))
        assert torch.equal(model(x, t), model(x, t, torch.full((3,), 5)))  # no labels: the null class
        out, tokens = model(x, t, y, return_tokens=(1, 2))
    assert torch.equal(out, model(x, t, y)) and tokens[2].shape == (3, 16, 32)
    with pytest.raises(ValueError, match="trunk"):
        model(x, t, y, return_tokens=(3,))


@pytest.mark.slow
def test_raes_xl_config_has_raes_names_shapes_and_839m_parameters():
    rae_params = dict(input_size=16, patch_size=1, in_channels=768, hidden_size=[1152, 2048], depth=[28, 2],
                      num_heads=[16, 16], mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, use_qknorm=False,
                      use_swiglu=True, use_rope=True, use_rmsnorm=True, wo_shift=False, use_pos_embed=True)
    with torch.device("meta"):
        model = from_rae_params(**rae_params)  # configs/stage2/training/ImageNet256/DiTDH-XL_DINOv2-B.yaml
        table = DDT_models["DiTDH-XL"](input_size=16, in_channels=768)
    expected = rae_shapes(16, 768, 1152, 28, 16, 2048, 2, 16, 1000)
    for m in (model, table):
        assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - 839e6) < 1e6  # the paper's 839M for DiT^DH-XL


def test_a_model_trains_through_sits_transport():
    model = DDT_models["DiTDH-Ti"](input_size=4, in_channels=8, num_classes=3)
    x1, y = torch.randn(4, 8, 4, 4), torch.tensor([0, 1, 2, 0])
    loss = Transport("linear", "velocity", time_shift=2.0).training_loss(model, x1, {"y": y}).mean()
    loss.backward()
    assert loss.item() > 0 and model.final_layer.linear.weight.grad.abs().sum() > 0
    model.load_state_dict(random_rae_state(dict(TINY, hidden_size=64, num_heads=4, head_width=96, head_heads=4,
                                                depth=2, head_depth=1, num_classes=3, in_channels=8)))
    t = torch.rand(4, generator=torch.Generator().manual_seed(0))
    runs = []
    for recompute in (False, True):  # activation checkpointing: the same outputs and gradients
        model.zero_grad()
        model.grad_checkpointing = recompute
        out = model(x1, t, y, drop_labels=False)
        out.square().mean().backward()
        runs.append((out.detach(), model.blocks[0].attn.qkv.weight.grad.clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


# ---------------------------------------------------------------- reading RAE's files


def test_architecture_is_read_from_the_shapes_and_files_load_strictly(tmp_path):
    sd = random_rae_state(TINY, seed=7)
    arch = ddt_architecture(sd)
    assert arch == dict(TINY, patch_size=1, mlp_ratio=4.0, use_qknorm=False, use_swiglu=True, use_rope=True,
                        use_rmsnorm=True, wo_shift=False, use_pos_embed=True)
    assert is_ddt(sd) and not is_ddt({"x_embedder.proj.weight": torch.zeros(1)})
    # A training checkpoint (ep-*.pt) as RAE's train.py saves it, with DDP prefixes on the raw weights.
    other = {f"module.{k}": v + 1 for k, v in sd.items()}
    torch.save({"step": 7, "model": other, "ema": sd, "optimizer": {}}, tmp_path / "ep-0000010.pt")
    torch.save(sd, tmp_path / "stage2_model.pt")  # the released file: a bare state dict
    x, t, y = inputs(TINY, seed=8)
    want = reference_forward(sd, x, 1 - t, y, TINY)
    for name in ("ep-0000010.pt", "stage2_model.pt"):
        model = load_ddt(tmp_path / name)
        with torch.no_grad():
            torch.testing.assert_close(-model(x, t, y), want, rtol=1e-4, atol=1e-4)
    raw = read_state_dict(tmp_path / "ep-0000010.pt", prefer="model")
    assert set(raw) == set(sd) and torch.equal(raw["pos_embed"], sd["pos_embed"] + 1)


def test_foreign_or_damaged_stage2_files_are_refused(tmp_path):
    sd = random_rae_state(TINY, seed=9)
    with pytest.raises(InputError, match="no 's_embedder.proj.weight'"):
        ddt_architecture({k: v for k, v in sd.items() if not k.startswith("s_embedder")})
    broken = dict(sd)
    broken["blocks.1.mlp.w3.weight"] = torch.zeros(3, 3)
    with pytest.raises(InputError, match="does not fit the DiT\\^DH layout"):
        build_ddt(ddt_architecture(broken), broken)
    extra = dict(sd, **{"blocks.0.attn.extra": torch.zeros(1)})
    with pytest.raises(InputError, match="does not fit"):
        build_ddt(ddt_architecture(extra), extra)
    (tmp_path / "junk.pt").write_bytes(b"no")
    with pytest.raises(InputError, match="not a readable checkpoint"):
        read_state_dict(tmp_path / "junk.pt")
    same = dict(TINY, head_width=32, head_heads=2)
    equal_widths = random_rae_state(same, seed=10)
    with pytest.raises(InputError, match="--head-depth"):
        ddt_architecture(equal_widths)
    assert ddt_architecture(equal_widths, head_depth=2)["depth"] == 2


def test_patch_sizes_other_than_one_are_refused():
    with pytest.raises(ValueError, match="patch size 1"):
        DiTwDDTHead(patch_size=2, **TINY)
    with pytest.raises(ValueError, match="divisible by 4"):
        DiTwDDTHead(**dict(TINY, hidden_size=24, num_heads=4))  # heads of 6 channels: 2D rotary needs 4k
