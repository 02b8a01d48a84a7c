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


@pytest.mark.slow
def test_few_step_solvers_benchmark_prints_its_tables(tiny_run, tmp_path, monkeypatch, capsys, one_thread):
    """examples/benchmarks/few_step_solvers.py end to end on the tiny run (a copy: it writes its solvers beside it):
    every method at each NFE, the searched solvers made by the job and reused on a second call."""
    import shutil

    script = Path(__file__).parent.parent / "examples" / "benchmarks" / "few_step_solvers.py"
    spec = importlib.util.spec_from_file_location("few_step_solvers", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    argv = ["few_step_solvers.py", "--runs", str(run), "--seeds", "2", "--num", "6", "--batch-size", "4",
            "--budgets", "4", "10", "--search-samples", "6", "--search-iterations", "2", "--search-batch-size", "3"]
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    out = capsys.readouterr().out
    assert sorted(p.name for p in run.glob("solver-*")) == [f"solver-nfe{n}-seed{s}.safetensors" for n in (10, 4)
                                                          for s in (0, 1)]
    for method in module.METHODS:
        assert re.search(rf"^\| {re.escape(method)} \| \S+ ± \S+ \| \S+ ± \S+ \|$", out, re.M), (method, out)
    assert "2 (run, seed) pairs" in out and "dopri5 default" in out
    module.main()  # the solvers are reused: no search is printed
    assert "searched solver-" not in capsys.readouterr().out
