"""sitcli/runtime.py: the TF32 switch (applied, restored, on both of torch's APIs), where jobs record it, and
torch.compile equal to eager on every CPU's code."""


import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from sitcli import runs
from sitcli.cli import app
from sitcli.config import TrainConfig
from sitcli.sample_config import SampleConfig
from sitcli.errors import InputError
from sitcli.runtime import tf32
from sitcli.sample import sample
from sitcli.training import loop, train

runner = CliRunner()
TINY = dict(data="digits", model="SiT-Ti/4", batch_size=16, lr=1e-3, log_every=1, ckpt_every=2, sample_every=0)


def flags() -> tuple[str, str]:
    return torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision


@pytest.mark.parametrize("enabled, inside", [(True, ("tf32", "tf32")), (False, ("ieee", "ieee"))])
def test_tf32_is_applied_and_restored_even_after_an_error(enabled, inside):
    before = flags()
    with tf32(enabled):
        assert flags() == inside
    assert flags() == before
    with pytest.raises(RuntimeError), tf32(enabled):
        assert flags() == inside
        raise RuntimeError("boom")
    assert flags() == before


def test_tf32_on_torch_before_2_9_uses_allow_tf32(monkeypatch):
    # The surface of torch < 2.9: no fp32_precision anywhere, only the allow_tf32 flags.
    matmul = SimpleNamespace(allow_tf32=False)
    cudnn = SimpleNamespace(allow_tf32=True)
    monkeypatch.setattr(torch.backends, "cuda", SimpleNamespace(matmul=matmul))
    monkeypatch.setattr(torch.backends, "cudnn", cudnn)
    with tf32(True):
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, True)
    assert (matmul.allow_tf32, cudnn.allow_tf32) == (False, True)
    with tf32(False):
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (False, False)
    assert (matmul.allow_tf32, cudnn.allow_tf32) == (False, True)


def spy_on_training_steps(monkeypatch) -> list:
    seen = []
    step_loss = loop.step_loss

    def spy(*args, **kwargs):
        seen.append(flags())
        return step_loss(*args, **kwargs)

    monkeypatch.setattr(loop, "step_loss", spy)
    return seen


@pytest.mark.slow
def test_training_runs_under_its_tf32_setting_and_records_it(tmp_path, monkeypatch, one_thread):
    seen = spy_on_training_steps(monkeypatch)
    before = flags()
    train(TrainConfig(out=str(tmp_path / "on"), steps=2, **TINY), progress=False)
    assert set(seen) == {("tf32", "tf32")} and flags() == before
    assert json.loads((tmp_path / "on" / runs.CONFIG).read_text())["tf32"] is True
    seen.clear()
    result = runner.invoke(app, ["train", "--data", "digits", "--out", str(tmp_path / "off"), "--steps", "2",
                                 "--batch-size", "16", "--no-tf32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert set(seen) == {("ieee", "ieee")}
    assert json.loads((tmp_path / "off" / runs.CONFIG).read_text())["tf32"] is False


def test_sampling_records_tf32_and_a_no_tf32_folder_is_filled_in_full_float32(tmp_path, monkeypatch, one_thread):
    train(TrainConfig(out=str(tmp_path / "run"), steps=2, **TINY), progress=False)
    sample(SampleConfig(ckpt=str(tmp_path / "run"), out=str(tmp_path / "on"), num=2, batch_size=2, steps=2,
                        method="euler"), progress=False)
    assert json.loads((tmp_path / "on" / "sample.json").read_text())["tf32"] is True
    out = tmp_path / "samples"
    sample(SampleConfig(ckpt=str(tmp_path / "run"), out=str(out), num=2, batch_size=2, steps=2, method="euler",
                        tf32=False), progress=False)
    with pytest.raises(InputError, match="drawn with --no-tf32; pass --no-tf32 to add to it"):
        sample(SampleConfig(ckpt=str(tmp_path / "run"), out=str(out), num=3, batch_size=2, steps=2, method="euler"),
               progress=False)
    import sitcli.sample as sampling

    seen = []
    sample_ode = sampling.sample_ode
    monkeypatch.setattr(sampling, "sample_ode", lambda *a, **k: (seen.append(flags()), sample_ode(*a, **k))[1])
    result = sample(SampleConfig(ckpt=str(tmp_path / "run"), out=str(out), num=3, batch_size=2, steps=2,
                                 method="euler", tf32=False), progress=False)
    assert result.new == 1 and seen == [("ieee", "ieee")]
    assert json.loads((out / "sample.json").read_text())["tf32"] is False


COMPILED_VS_EAGER = """
import torch
from sitcli.models import SiT_models
from sitcli.runtime import compiled
torch.manual_seed(0)
model = SiT_models["SiT-Ti/4"](input_size=8, in_channels=1, num_classes=10).eval()
for p in model.parameters():
    torch.nn.init.normal_(p, std=0.02)
x, t, y = torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([1, 2])
with torch.no_grad():
    print((model(x, t, y) - compiled(model, torch.device("cpu"))(x, t, y)).abs().max().item())
"""


@pytest.mark.slow
@pytest.mark.parametrize("capability", ["avx2", "default", None])
def test_a_compiled_model_equals_eager_with_the_code_of_every_cpu(capability):
    # A forced capability makes inductor write the code of a CPU with it: AVX2's vector loops gave NaN here, and
    # without a vector ISA inductor wrote vector code that did not compile.
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    proc = subprocess.run([sys.executable, "-c", COMPILED_VS_EAGER], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.split()[-1]) < 1e-5
