"""The CUDA paths, on whatever GPUs the machine has: bf16 and fp16 (gradient scaler) training steps,
TF32, exact resume, activation checkpointing, sampling, `sit fid --fast`, and DDP over NCCL.

Everything here is skipped, with the reason, where CUDA is absent (the rest of the suite covers the
same code on the CPU); a lent GPU runs it as ``pytest -q tests/test_cuda.py -rs``.
"""

import os

# Deterministic cuBLAS for the exact-resume test; read when the first cuBLAS handle is made.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sitcli import runs
from sitcli.cli import app
from sitcli.config import TrainConfig
from sitcli.sample_config import SampleConfig
from sitcli.sample import sample
from sitcli.training import loop, resume_config, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
TINY = dict(data="digits", model="SiT-Ti/4", batch_size=32, lr=1e-3, log_every=1, ckpt_every=2, sample_every=0)
runner = CliRunner()


def cuda_run(tmp_path, name, **kw) -> TrainConfig:
    return TrainConfig(out=str(tmp_path / name), **{**TINY, **kw})


def state_of(run: Path) -> dict:
    return runs.load_checkpoint(runs.latest_checkpoint(run))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_steps_on_cuda(tmp_path, precision, monkeypatch):
    scales = []
    step_update = loop.step_update

    def spy(loss, model, ema, opt, ema_decay, grad_clip=None, scaler=None):
        assert loss.device.type == "cuda" and next(model.parameters()).dtype == torch.float32
        scales.append(None if scaler is None else scaler.get_scale())
        return step_update(loss, model, ema, opt, ema_decay, grad_clip, scaler)

    monkeypatch.setattr(loop, "step_update", spy)
    result = train(cuda_run(tmp_path, precision, steps=4, precision=precision), progress=False, device="cuda")
    state = state_of(result.run)
    assert result.step == 4 and all(torch.isfinite(v).all() for v in state["model"].values())
    before = runs.load_checkpoint(runs.list_checkpoints(result.run)[0])["model"]  # step 2
    moved = sum(not torch.equal(state["model"][k], before[k]) for k in before)
    assert moved > len(before) // 2  # the optimiser really stepped
    if precision == "fp16":  # the gradient scaler ran every step and its state is in the checkpoint
        assert len(scales) == 4 and all(s > 0 for s in scales)
        assert state["optimizer"]["scaler"]["scale"] > 0
    else:
        assert scales == [None] * 4
    log = (result.run / "log.csv").read_text().splitlines()
    assert len(log) == 5 and all(np.isfinite(float(row.split(",")[1])) for row in log[1:])


def test_tf32_is_on_while_training_on_cuda_and_off_with_no_tf32(tmp_path, monkeypatch):
    seen = []
    step_loss = loop.step_loss
    monkeypatch.setattr(loop, "step_loss", lambda *a, **k: (seen.append(torch.backends.cuda.matmul.fp32_precision),
                                                          step_loss(*a, **k))[1])
    train(cuda_run(tmp_path, "on", steps=1), progress=False, device="cuda")
    train(cuda_run(tmp_path, "off", steps=1, tf32=False), progress=False, device="cuda")
    assert seen == ["tf32", "ieee"]
    a, b = state_of(tmp_path / "on")["model"], state_of(tmp_path / "off")["model"]
    moved = 0
    for name in a:  # Adam's first step moves a weight by ~lr either way, so they differ by 2 lr at most
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=2 * TINY["lr"] + 1e-6)
        moved += not torch.equal(a[name], b[name])
    if torch.cuda.get_device_capability()[0] >= 8:  # TF32 tensor cores exist from Ampere on
        assert moved > 0  # TF32 really changed the arithmetic


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_resume_on_cuda_continues_exactly(tmp_path, precision):
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        train(cuda_run(tmp_path, "straight", steps=4, precision=precision), progress=False, device="cuda")
        train(cuda_run(tmp_path, "halves", steps=2, precision=precision), progress=False, device="cuda")
        train(resume_config(tmp_path / "halves", {"steps": 4}), resume=True, progress=False, device="cuda")
    finally:
        torch.use_deterministic_algorithms(deterministic)
    a, b = state_of(tmp_path / "straight"), state_of(tmp_path / "halves")
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    assert a["optimizer"]["scaler"] == b["optimizer"]["scaler"]


def test_grad_checkpointing_on_cuda_matches_and_saves_memory(tmp_path):
    from sitcli.models import SiT_models
    from sitcli.training.losses import RegressionLoss, step_losses
    from sitcli.transport import Transport

    torch.manual_seed(0)
    model = SiT_models["SiT-S/2"](input_size=32, in_channels=4, num_classes=1000).cuda()
    x, y = torch.randn(16, 4, 32, 32, device="cuda"), torch.randint(0, 1000, (16,), device="cuda")
    transport = Transport("linear", "velocity", None, None, None, None)
    results = {}
    for checkpointed in (False, True):
        model.grad_checkpointing = checkpointed
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        torch.manual_seed(1)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = step_losses(model, transport, [RegressionLoss(transport)], x, y,
                                  torch.Generator("cuda").manual_seed(2))
        loss.backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        results[checkpointed] = (
            loss.item(),
            [p.grad.float().clone() for p in model.parameters() if p.grad is not None],
            peak,
        )
    (loss_a, grads_a, peak_a), (loss_b, grads_b, peak_b) = results[False], results[True]
    assert loss_b == pytest.approx(loss_a, rel=1e-3)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, rtol=5e-2, atol=1e-3)
    assert peak_b < 0.6 * peak_a, f"checkpointed peak {peak_b / 2**20:.0f} MiB vs {peak_a / 2**20:.0f} MiB"


@pytest.fixture(scope="module")
def cuda_trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda") / "run"
    train(TrainConfig(out=str(out), steps=4, **{**TINY, "ckpt_every": 4}), progress=False, device="cuda")
    return out


@pytest.mark.parametrize("sampler, precision", [("ode", "fp32"), ("sde", "bf16")])
def test_sampling_on_cuda_writes_the_images_of_every_index(cuda_trained, tmp_path, sampler, precision):
    cfg = dict(ckpt=str(cuda_trained), num=6, steps=8, sampler=sampler, precision=precision, cfg_scale=2.0)
    one = sample(SampleConfig(out=str(tmp_path / "a"), batch_size=6, **cfg), progress=False, device="cuda")
    assert one.new == 6 and one.nfe_per_sample > 0
    # Another batch split draws the same images: each index owns its noise (up to GPU round-off).
    sample(SampleConfig(out=str(tmp_path / "b"), batch_size=4, **cfg), progress=False, device="cuda")
    a = np.stack([np.asarray(Image.open(p), dtype=np.int16) for p in sorted((tmp_path / "a").glob("*.png"))])
    b = np.stack([np.asarray(Image.open(p), dtype=np.int16) for p in sorted((tmp_path / "b").glob("*.png"))])
    assert a.shape == (6, 8, 8) and a.std() > 1
    assert np.abs(a - b).max() <= (2 if precision == "fp32" else 16) and np.abs(a - b).mean() < 1
    assert json.loads((tmp_path / "a" / "sample.json").read_text())["tf32"] is True


def test_fid_fast_on_cuda_agrees_with_the_cpu(tmp_path):
    test_fid = pytest.importorskip("test_fid")
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(test_fid.random_inception_state(), weights)
    rng = np.random.default_rng(0)
    for name, level in (("a", 100), ("b", 160)):
        (tmp_path / name).mkdir()
        for i in range(4):
            img = np.clip(rng.normal(level, 40, (48, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / name / f"{i}.png")
    reports = {}
    for device, extra in (("cpu", []), ("cuda", ["--fast"]), ("cuda-plain", [])):
        json_path = tmp_path / f"{device}.json"
        result = runner.invoke(
            app,
            [
                "fid",
                str(tmp_path / "a"),
                str(tmp_path / "b"),
                "--device",
                device.split("-")[0],
                "--num-workers",
                "0",
                "--inception-weights",
                str(weights),
                "--json",
                str(json_path),
                *extra,
            ],
        )
        assert result.exit_code == 0, result.output
        reports[device] = json.loads(json_path.read_text())
    cpu = reports["cpu"]["metrics"]["fid"]
    assert cpu > 1.0 and reports["cuda"]["settings"]["tf32"] is False
    assert reports["cuda-plain"]["metrics"]["fid"] == pytest.approx(cpu, rel=1e-3)
    assert reports["cuda"]["metrics"]["fid"] == pytest.approx(cpu, rel=1e-3)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over NCCL needs 2 or more GPUs")
def test_ddp_over_nccl_trains_resumes_and_samples(tmp_path):
    from test_train_ddp import torchrun

    flags = [x for k, v in TINY.items() for x in ("--" + k.replace("_", "-"), v)]
    torchrun(
        "-m",
        "sitcli",
        "train",
        "--out",
        tmp_path / "straight",
        "--steps",
        4,
        "--device",
        "cuda",
        "--no-tf32",
        *flags,
        cwd=tmp_path,
    )
    torchrun(
        "-m",
        "sitcli",
        "train",
        "--out",
        tmp_path / "halves",
        "--steps",
        2,
        "--device",
        "cuda",
        "--no-tf32",
        *flags,
        cwd=tmp_path,
    )
    torchrun("-m", "sitcli", "train", "--resume", tmp_path / "halves", "--steps", 4, "--device", "cuda", cwd=tmp_path)
    a, b = state_of(tmp_path / "straight"), state_of(tmp_path / "halves")
    assert a["state"]["world_size"] == 2 and {"noise.rank0", "noise.rank1"} <= set(a["rng"])
    for name in a["model"]:  # NCCL all-reduce order is fixed for a fixed world size; kernels may still differ
        torch.testing.assert_close(b["model"][name], a["model"][name], rtol=0, atol=1e-5)
    torchrun(
        "-m",
        "sitcli",
        "sample",
        "--ckpt",
        tmp_path / "straight",
        "--out",
        tmp_path / "s",
        "--num-samples",
        5,
        "--steps",
        4,
        "--device",
        "cuda",
        cwd=tmp_path,
    )
    assert len(list((tmp_path / "s").glob("*.png"))) == 5


@pytest.mark.parametrize("density", ["uniform", "logit-normal", "mode", "cosmap"])
@pytest.mark.parametrize("num_timesteps", [None, 50])
def test_time_densities_draw_on_cuda_like_on_the_cpu(density, num_timesteps):
    from sitcli.transport import Transport

    tr = Transport("linear", "velocity", num_timesteps=num_timesteps, time_density=density)
    t = tr.sample_time(4096, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    t0, t1 = tr.train_interval()
    assert t.device.type == "cuda" and bool(((t >= t0) & (t <= t1)).all())
    cpu = tr.sample_time(4096, generator=torch.Generator().manual_seed(0))
    # Other random streams, the same law: the means agree to a few standard errors.
    assert abs(t.mean().item() - cpu.mean().item()) < 5 * (2 * cpu.var().item() / 4096) ** 0.5


def test_autoguided_shifted_sampling_on_cuda(tmp_path):
    run = tmp_path / "run"
    train(cuda_run(tmp_path, "run", steps=2, time_density="logit-normal"), progress=False)
    cfg = SampleConfig(
        ckpt=str(run),
        out=str(tmp_path / "s"),
        num=4,
        steps=4,
        method="heun",
        time_shift=2.0,
        guidance_model=str(run / "checkpoints" / "0000002" / "model.safetensors"),
        guidance_scale=2.0,
    )
    result = sample(cfg, progress=False, device="cuda")
    assert result.nfe_per_sample == 16 and len(list((tmp_path / "s").glob("*.png"))) == 4
