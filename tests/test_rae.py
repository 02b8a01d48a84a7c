"""sitcli/autoencoder/{rae,rae_decoder,decoder_training}.py: the representation autoencoder, from tiny
random DINOv2 files written here, against references written from RAE's code (stage1/rae.py,
encoders/dinov2.py, decoders/decoder.py, train_stage1.py, disc/gan_loss.py) and transformers' own
ViT-MAE layer with the same weights."""

import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel, ViTMAEConfig
from transformers.models.vit_mae.modeling_vit_mae import ViTMAELayer

from sitcli.autoencoder.decoder_training import (
    adaptive_weight, decoder_loss, decoder_step, discriminator_loss, generator_loss, hinge_d_loss, l1_loss,
    noise_augment, to_8bit, vanilla_d_loss,
)
from sitcli.autoencoder.normalization import from_mean_var
from sitcli.autoencoder.rae import RAE, RAEEncoder, load_rae_encoder
from sitcli.autoencoder.rae_decoder import (
    DECODER_SIZES, RAEDecoder, decoder_config, decoder_config_from_state_dict, read_decoder_config,
)
from sitcli.encoders import IMAGENET_MEAN, IMAGENET_STD, load_encoder
from sitcli.errors import InputError
from sitcli.formats.rae import load_decoder

DINO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=4,
            image_size=16, num_register_tokens=4)
IMAGE, PATCH = 32, 8  # 32-pixel images, 8-pixel decoder patches: a 4 x 4 token grid, the encoder fed 16 pixels


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    """A 2-layer random DINOv2 with 4 registers saved as a transformers folder; its final LayerNorm has
    random affine weights, so dropping them (RAE's choice) changes the latents."""
    torch.manual_seed(1)
    model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**DINO)).eval()
    with torch.no_grad():
        model.layernorm.weight.normal_(1, 0.5)
        model.layernorm.bias.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("rae") / "dinov2-reg"
    model.save_pretrained(path)
    return model, path


def images(n=3, seed=0, channels=3):
    return torch.rand(n, channels, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def normalise(x01):
    return (x01 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def rae_encode_reference(model, x):
    """RAE.encode with Dinov2withNorm(normalize=True): [0, 1], bicubic resize (no antialias), normalise,
    the last block's tokens through the final LayerNorm without affine, 1 class + 4 register tokens dropped."""
    u = F.interpolate((x + 1) / 2, size=(16, 16), mode="bicubic", align_corners=False)
    with torch.no_grad():
        out = model(pixel_values=normalise(u), output_hidden_states=True)
    assert torch.allclose(model.layernorm(out.hidden_states[-1]), out.last_hidden_state)  # hidden_states[-1]: pre-norm
    z = F.layer_norm(out.hidden_states[-1], (32,), eps=model.config.layer_norm_eps)[:, 5:]
    return z.transpose(1, 2).reshape(x.shape[0], 32, 4, 4)


def small_decoder(seed=0, layers=2):
    torch.manual_seed(seed)
    cfg = decoder_config("ViT-Ti", hidden_size=32, num_patches=16, patch_size=PATCH)
    decoder = RAEDecoder(cfg if layers == 2 else cfg.__class__(**{**cfg.__dict__, "decoder_num_hidden_layers": layers}))
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if name != "decoder_pos_embed":
                p.normal_(0, 0.2) if p.dim() > 1 else p.normal_(0, 0.1)
    return decoder.eval()


# ---------------------------------------------------------------- encoder


def test_encoder_gives_raes_latents_and_leaves_the_loaded_encoder_alone(dino):
    model, path = dino
    encoder = load_encoder(path)
    rae_encoder = RAEEncoder(encoder, 16)
    x = images()
    z = rae_encoder.features(x)
    assert z.shape == (3, 32, 4, 4) and z.dtype == torch.float32 and rae_encoder.grid == 4
    torch.testing.assert_close(z, rae_encode_reference(model, x), rtol=0, atol=1e-6)
    # The shared encoder still gives its own (affine) patch tokens: the norm was swapped on a copy.
    plain = encoder.features(x, grid=4)
    u = F.interpolate((x + 1) / 2, size=(16, 16), mode="bicubic", align_corners=False, antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(plain, model(pixel_values=normalise(u)).last_hidden_state[:, 5:], rtol=0, atol=1e-6)
    assert not torch.allclose(plain.transpose(1, 2).reshape(3, 32, 4, 4), z, atol=1e-2)  # the affine mattered
    # load_rae_encoder picks the input size from the image size and the decoder's patch: 32 / 8 * 4 = 16.
    loaded = load_rae_encoder(path, image_size=IMAGE, decoder_patch=PATCH)
    assert loaded.input_size == 16 and torch.equal(loaded.features(x), z)
    with pytest.raises(InputError, match="not a multiple of the RAE decoder's patch"):
        load_rae_encoder(path, image_size=30, decoder_patch=PATCH)


def test_grey_images_are_fed_as_rgb(dino):
    encoder = load_rae_encoder(dino[1], IMAGE, PATCH)
    grey = images(channels=1, seed=3)
    assert torch.equal(encoder.features(grey), encoder.features(grey.expand(-1, 3, -1, -1)))


def test_a_torch_hub_file_goes_through_timm_with_its_norm_without_affine(tmp_path):
    torch.manual_seed(2)
    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, embed_dim=64, depth=2,
                              num_heads=1, img_size=28, dynamic_img_size=True).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}  # back to torch hub's layout
    state["mask_token"] = torch.zeros(1, 64)
    first = torch.randn(1, 1, 64)
    state["register_tokens"] = state.pop("reg_token")
    state["cls_token"] = state["cls_token"] - first
    state["pos_embed"] = torch.cat([first, state["pos_embed"]], dim=1)
    torch.save(state, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    encoder = load_rae_encoder(tmp_path / "dinov2_vits14_reg4_pretrain.pth", image_size=2 * PATCH, decoder_patch=PATCH)
    assert (encoder.input_size, encoder.grid, encoder.width) == (28, 2, 64)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    u = F.interpolate((x + 1) / 2, size=(28, 28), mode="bicubic", align_corners=False)
    with torch.no_grad():
        pre = model.forward_intermediates(normalise(u), indices=1, norm=False, output_fmt="NLC",
                                          intermediates_only=True)[0]
    want = F.layer_norm(pre, (64,), eps=model.norm.eps).transpose(1, 2).reshape(2, 64, 2, 2)
    torch.testing.assert_close(encoder.features(x), want, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- decoder


def rae_decoder_shapes(enc_width, grid, patch, width, layers, mlp):
    """name -> shape of RAE's GeneralDecoder state dict (its __init__ and ViTMAELayer of transformers 4.x)."""
    shapes = {"decoder_embed.weight": (width, enc_width), "decoder_embed.bias": (width,),
              "decoder_pos_embed": (1, grid * grid + 1, width), "decoder_norm.weight": (width,),
              "decoder_norm.bias": (width,), "decoder_pred.weight": (patch * patch * 3, width),
              "decoder_pred.bias": (patch * patch * 3,), "trainable_cls_token": (1, 1, width)}
    for i in range(layers):
        p = f"decoder_layers.{i}."
        for name in ("query", "key", "value"):
            shapes |= {p + f"attention.attention.{name}.weight": (width, width),
                       p + f"attention.attention.{name}.bias": (width,)}
        shapes |= {p + "attention.output.dense.weight": (width, width), p + "attention.output.dense.bias": (width,),
                   p + "intermediate.dense.weight": (mlp, width), p + "intermediate.dense.bias": (mlp,),
                   p + "output.dense.weight": (width, mlp), p + "output.dense.bias": (width,),
                   p + "layernorm_before.weight": (width,), p + "layernorm_before.bias": (width,),
                   p + "layernorm_after.weight": (width,), p + "layernorm_after.bias": (width,)}
    return shapes


def test_raes_released_decoder_layout_is_ours():
    # configs/stage1/pretrained/DINOv2-B.yaml: DINOv2-B (768 wide) at 224 pixels, the ViTXL decoder, patch 16.
    with torch.device("meta"):
        decoder = RAEDecoder(decoder_config("ViT-XL", hidden_size=768, num_patches=256, patch_size=16))
    shapes = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    assert shapes == rae_decoder_shapes(768, 16, 16, 1152, 28, 4096)
    assert decoder.config.image_size == 256 and DECODER_SIZES["ViT-XL"] == (1152, 28, 16, 4096)


def test_decoder_matches_transformers_vit_mae_layers_and_raes_equations():
    decoder = small_decoder()
    tokens = torch.randn(2, 16, 32)
    cfg = decoder.config
    hf = ViTMAEConfig(hidden_size=cfg.decoder_hidden_size, num_attention_heads=cfg.decoder_num_attention_heads,
                      intermediate_size=cfg.decoder_intermediate_size, layer_norm_eps=1e-12, hidden_act="gelu",
                      qkv_bias=True, attn_implementation="eager")
    rename = {"attention.attention.query": "attention.q_proj", "attention.attention.key": "attention.k_proj",
              "attention.attention.value": "attention.v_proj", "attention.output.dense": "attention.o_proj",
              "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}
    sd = decoder.state_dict()
    with torch.no_grad():
        # GeneralDecoder.forward(drop_cls_token=False): embed, prepend the class token, add the position embedding,
        # the ViT-MAE layers, norm, predict, drop the class token.
        h = F.linear(tokens, sd["decoder_embed.weight"], sd["decoder_embed.bias"])
        h = torch.cat([sd["trainable_cls_token"].expand(2, -1, -1), h], dim=1) + sd["decoder_pos_embed"]
        for i in range(cfg.decoder_num_hidden_layers):
            layer = ViTMAELayer(hf).eval()
            p = f"decoder_layers.{i}."
            mine = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
            for old, new in rename.items():
                mine = {k.replace(old, new): v for k, v in mine.items()}
            layer.load_state_dict(mine, strict=True)
            h = layer(h)
            h = h[0] if isinstance(h, tuple) else h
        h = F.layer_norm(h, (cfg.decoder_hidden_size,), sd["decoder_norm.weight"], sd["decoder_norm.bias"], eps=1e-12)
        want = F.linear(h, sd["decoder_pred.weight"], sd["decoder_pred.bias"])[:, 1:]
        torch.testing.assert_close(decoder(tokens), want, rtol=1e-5, atol=1e-5)
    # The position embedding: MAE's 2D sin-cos with a zero row for the class token.
    grid = np.stack(np.meshgrid(np.arange(4, dtype=np.float32), np.arange(4, dtype=np.float32)), axis=0)
    omega = 1.0 / 10000 ** (np.arange(16, dtype=float) / 16.0)
    halves = [np.einsum("m,d->md", grid[k].reshape(-1), omega) for k in (0, 1)]
    pos = np.concatenate([np.concatenate([np.sin(a), np.cos(a)], axis=1) for a in halves], axis=1)
    torch.testing.assert_close(sd["decoder_pos_embed"][0, 1:], torch.from_numpy(pos).float(), rtol=0, atol=1e-6)
    assert not sd["decoder_pos_embed"][0, 0].any()


def test_unpatchify_is_raes_layout_and_patchify_inverts_it():
    decoder = small_decoder()
    logits = torch.randn(2, 16, 8 * 8 * 3)
    want = torch.einsum("nhwpqc->nchpwq", logits.reshape(2, 4, 4, 8, 8, 3)).reshape(2, 3, 32, 32)
    assert torch.equal(decoder.unpatchify(logits), want)
    assert torch.equal(decoder.patchify(want), logits)


def test_decoder_files_and_configs_are_read(tmp_path):
    decoder = small_decoder(seed=4)
    torch.save(decoder.state_dict(), tmp_path / "model.pt")  # extract_decoder.py's output: a bare state dict
    back = load_decoder(tmp_path / "model.pt")
    assert back.config == decoder.config
    tokens = torch.randn(1, 16, 32)
    with torch.no_grad():
        assert torch.equal(back(tokens), decoder(tokens))
    bad = dict(decoder.state_dict(), **{"decoder_layers.0.extra": torch.zeros(1)})
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="does not fit RAE's decoder layout"):
        load_decoder(tmp_path / "bad.pt")
    with pytest.raises(InputError, match="no 'decoder_embed.weight'"):
        decoder_config_from_state_dict({"x": torch.zeros(1)})
    # RAE's configs/decoder/ViTXL/config.json, with hidden_size and patch_size overridden as RAE.__init__ does.
    (tmp_path / "ViTXL").mkdir()
    (tmp_path / "ViTXL" / "config.json").write_text(json.dumps({
        "decoder_hidden_size": 1152, "decoder_intermediate_size": 4096, "decoder_num_attention_heads": 16,
        "decoder_num_hidden_layers": 28, "hidden_act": "gelu", "hidden_size": 768, "layer_norm_eps": 1e-12,
        "num_channels": 3, "patch_size": "SHOULD BE RELOADED", "qkv_bias": True}))
    cfg = read_decoder_config(tmp_path / "ViTXL", hidden_size=768, num_patches=256, patch_size=16)
    assert cfg == decoder_config("ViT-XL", 768, 256, 16)


# ---------------------------------------------------------------- the autoencoder


def test_rae_encodes_normalizes_and_decodes_as_rae_does(dino):
    model, path = dino
    decoder = small_decoder(seed=5)
    mean, var = torch.randn(32, 4, 4), torch.rand(32, 4, 4) + 0.1
    rae = RAE(load_rae_encoder(path, IMAGE, PATCH), decoder, from_mean_var(mean, var))
    assert rae.latent_shape(IMAGE) == (32, 4, 4) and rae.kind == "rae"
    x = images(seed=6)
    z = rae_encode_reference(model, x)
    n = rae.encode(x)
    torch.testing.assert_close(n, (z - mean) / torch.sqrt(var + 1e-5), rtol=0, atol=1e-5)
    assert torch.equal(n, (rae.encode_raw(x) - mean) / torch.sqrt(var + 1e-5))  # RAE's formula, bit for bit
    # RAE.decode: denormalize, (B, C, H, W) -> (B, N, C), decoder, unpatchify, undo the encoder's normalisation.
    with torch.no_grad():
        back = n * torch.sqrt(var + 1e-5) + mean
        logits = decoder(back.reshape(3, 32, 16).transpose(1, 2))
        std, mean = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        x01 = decoder.unpatchify(logits) * std + mean
    assert torch.equal(rae.decode(n), 2 * x01 - 1)
    torch.testing.assert_close(rae.decode(n), rae.decode_raw(rae.encode_raw(x)), rtol=0, atol=1e-5)
    # Other statistics on the same networks.
    plain = rae.with_normalization(from_mean_var(None, None))
    assert plain.encoder is rae.encoder and torch.equal(plain.encode(x), rae.encode_raw(x))
    grey = RAE(rae.encoder, decoder, image_channels=1)
    assert grey.decode(n).shape == (3, 1, 32, 32)
    torch.testing.assert_close(grey.decode_raw(z), rae.decode_raw(z).mean(1, keepdim=True), rtol=0, atol=1e-6)


def test_mismatched_parts_are_refused(dino):
    encoder = load_rae_encoder(dino[1], IMAGE, PATCH)
    with torch.no_grad():
        wrong = RAEDecoder(decoder_config("ViT-Ti", hidden_size=32, num_patches=64, patch_size=4))
    with pytest.raises(InputError, match="takes 64 tokens of width 32, the encoder gives 16"):
        RAE(encoder, wrong)
    rae = RAE(encoder, small_decoder())
    with pytest.raises(InputError, match="decodes 32-pixel images"):
        rae.latent_shape(64)
    with pytest.raises(InputError, match="no decoder"):
        RAE(encoder).decode(torch.zeros(1, 32, 4, 4))
    with pytest.raises(ValueError, match="deterministic"):
        rae.encode(images(), noise=torch.zeros(3, 32, 4, 4))


# ---------------------------------------------------------------- the decoder's loss


def test_noise_augmentation_is_raes_draw():
    z = torch.randn(5, 32, 4, 4)
    g = torch.Generator().manual_seed(11)
    ours = noise_augment(z, 0.8, generator=g)
    g = torch.Generator().manual_seed(11)
    sigma = 0.8 * torch.rand((5, 1, 1, 1), generator=g)  # RAE.noising: tau * U[0, 1) per sample, then eps
    assert torch.equal(ours, z + sigma * torch.randn(z.shape, generator=g))
    assert torch.equal(noise_augment(z, 0.0), z)
    per_sample = (ours - z).flatten(1).std(1) / 0.8  # each sample's sigma / tau is in [0, 1)
    assert bool((per_sample < 1.1).all()) and per_sample.std() > 0.05


def test_gan_terms_and_the_adaptive_weight():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * ((0 + 0.5 + 2) / 3 + (0 + 1 + 2.5) / 3))
    vanilla = 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
    assert vanilla_d_loss(real, fake).item() == pytest.approx(vanilla.item())
    assert generator_loss(fake).item() == pytest.approx(-fake.mean().item())
    w = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(6, 3)
    rec, gan = (x @ w.T).abs().mean(), -(x @ w.T).sum() * 0.01
    weight = adaptive_weight(rec, gan, w)
    assert adaptive_weight(rec, gan * 1e-9, w, max_weight=10.0).item() == 10.0  # clamped
    g1, g2 = torch.autograd.grad(rec, w, retain_graph=True)[0], torch.autograd.grad(gan, w)[0]
    assert weight.item() == pytest.approx((g1.norm() / (g2.norm() + 1e-6)).item())
    assert torch.equal(to_8bit(torch.tensor([-2.0, 0.0, 0.999, 2.0])), torch.tensor([0.0, 128, 255, 255]) / 127.5 - 1)
    levels = to_8bit(torch.linspace(-1, 1, 1001))
    assert torch.allclose((levels + 1) * 127.5, ((levels + 1) * 127.5).round(), atol=1e-4)


def test_decoder_loss_is_l1_lpips_and_the_weighted_gan_term(dino):
    rae = RAE(load_rae_encoder(dino[1], IMAGE, PATCH), small_decoder(seed=7).train())
    x = images(4, seed=8)
    disc = torch.nn.Conv2d(3, 1, 4, stride=4)
    lpips = lambda a, b: (a - b).pow(2).mean(dim=(1, 2, 3))  # noqa: E731 - any (B,)-valued distance
    terms = decoder_loss(rae, x, tau=0.0, lpips=lpips, lpips_weight=0.5, discriminator=disc, gan_weight=0.75)
    recon = rae.decode_raw(rae.encoder.features(x))
    assert terms["l1"].item() == pytest.approx(((recon + 1) / 2 - (x + 1) / 2).abs().mean().item(), rel=1e-5)
    assert terms["lpips"].item() == pytest.approx(lpips(x, recon).mean().item(), rel=1e-5)
    assert terms["gan"].item() == pytest.approx(-disc(recon).mean().item(), rel=1e-5)
    want = terms["l1"] + 0.5 * terms["lpips"] + 0.75 * terms["gan_weight"] * terms["gan"]
    assert terms["loss"].item() == pytest.approx(want.item(), rel=1e-5) and terms["gan_weight"] > 0
    terms["loss"].backward()
    assert rae.decoder.decoder_pred.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in rae.encoder.encoder.module.parameters())  # the encoder is frozen
    d = discriminator_loss(disc, x, terms["reconstruction"])
    assert d.item() == pytest.approx(hinge_d_loss(disc(x), disc(to_8bit(terms["reconstruction"]))).item())
    plain = decoder_loss(rae, x, tau=0.0)
    assert plain["lpips"] == 0 and plain["gan"] == 0 and plain["loss"].item() == pytest.approx(plain["l1"].item())


@pytest.mark.slow
def test_a_tiny_decoder_learns_the_digits_well_below_a_trivial_one(dino):
    """Digits upsampled to 32 pixels, the frozen random DINOv2 above, a 2-layer ViT-Ti decoder trained
    on L1 with RAE's noise (tau 0.8): its held-out L1 must fall well below the mean image's."""
    from sitcli.data import DigitsDataset

    digits = DigitsDataset(IMAGE).x  # (1797, 1, 32, 32) in [-1, 1]
    train, test = digits[:1500], digits[1500:]
    torch.manual_seed(0)
    decoder = RAEDecoder(decoder_config("ViT-Ti", hidden_size=32, num_patches=16, patch_size=PATCH))
    rae = RAE(load_rae_encoder(dino[1], IMAGE, PATCH), decoder.train(), image_channels=1)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=2e-3, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        batch = train[torch.randint(0, len(train), (64,), generator=g)]
        decoder_step(rae, optimizer, batch, clip_grad=1.0, tau=0.8, generator=g)
    decoder.eval()
    with torch.no_grad():
        ours = l1_loss(rae.decode(rae.encode(test)), test).item()
    trivial = l1_loss(train.mean(0, keepdim=True).expand_as(test), test).item()
    print(f"held-out L1 (0-1 units): decoder {ours:.4f}, mean image {trivial:.4f}")
    assert ours < 0.5 * trivial
