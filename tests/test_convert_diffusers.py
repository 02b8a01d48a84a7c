"""`sit convert` to and from diffusers: DiTTransformer2DModel and sitcli's SiTTransformer2DModel."""


import json
import shutil

import pytest
import torch
from diffusers import DiTTransformer2DModel
from safetensors.torch import load_file, save_file

from sitcli.convert import ConvertConfig, convert
from sitcli.formats.diffusers_sit import SiTTransformer2DModel
from sitcli.errors import InputError
from sitcli.loading import read_checkpoint
from helpers import TINY_ARCH, assert_same, random_sit

pytestmark = pytest.mark.usefixtures("one_thread")


def batch(arch=TINY_ARCH, n=3):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(n, arch["in_channels"], arch["input_size"], arch["input_size"], generator=gen)
    return x, torch.arange(n) % max(arch["num_classes"], 1)


def test_sit_weights_through_sitcli_diffusers_class_reproduce_sit(tmp_path):
    sit = random_sit()
    torch.save(sit.state_dict(), tmp_path / "SiT-tiny.pt")
    result = convert(ConvertConfig(tmp_path / "SiT-tiny.pt", tmp_path / "hf", dst_format="diffusers", num_heads=2))
    assert result.deviation.max_abs == 0 and "exactly" in str(result.deviation)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["_class_name"] == "SiTTransformer2DModel" and config["_sit"]["kind"] == "sit"
    loaded = SiTTransformer2DModel.from_pretrained(tmp_path / "hf", low_cpu_mem_usage=False).eval()
    x, y = batch()
    with torch.no_grad():
        for t in (0.0, 0.37, 1.0):
            expected = sit(x, torch.full((3,), t), y)
            assert (loaded(x, timestep=t, class_labels=y).sample - expected).abs().max() <= 1e-5
    assert loaded.sample_size == 8 and loaded.config.input_size == 8
    convert(ConvertConfig(tmp_path / "hf", tmp_path / "SiT-back.pt"))
    assert_same(torch.load(tmp_path / "SiT-back.pt", weights_only=True), sit.state_dict())


def test_dit_weights_map_onto_diffusers_dit_and_back_bit_exactly(tmp_path):
    sit = random_sit()
    torch.save(sit.state_dict(), tmp_path / "DiT-tiny.pt")
    result = convert(ConvertConfig(tmp_path / "DiT-tiny.pt", tmp_path / "hf", dst_format="diffusers", num_heads=2))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["_class_name"] == "DiTTransformer2DModel" and config["norm_eps"] == 1e-6
    assert (
        config["num_layers"],
        config["attention_head_dim"],
        config["out_channels"],
        config["num_embeds_ada_norm"],
    ) == (2, 16, 8, 5)
    saved = load_file(tmp_path / "hf" / "diffusion_pytorch_model.safetensors")
    q, k, v = sit.state_dict()["blocks.1.attn.qkv.weight"].chunk(3)
    assert torch.equal(saved["transformer_blocks.1.attn1.to_k.weight"], k)
    assert torch.equal(
        saved["transformer_blocks.1.norm1.emb.timestep_embedder.linear_2.bias"], sit.t_embedder.mlp[2].bias
    )
    # diffusers cannot reproduce DiT (timestep frequencies i/127, not i/128): measured, not hidden
    assert result.deviation.max_abs > 1e-3 and result.deviation.time_features > 0.1
    assert result.deviation.pos_embed < 1e-6
    convert(ConvertConfig(tmp_path / "hf", tmp_path / "DiT-back.pt"))
    assert_same(torch.load(tmp_path / "DiT-back.pt", weights_only=True), sit.state_dict())
    assert read_checkpoint(tmp_path / "hf").kind == "dit"


def test_the_mapping_is_exact_once_diffusers_uses_dits_frequencies(tmp_path):
    """Proof that the weights are placed right: with its frequency shift set to 0 (i/128, as DiT),
    diffusers' DiTTransformer2DModel computes the original network to float precision."""
    sit = random_sit(learn_sigma=True)
    torch.save(sit.state_dict(), tmp_path / "DiT-tiny.pt")
    convert(ConvertConfig(tmp_path / "DiT-tiny.pt", tmp_path / "hf", dst_format="diffusers", num_heads=2, check=False))
    model = DiTTransformer2DModel.from_pretrained(tmp_path / "hf", low_cpu_mem_usage=False).eval()
    for block in model.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    x, y = batch()
    timesteps = torch.tensor([0, 500, 999])
    with torch.no_grad():
        got = model(x, timestep=timesteps, class_labels=y).sample
        expected = sit(x, timesteps.float(), y)
    assert got.shape == (3, 8, 8, 8)
    assert (got[:, :4] - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max().item())


def test_sit_weights_in_diffusers_dit_class_report_the_deviation(tmp_path):
    torch.save(random_sit(learn_sigma=False).state_dict(), tmp_path / "SiT-tiny.pt")
    result = convert(
        ConvertConfig(
            tmp_path / "SiT-tiny.pt", tmp_path / "hf", dst_format="diffusers", diffusers_class="dit", num_heads=2
        )
    )
    assert 0 < result.deviation.max_abs and "sit times" in result.deviation.inputs
    assert any("do not apply to SiT weights" in note for note in result.notes)
    ckpt = read_checkpoint(tmp_path / "hf")
    assert ckpt.kind == "sit" and ckpt.transport["prediction"] == "velocity"  # kept under "_sit"


def test_training_checkpoint_and_half_precision_survive_diffusers(tmp_path):
    import argparse

    model, ema = random_sit(1), random_sit(2)
    half = {k: v.half() for k, v in ema.state_dict().items()}
    torch.save(
        {"model": model.state_dict(), "ema": half, "opt": {}, "args": argparse.Namespace(model="DiT-XL/2")},
        tmp_path / "ckpt.pt",
    )
    convert(
        ConvertConfig(tmp_path / "ckpt.pt", tmp_path / "hf", dst_format="diffusers", diffusers_class="sit", num_heads=2)
    )
    assert_same(read_checkpoint(tmp_path / "hf").state_dict(), half)
    convert(ConvertConfig(tmp_path / "ckpt.pt", tmp_path / "hf-model", dst_format="diffusers", ema=False, num_heads=2))
    convert(ConvertConfig(tmp_path / "hf-model", tmp_path / "DiT-model.pt"))
    assert_same(torch.load(tmp_path / "DiT-model.pt", weights_only=True), model.state_dict())


def test_pipeline_folders_and_sharded_weights_are_read(tmp_path):
    sit = random_sit()
    torch.save(sit.state_dict(), tmp_path / "DiT-tiny.pt")
    convert(
        ConvertConfig(
            tmp_path / "DiT-tiny.pt",
            tmp_path / "pipe" / "transformer",
            dst_format="diffusers",
            num_heads=2,
            check=False,
        )
    )
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    assert_same(read_checkpoint(tmp_path / "pipe").state_dict(), sit.state_dict())
    # the same weights as two shards with an index, as save_pretrained writes large models
    folder = tmp_path / "sharded"
    shutil.copytree(tmp_path / "pipe" / "transformer", folder)
    weights = load_file(folder / "diffusion_pytorch_model.safetensors")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    names = sorted(weights)
    shards = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2 :]}
    for shard, keys in shards.items():
        save_file({k: weights[k] for k in keys}, folder / shard)
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    assert_same(read_checkpoint(folder).state_dict(), sit.state_dict())


def test_diverged_per_block_embedders_are_refused(tmp_path):
    torch.save(random_sit().state_dict(), tmp_path / "DiT-tiny.pt")
    convert(ConvertConfig(tmp_path / "DiT-tiny.pt", tmp_path / "hf", dst_format="diffusers", num_heads=2, check=False))
    path = tmp_path / "hf" / "diffusion_pytorch_model.safetensors"
    weights = load_file(path)
    weights["transformer_blocks.1.norm1.emb.class_embedder.embedding_table.weight"] += 0.5
    save_file(weights, path)
    with pytest.raises(InputError, match="block 1's copy of the y_embedder differs"):
        convert(ConvertConfig(tmp_path / "hf", tmp_path / "DiT-back.pt"))
    assert not (tmp_path / "DiT-back.pt").exists()


def test_folders_that_are_not_diffusers_models_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a sit run, checkpoint or diffusers folder"):
        read_checkpoint(tmp_path / "empty")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(InputError, match="not a diffusers model folder"):
        read_checkpoint(tmp_path / "unet", "diffusers")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps({"_class_name": "SiTTransformer2DModel"}))
    with pytest.raises(InputError, match="has no diffusion_pytorch_model.safetensors"):
        read_checkpoint(tmp_path / "noweights")
