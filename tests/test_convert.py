"""`sit convert` between official SiT/DiT .pt files and sit runs: round trips, detection, refusals."""


import argparse
import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from sitcli.cli import app
from sitcli.convert import ConvertConfig, convert
from sitcli.errors import InputError
from sitcli.loading import read_checkpoint
from sitcli.models import SiT
from helpers import TINY_ARCH, assert_same, random_sit

TI = dict(input_size=8, patch_size=4, in_channels=4, hidden_size=96, depth=4, num_heads=4, num_classes=3)  # SiT-Ti/4

pytestmark = pytest.mark.usefixtures("one_thread")


def random_weights(seed: int = 0, **arch) -> dict[str, torch.Tensor]:
    return random_sit(seed, **arch).state_dict()


def training_checkpoint(path, model_name="SiT-XL/2", arch=TINY_ARCH, **args):
    """The official training scripts' checkpoint: {"model", "ema", "opt", "args": argparse.Namespace}."""
    model, ema = random_weights(1, **arch), random_weights(2, **arch)
    opt = torch.optim.AdamW(SiT(**arch).parameters()).state_dict()
    torch.save({"model": model, "ema": ema, "opt": opt, "args": argparse.Namespace(model=model_name, **args)}, path)
    return model, ema


#################################################################################
#                                 official .pt files                            #
#################################################################################


def test_raw_weights_architecture_and_kind_from_file_name(tmp_path):
    weights = random_weights()
    torch.save(weights, tmp_path / "DiT-tiny.pt")
    ckpt = read_checkpoint(tmp_path / "DiT-tiny.pt", num_heads=2)
    assert ckpt.kind == "dit" and ckpt.format == "dit" and ckpt.transport["prediction"] == "noise"
    assert ckpt.arch == {**TINY_ARCH, "mlp_ratio": 4.0, "learn_sigma": True}
    assert_same(ckpt.state_dict(), weights)
    torch.save(random_weights(learn_sigma=False, num_classes=0), tmp_path / "SiT-uncond.pt")
    ckpt = read_checkpoint(tmp_path / "SiT-uncond.pt", num_heads=2)
    assert ckpt.kind == "sit" and not ckpt.arch["learn_sigma"] and ckpt.arch["num_classes"] == 0


def test_heads_come_from_the_size_table_or_the_flag(tmp_path):
    torch.save(random_weights(**TI), tmp_path / "SiT-Ti.pt")
    assert read_checkpoint(tmp_path / "SiT-Ti.pt").arch["num_heads"] == 4  # hidden 96 -> Ti
    torch.save(random_weights(), tmp_path / "SiT-tiny.pt")
    with pytest.raises(InputError, match="--num-heads"):
        read_checkpoint(tmp_path / "SiT-tiny.pt")
    with pytest.raises(InputError, match="not divisible"):
        read_checkpoint(tmp_path / "SiT-tiny.pt", num_heads=3)


def test_ambiguous_raw_file_needs_from(tmp_path):
    torch.save(random_weights(), tmp_path / "weights.pt")
    with pytest.raises(InputError, match="--from official .*--from dit"):
        read_checkpoint(tmp_path / "weights.pt", num_heads=2)
    assert read_checkpoint(tmp_path / "weights.pt", "dit", num_heads=2).kind == "dit"
    assert read_checkpoint(tmp_path / "weights.pt", "official", num_heads=2).kind == "sit"


def test_training_checkpoint_args_are_read_and_ema_is_the_default(tmp_path):
    path = tmp_path / "0400000.pt"
    model, ema = training_checkpoint(path, "SiT-XL/2", path_type="GVP", prediction="score", loss_weight=None,
                                     train_eps=1e-5, sample_eps=None, image_size=64)
    ckpt = read_checkpoint(path, num_heads=2)
    assert ckpt.kind == "sit" and ckpt.transport == {"interpolant": "gvp", "prediction": "score", "train_eps": 1e-5}
    convert(ConvertConfig(path, tmp_path / "ema.pt", num_heads=2))
    convert(ConvertConfig(path, tmp_path / "model.pt", ema=False, num_heads=2))
    assert_same(torch.load(tmp_path / "ema.pt", weights_only=True), ema)
    assert_same(torch.load(tmp_path / "model.pt", weights_only=True), model)
    dit = tmp_path / "dit.pt"
    training_checkpoint(dit, "DiT-XL/2", image_size=64)
    assert read_checkpoint(dit, num_heads=2).kind == "dit"


def test_args_that_contradict_the_weights_are_refused(tmp_path):
    training_checkpoint(tmp_path / "x.pt", "SiT-XL/2", path_type="Linear", image_size=256)  # 32x32 latents, not 8
    with pytest.raises(InputError, match="image_size"):
        read_checkpoint(tmp_path / "x.pt", num_heads=2)


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"pos_embed": torch.zeros(1), "args": Payload()}, tmp_path / "SiT-evil.pt")
    with pytest.raises(InputError, match=r"refused .*io\.open.*nothing in it was run"):
        convert(ConvertConfig(tmp_path / "SiT-evil.pt", tmp_path / "out.pt"))
    assert not marker.exists() and not (tmp_path / "out.pt").exists()
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "SiT-evil.pt"), str(tmp_path / "out.pt")])
    assert result.exit_code == 2 and "refused" in result.output and not marker.exists()
    # the payload is live: an unrestricted load would have run it
    torch.load(tmp_path / "SiT-evil.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x01 definitely not a checkpoint", "not a PyTorch checkpoint"),
        ("list", "not a SiT/DiT checkpoint"),
        ("strings", "not a SiT/DiT checkpoint"),
        ("missing", "no 'final_layer.linear.weight'"),
        ("shape", "does not fit|has shape"),
    ],
)
def test_files_that_are_not_checkpoints_are_refused(tmp_path, content, message):
    path = tmp_path / "SiT-bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "list":
        torch.save([torch.zeros(2)], path)
    elif content == "strings":
        torch.save({"a": "b"}, path)
    else:
        weights = random_weights()
        if content == "missing":
            del weights["final_layer.linear.weight"]
        else:
            weights["blocks.1.mlp.fc2.weight"] = torch.zeros(3, 3)
        torch.save(weights, path)
    with pytest.raises(InputError, match=message):
        convert(ConvertConfig(path, tmp_path / "out.pt", num_heads=2))
    assert not (tmp_path / "out.pt").exists()


#################################################################################
#                       sit runs, destinations, sampling                         #
#################################################################################


def test_official_to_sit_run_and_back_is_bit_exact(tmp_path):
    from sitcli.config import TrainConfig
    from sitcli.runs import latest_checkpoint, read_config

    model, ema = training_checkpoint(tmp_path / "SiT-Ti-train.pt", "SiT-Ti/4", TI, path_type="VP", prediction="noise")
    convert(ConvertConfig(tmp_path / "SiT-Ti-train.pt", tmp_path / "run", dst_format="sit"))
    config = read_config(tmp_path / "run")
    cfg = TrainConfig.from_dict(config)  # a config the trainer and sampler accept
    got = (cfg.model, cfg.interpolant, cfg.prediction, cfg.input_size, cfg.num_classes)
    assert got == ("SiT-Ti/4", "vp", "noise", 8, 3)
    folder = latest_checkpoint(tmp_path / "run")
    assert_same(load_file(folder / "ema.safetensors"), ema)
    assert_same(load_file(folder / "model.safetensors"), model)
    for use, expected in (("ema", ema), ("model", model)):
        convert(ConvertConfig(tmp_path / "run", tmp_path / f"back-{use}.pt", ema=use == "ema"))
        assert_same(torch.load(tmp_path / f"back-{use}.pt", weights_only=True), expected)
    assert read_checkpoint(tmp_path / "run").transport["interpolant"] == "vp"
    # a weights file inside the run still finds the run's config (architecture and transport)
    single = read_checkpoint(folder / "model.safetensors")
    assert single.transport["prediction"] == "noise" and single.used(ema=True) == "model"
    assert_same(single.state_dict(), model)


def test_dit_to_sit_run_keeps_the_ddpm_transport(tmp_path):
    weights = random_weights(**TI)
    torch.save(weights, tmp_path / "DiT-Ti-4.pt")
    convert(ConvertConfig(tmp_path / "DiT-Ti-4.pt", tmp_path / "run", dst_format="sit"))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["interpolant"] == "ddpm"
    ckpt = read_checkpoint(tmp_path / "run")
    assert ckpt.kind == "dit"
    assert_same(ckpt.state_dict(), weights)
    convert(ConvertConfig(tmp_path / "run", tmp_path / "DiT-back.pt"))
    assert_same(torch.load(tmp_path / "DiT-back.pt", weights_only=True), weights)


def test_a_custom_architecture_cannot_become_a_run(tmp_path):
    torch.save(random_weights(), tmp_path / "SiT-tiny.pt")
    with pytest.raises(InputError, match="--to official or --to diffusers"):
        convert(ConvertConfig(tmp_path / "SiT-tiny.pt", tmp_path / "run", dst_format="sit", num_heads=2))
    assert not (tmp_path / "run").exists()


def test_existing_destination_is_refused_unless_overwrite_and_kept_on_error(tmp_path):
    torch.save(random_weights(), tmp_path / "SiT-a.pt")
    torch.save(random_weights(3), tmp_path / "SiT-b.pt")
    (tmp_path / "SiT-bad.pt").write_bytes(b"junk")
    dst = tmp_path / "out.pt"
    torch.save(random_weights(5), dst)  # a previous result: --overwrite replaces nothing of another kind
    precious = dst.read_bytes()
    with pytest.raises(InputError, match="--overwrite"):
        convert(ConvertConfig(tmp_path / "SiT-a.pt", dst, num_heads=2))
    with pytest.raises(InputError):
        convert(ConvertConfig(tmp_path / "SiT-bad.pt", dst, num_heads=2, overwrite=True))
    assert dst.read_bytes() == precious
    convert(ConvertConfig(tmp_path / "SiT-a.pt", dst, num_heads=2, overwrite=True))
    assert_same(torch.load(dst, weights_only=True), torch.load(tmp_path / "SiT-a.pt", weights_only=True))
    # a folder destination is replaced as a whole, and nothing temporary is left behind
    convert(ConvertConfig(tmp_path / "SiT-a.pt", tmp_path / "folder", dst_format="diffusers", num_heads=2, check=False))
    (tmp_path / "folder" / "old.txt").write_text("old")
    convert(
        ConvertConfig(
            tmp_path / "SiT-b.pt", tmp_path / "folder", dst_format="diffusers", num_heads=2, overwrite=True, check=False
        )
    )
    assert not (tmp_path / "folder" / "old.txt").exists() and (tmp_path / "folder" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SiT-a.pt", "SiT-b.pt", "SiT-bad.pt", "folder", "out.pt"]
    with pytest.raises(InputError, match="source itself"):
        convert(ConvertConfig(tmp_path / "SiT-a.pt", tmp_path / "SiT-a.pt", num_heads=2, overwrite=True))


def test_target_format_needs_to_unless_dst_is_a_pt_file(tmp_path):
    torch.save(random_weights(), tmp_path / "SiT-a.pt")
    with pytest.raises(InputError, match="pass --to"):
        convert(ConvertConfig(tmp_path / "SiT-a.pt", tmp_path / "out", num_heads=2))
    with pytest.raises(InputError, match="not DiT ones"):
        convert(ConvertConfig(tmp_path / "SiT-a.pt", tmp_path / "out.pt", dst_format="dit", num_heads=2))


def test_cli_reports_and_exit_codes(tmp_path):
    torch.save(random_weights(), tmp_path / "DiT-tiny.pt")
    runner = CliRunner()
    ok = runner.invoke(
        app, ["convert", str(tmp_path / "DiT-tiny.pt"), str(tmp_path / "hf"), "--to", "diffusers", "--num-heads", "2"]
    )
    assert ok.exit_code == 0, ok.output
    assert "DiT (DDPM" in ok.output and "deviates from sit" in ok.output and "i/127" in ok.output
    again = runner.invoke(
        app, ["convert", str(tmp_path / "DiT-tiny.pt"), str(tmp_path / "hf"), "--to", "diffusers", "--num-heads", "2"]
    )
    assert again.exit_code == 2 and "--overwrite" in again.output
    missing = runner.invoke(app, ["convert", str(tmp_path / "nope.pt"), str(tmp_path / "x.pt")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
