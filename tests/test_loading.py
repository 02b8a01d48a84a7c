"""sitcli/loading.py: one loader for every checkpoint kind, architecture from shapes, transport from the file."""


import pytest
import torch

from sitcli.config import TrainConfig
from sitcli.convert import ConvertConfig, convert
from sitcli.errors import InputError
from sitcli.loading import DiscreteTimestepModel, load_model
from sitcli.models import SiT
from sitcli.training import train
from helpers import TINY_ARCH, assert_same, random_sit

TI = dict(input_size=8, patch_size=4, in_channels=4, hidden_size=96, depth=4, num_heads=4, num_classes=3)  # SiT-Ti/4

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("loading") / "run"
    train(TrainConfig(data="digits", out=str(out), model="SiT-Ti/4", batch_size=16, steps=2, sample_every=0,
                      interpolant="gvp", prediction="score"), progress=False)
    return out


def test_a_run_its_checkpoint_folder_and_weights_file_load_the_same_model(run):
    folder = run / "checkpoints" / "0000002"
    loaded = load_model(run)
    assert loaded.weights == folder / "ema.safetensors"
    assert (loaded.transport.interpolant.name, loaded.transport.prediction) == ("gvp", "score")
    assert loaded.config.model == "SiT-Ti/4" and loaded.config.data == "digits" and loaded.config.lr == 1e-3
    for source in (folder, folder / "ema.safetensors"):
        other = load_model(source)
        assert_same(other.model.state_dict(), loaded.model.state_dict())
        assert other.transport.interpolant.name == "gvp" and other.config == loaded.config
    raw = load_model(run, ema=False)
    assert raw.weights == folder / "model.safetensors"
    assert not all(
        torch.equal(a, b) for a, b in zip(raw.model.state_dict().values(), loaded.model.state_dict().values())
    )
    assert not any(p.requires_grad for p in loaded.model.parameters()) and not loaded.model.training


def test_a_run_refuses_settings_it_was_not_trained_with(run):
    with pytest.raises(InputError, match="holds a SiT-Ti/4, not a SiT-S/2; drop --model"):
        load_model(run, model="SiT-S/2")
    with pytest.raises(InputError, match="interpolant=gvp; drop --interpolant linear"):
        load_model(run, interpolant="linear")
    assert load_model(run, model="SiT-Ti/4", interpolant="gvp").config.model == "SiT-Ti/4"


def test_a_bare_weights_file_takes_the_transport_it_is_given(tmp_path):
    from safetensors.torch import save_file

    weights = random_sit(0, **TI).state_dict()
    save_file(weights, tmp_path / "w.safetensors")
    loaded = load_model(tmp_path / "w.safetensors", interpolant="vp", prediction="noise", sample_eps=0.01)
    assert (loaded.transport.interpolant.name, loaded.transport.prediction, loaded.transport.sample_eps) == (
        "vp",
        "noise",
        0.01,
    )
    assert loaded.config.model == "SiT-Ti/4" and loaded.config.data == "external"
    assert loaded.config.latent_scale == 0.18215 and loaded.config.image_size == 64  # 4 channels: SD-VAE latents
    assert_same(loaded.model.state_dict(), weights)


def test_a_foreign_checkpoint_never_inherits_a_preset(tmp_path):
    torch.save(random_sit(0, **TI).state_dict(), tmp_path / "SiT-Ti-4.pt")
    cfg = load_model(tmp_path / "SiT-Ti-4.pt").config
    assert cfg.model == "SiT-Ti/4" and cfg.lr is None and cfg.batch_size is None and cfg.steps == 0
    torch.save(random_sit(0).state_dict(), tmp_path / "SiT-custom.pt")  # hidden 32: outside the size table
    custom = load_model(tmp_path / "SiT-custom.pt", num_heads=2)
    assert custom.config.model is None and custom.config.input_size == 8 and custom.config.num_classes == 5
    with pytest.raises(InputError, match="custom architecture"):
        load_model(tmp_path / "SiT-custom.pt", num_heads=2, model="SiT-XL/2")


def test_official_training_args_fix_the_transport(tmp_path):
    import argparse

    state = random_sit(0, **TI).state_dict()
    torch.save(
        {"model": state, "ema": state, "args": argparse.Namespace(model="SiT-Ti/4", path_type="GVP")},
        tmp_path / "ckpt.pt",
    )
    loaded = load_model(tmp_path / "ckpt.pt", sample_eps=0.02)
    assert loaded.transport.interpolant.name == "gvp" and loaded.transport.sample_eps == 0.02
    with pytest.raises(InputError, match="drop --interpolant"):
        load_model(tmp_path / "ckpt.pt", interpolant="linear")


def test_a_dit_file_and_its_converted_run_come_wrapped_in_dit_time(tmp_path):
    weights = random_sit(0).state_dict()
    torch.save(weights, tmp_path / "DiT-tiny.pt")
    loaded = load_model(tmp_path / "DiT-tiny.pt", num_heads=2)
    assert isinstance(loaded.model, DiscreteTimestepModel) and loaded.transport.prediction == "noise"
    assert loaded.transport.interpolant.name == "ddpm" and loaded.checkpoint.kind == "dit"
    net = SiT(**TINY_ARCH).eval()
    net.load_state_dict(weights)
    x, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 4])
    with torch.no_grad():  # sit time t = 0.5 is DiT timestep 499
        assert torch.allclose(
            loaded.model(x, torch.full((2,), 0.5), y=y), net(x, torch.full((2,), 499.0), y), atol=1e-5
        )
    torch.save(random_sit(0, **TI).state_dict(), tmp_path / "DiT-Ti-4.pt")
    convert(ConvertConfig(tmp_path / "DiT-Ti-4.pt", tmp_path / "dit-run", dst_format="sit"))
    from_run = load_model(tmp_path / "dit-run")
    assert isinstance(from_run.model, DiscreteTimestepModel) and from_run.config.interpolant == "ddpm"
    assert from_run.transport.interpolant.name == "ddpm" and from_run.config.latent_scale == 0.18215


def test_a_diffusers_folder_loads_the_same_tensors(run, tmp_path):
    convert(ConvertConfig(run, tmp_path / "hf", dst_format="diffusers", check=False))
    loaded, original = load_model(tmp_path / "hf"), load_model(run)
    assert_same(loaded.model.state_dict(), original.model.state_dict())
    assert loaded.transport.interpolant.name == "gvp" and loaded.config.model == "SiT-Ti/4"


def test_missing_and_unreadable_sources_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty-run").mkdir()
    (tmp_path / "empty-run" / "config.json").write_text('{"data": "digits"}')
    with pytest.raises(InputError, match="no complete checkpoint yet"):
        load_model(tmp_path / "empty-run")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_model(tmp_path / "junk.safetensors")
