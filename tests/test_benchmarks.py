"""examples/benchmarks/gpu.py: the prepared device benchmark runs end to end on the CPU (--tiny), and
reads the peak FLOP/s of the GPUs it knows from their names."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

GPU_SCRIPT = Path(__file__).parent.parent / "examples" / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", GPU_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.5), ("NVIDIA H100 PCIe", 756.5), ("NVIDIA H200", 989.5), ("NVIDIA H200 NVL", 835.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA L40S", 362.05), ("NVIDIA L4", 121.0),
    ("Tesla V100-SXM2-16GB", None),
])
def test_peak_is_read_from_the_device_name(gpu, monkeypatch, name, tflops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    peak, source = gpu.peak_bf16(torch.device("cuda"))
    assert (peak / 1e12 if peak else None) == tflops
    assert ("datasheet" in source or "HGX" in source) if tflops else source.startswith("unknown")


@pytest.mark.slow
def test_tiny_run_prints_every_table_on_the_cpu(gpu, monkeypatch, capsys, one_thread):
    monkeypatch.setattr(sys, "argv", ["gpu.py", "--tiny", "--device", "cpu", "--compile-backend", "eager"])
    gpu.main()
    out = capsys.readouterr().out
    assert "| unknown | unknown: not a CUDA device |" in out
    rows = {
        label: re.search(
            rf"^\| {re.escape(label)} \| ([\d.]+) \| ([\d.]+) \| ([\d.e+-]+) \| unknown peak \|", out, re.M
        )
        for label in ("eager", "eager, checkpointed", "compiled", "compiled, checkpointed")
    }
    assert all(rows.values()), out
    assert all(float(m.group(1)) > 0 for m in rows.values())
    flops = float(re.search(r"([\d.e+-]+) GFLOP per image per step", out).group(1))
    assert flops > 0
    sampling = re.search(r"^\| ([\d.]+) \| (\d+) \| ([\d.]+) \| (\d+) \|$", out, re.M)
    assert sampling and int(sampling.group(2)) == 3  # NFE: one per SDE step, the guided pair counted once
    for label in ("plain (true fp32)", "--fast", "--fast --tf32"):
        assert re.search(rf"^\| {re.escape(label)} \| [\d.e+-]+ \|$", out, re.M), out
