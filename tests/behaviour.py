"""The behaviour record: tiny runs of every job through the CLI, and their outputs in a portable form.

Float computations differ in their last bits between CPU types (MKL, oneDNN and ATen kernels for AVX2,
AVX-512, AMX), so each kind of output is kept and compared as exactly as it is exact on every x86 machine:

- **exact**: configs and other JSON (a JSON object may gain keys, never change one), labels.csv, RNG state,
  integer tensors, shapes and dtypes, printed text and integers, file names. No float arithmetic reaches them.
- **tensors** (weights, EMA, optimizer moments, converted checkpoints, FID statistics): each float tensor as a
  fingerprint (RMS, max |x|, two elements, four random +-1 projections / sqrt(n), which move by the RMS of a spread
  change). A file passes when every tensor moved by at most ``each`` of its RMS and the median tensor by at most
  ``median`` (``TOLERANCES``, by the precision the run trained in). Kernel noise moves most tensors by ~1e-7 and a
  few by up to 3e-5: the attention key bias, whose gradient is zero in exact arithmetic (softmax ignores a shift
  shared by all keys), so Adam turns rounding noise into its updates. A change of behaviour moves every tensor.
- **log**: log.csv's columns but timing, each number within ``log`` of itself.
- **pixels**: PNGs and uint8 arrays decoded, at most one level apart on at most 1% of the pixels (a float on a
  rounding edge may round the other way elsewhere; a changed sampler moves many pixels by many levels).
- **numbers**: FID, KID and the numbers of printed lines (NLL, conversion checks) within 1e-4 of max(|x|, 1);
  the text around them exact.

``python tests/behaviour.py OUT.json [--train-only]`` writes the outputs of a fresh run, so that another process
(with other kernels, ``ATEN_CPU_CAPABILITY`` / ``MKL_ENABLE_INSTRUCTIONS`` / ``ONEDNN_MAX_CPU_ISA``) can be compared.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import re
import sys
import tempfile
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import load_file
from typer.testing import CliRunner

from sitcli.cli import app
from sitcli.training.reports import TIMING_COLUMNS


@dataclass(frozen=True)
class Tolerance:
    """How far a float output may move between machines (fractions of a tensor's RMS, or of a logged number)."""

    each: float  # every tensor of a file
    median: float  # the file's median tensor
    log: float = 1e-5  # log.csv's numbers, relative


# The worst of four kernel sets (ATEN_CPU_CAPABILITY avx512 / avx2 / default, MKL and oneDNN capped to AVX2 or SSE4;
# one thread) against the record, as fractions of a tensor's RMS (each / median tensor of a file): fp32 weights
# 4.7e-5 / 9.1e-7, their optimizer moments 1.8e-4 / 1.5e-6, logged losses 0; the bf16 run's weights 1.9e-2 /
# 1.9e-4, its moments 0.14 / 1.4e-3, its losses 2.5e-5; FID statistics 7.5e-4 / 1.2e-4. Changing the loss weight by
# (1 + 1e-5 t), or the training times by 1e-5 t (1 - t), moves the median fp32 weight by >= 5.3e-6 and the median
# moment by >= 1.4e-5 (tests/test_behaviour_unchanged.py fails on both); a change of 1e-6 is below the noise.
TOLERANCES = {
    "fp32": Tolerance(each=5e-4, median=3e-6),
    "fp32 optimizer": Tolerance(each=1e-3, median=5e-6),
    "bf16": Tolerance(each=0.1, median=1e-3, log=2e-4),
    "bf16 optimizer": Tolerance(each=1.0, median=1e-2),
    "statistics": Tolerance(each=5e-3, median=1e-3),
}
NUMBER_TOL = 1e-4  # of max(|x|, 1): FID, KID, printed numbers
PIXEL_LEVELS, PIXEL_SHARE = 1, 0.01
NOT_COMPARED = {"loss.png"}  # matplotlib's drawing of log.csv: its bytes follow matplotlib's version and fonts
TRAIN = ["--data", "digits", "--batch-size", "32", "--log-every", "2", "--ckpt-every", "4", "--threads", "1"]
runner = CliRunner()


# ---------------------------------------------------------------- fingerprints


@cache
def _signs(n: int) -> np.ndarray:
    """Four fixed rows of +-1 for n numbers: integer draws, the same on every machine."""
    return np.random.default_rng(n).integers(0, 2, size=(4, n)).astype(np.float64) * 2 - 1


def _g(x: float) -> float:
    return float(f"{x:.8g}")


def array_print(x: np.ndarray, tolerance: str) -> dict:
    """Pixels for uint8 arrays, a digest for other integer arrays, a fingerprint for floats."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return {"~pixels": list(x.shape), "zlib": base64.b64encode(zlib.compress(x.tobytes(), 9)).decode()}
    if x.dtype.kind in "biu":
        return {"shape": list(x.shape), "dtype": str(x.dtype), "sha256": hashlib.sha256(x.tobytes()).hexdigest()[:20]}
    flat = x.astype(np.float64).ravel()
    n = flat.size
    return {
        "~tensor": list(x.shape), "dtype": str(x.dtype), "tolerance": tolerance,
        "rms": _g(np.sqrt(np.mean(flat**2))) if n else 0.0,
        "absmax": _g(np.abs(flat).max()) if n else 0.0,
        "picks": [_g(flat[0]), _g(flat[-1])] if n else [],
        "proj": [_g(v) for v in _signs(n) @ flat / math.sqrt(max(n, 1))],
    }


def tree_print(value, tolerance: str, prefix: str = "") -> dict:
    """Every leaf of a loaded torch object (a state dict, optimizer state), by its dotted path."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    elif isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        return {prefix[:-1]: array_print(tensor.double().numpy() if tensor.is_floating_point() else tensor.numpy(),
                                         tolerance)}
    else:
        return {prefix[:-1]: value}
    out = {}
    for key, item in items:
        out.update(tree_print(item, tolerance, f"{prefix}{key}."))
    return out


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def text_print(text: str) -> dict:
    """A printed line: its text with numbers as '#', and the numbers."""
    return {"~text": NUMBER.sub("#", text), "numbers": [float(v) for v in NUMBER.findall(text)]}


def file_print(path: Path, root: Path, precision: str = "fp32"):
    """What a written file holds, in the form it is compared in (see the module docstring)."""
    if path.suffix == ".json":
        value = json.loads(path.read_text().replace(str(root), "<tmp>"))
        if path.name == "manifest.json":  # digests of float files (compared as tensors), sizes of JSON with paths
            value["files"] = {name: {} if name.endswith(".json") else {"size": entry["size"]}
                              for name, entry in value["files"].items()}
        return value
    if path.name == "log.csv":
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
        columns = [c for c in (rows[0] if rows else {}) if c not in TIMING_COLUMNS]
        return {"~log": columns, "tolerance": precision,
                "values": [[float(r[c]) if r[c] else None for c in columns] for r in rows]}
    if path.suffix == ".png":
        return array_print(np.asarray(Image.open(path)), precision)
    if path.suffix == ".safetensors":
        return {k: array_print(v, precision) for k, v in sorted(load_file(path).items())}
    if path.suffix in (".pt", ".pth"):
        tolerance = f"{precision} optimizer" if path.name == "optimizer.pt" else precision
        return tree_print(torch.load(path, map_location="cpu", weights_only=True), tolerance)
    if path.suffix == ".npz":
        with np.load(path) as arrays:
            return {k: array_print(arrays[k], "statistics") for k in sorted(arrays.files)}
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:20]}


def folder_prints(folder: Path, root: Path, precision: str = "fp32") -> dict[str, object]:
    """Every file under ``folder`` but hidden ones and NOT_COMPARED, by relative name."""
    return {
        str(path.relative_to(folder)): file_print(path, root, precision)
        for path in sorted(Path(folder).rglob("*"))
        if path.is_file() and not path.name.startswith(".") and path.name not in NOT_COMPARED
    }


# ---------------------------------------------------------------- comparison


def tensor_move(recorded: dict, now: dict) -> float:
    """The largest change of a fingerprint's numbers, as a fraction of the tensor's RMS (inf for another shape)."""
    if not isinstance(now, dict) or now.get("~tensor") != recorded["~tensor"] or now.get("dtype") != recorded["dtype"]:
        return math.inf
    pairs = [(recorded["rms"], now["rms"]), (recorded["absmax"], now["absmax"]),
             *zip(recorded["picks"], now["picks"]), *zip(recorded["proj"], now["proj"])]
    worst = max(abs(a - b) for a, b in pairs)
    return worst / max(recorded["rms"], now["rms"]) if worst else 0.0


def _pixels(image: dict) -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(image["zlib"])), np.uint8).astype(int)


def _is_fingerprint(value) -> bool:
    return isinstance(value, dict) and "~tensor" in value


def tensor_differences(recorded: dict, now: dict, where: str) -> list[str]:
    """A file's float tensors (name -> fingerprint): each, and the median one, within the file's tolerance."""
    added = sorted(k for k, v in now.items() if _is_fingerprint(v) and k not in recorded)
    if added:
        return [f"{where}: new tensors {added[:5]}"]
    moves = {k: tensor_move(v, now.get(k)) for k, v in recorded.items()}
    tolerance = TOLERANCES[next(iter(recorded.values()))["tolerance"]]
    worst = max(moves, key=moves.get)
    median = float(np.median(list(moves.values())))
    if moves[worst] <= tolerance.each and median <= tolerance.median:
        return []
    return [(f"{where}: the median tensor moved by {median:.1e} of its RMS (tolerance {tolerance.median:.0e}), "
             f"{worst or 'the largest'} by {moves[worst]:.1e} ({tolerance.each:.0e})")]


def differences(recorded, now, where: str) -> list[str]:
    """Where ``now`` is not ``recorded`` under the module's tolerances; [] when it is."""
    if _is_fingerprint(recorded):
        return differences({"": recorded}, {"": now}, where)
    if isinstance(recorded, dict) and "~pixels" in recorded:
        if not isinstance(now, dict) or now.get("~pixels") != recorded["~pixels"]:
            return [f"{where}: image of shape {recorded['~pixels']} -> {now}"]
        moved = np.abs(_pixels(recorded) - _pixels(now))
        if moved.max(initial=0) > PIXEL_LEVELS or (moved > 0).mean() > PIXEL_SHARE:
            return [f"{where}: {int((moved > 0).sum())} pixels moved, by up to {moved.max()} levels"]
        return []
    if isinstance(recorded, dict) and "~log" in recorded:
        if not isinstance(now, dict) or now.get("~log") != recorded["~log"] or \
                len(now["values"]) != len(recorded["values"]):
            return [f"{where}: columns or rows changed"]
        rtol = TOLERANCES[recorded["tolerance"]].log
        bad = [f"row {i} {c} {a} -> {b}" for i, (ra, rb) in enumerate(zip(recorded["values"], now["values"]))
               for c, a, b in zip(recorded["~log"], ra, rb) if (a is None) != (b is None) or
               (a is not None and abs(a - b) > rtol * abs(a) + 1e-12)]
        return [f"{where}: {'; '.join(bad[:3])}"] if bad else []
    if isinstance(recorded, dict) and "~text" in recorded:
        same = isinstance(now, dict) and now.get("~text") == recorded["~text"] and \
            len(now["numbers"]) == len(recorded["numbers"]) and \
            all(abs(a - b) <= NUMBER_TOL * max(abs(a), 1) for a, b in zip(recorded["numbers"], now["numbers"]))
        return [] if same else [f"{where}: {recorded} -> {now}"]
    if isinstance(recorded, dict):
        if not isinstance(now, dict):
            return [f"{where}: {recorded!r} -> {now!r}"]
        tensors = {k: v for k, v in recorded.items() if _is_fingerprint(v)}
        out = tensor_differences(tensors, now, where) if tensors else []
        for key, value in recorded.items():  # a dict may gain keys (a new setting at its default), never lose one
            if key not in tensors:
                out += [f"{where}.{key}: gone"] if key not in now else differences(value, now[key], f"{where}.{key}")
        return out
    if isinstance(recorded, float) and isinstance(now, float):
        return [] if abs(recorded - now) <= NUMBER_TOL * max(abs(recorded), 1) else [f"{where}: {recorded} -> {now}"]
    return [] if recorded == now else [f"{where}: {recorded!r} -> {now!r}"]


def compare(recorded: dict, now: dict, only=None) -> list[str]:
    """Every difference between a record and a run's outputs (outputs no longer written first)."""
    keys = [k for k in recorded if only is None or k in only]
    return [f"{k}: no longer written" for k in keys if k not in now] + \
        [d for k in keys if k in now for d in differences(recorded[k], now[k], k)]


def dumps(record: dict) -> str:
    """One output per line, so that a re-recording's diff names what moved."""
    lines = [f"{json.dumps(k)}: {json.dumps(v, sort_keys=True, separators=(',', ':'))}"
             for k, v in sorted(record.items())]
    return "{\n" + ",\n".join(lines) + "\n}\n"


# ---------------------------------------------------------------- the runs


def sit(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def random_inception(path: Path) -> Path:
    """Random Inception weights under pytorch-fid's names, with unit-scale activations."""
    from sitcli.evaluate.inception import FIDInceptionV3

    g = torch.Generator().manual_seed(0)
    state = {}
    for key, ref in FIDInceptionV3().state_dict().items():
        if key.endswith("conv.weight"):
            state[key] = torch.randn(ref.shape, generator=g) * math.sqrt(2.0 / ref[0].numel())
        elif key.endswith("running_var") or key.endswith("bn.weight"):
            state[key] = 0.5 + torch.rand(ref.shape, generator=g)
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        else:
            state[key] = 0.1 * torch.randn(ref.shape, generator=g)
    torch.save(state, path)
    return path


def tiny_dit(path: Path) -> Path:
    """A random pixel-space DiT .pt (1 channel, 8x8, 10 classes, hidden 96 = the Ti row's 4 heads)."""
    from sitcli.models import SiT

    torch.manual_seed(3)
    model = SiT(input_size=8, patch_size=2, in_channels=1, hidden_size=96, depth=2, num_heads=4, num_classes=10)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.1)
    torch.save(model.state_dict(), path)
    return path


def train_a(tmp: Path) -> dict[str, object]:
    """Run A alone (linear, velocity, 8 steps): the run the sharpness tests change on purpose."""
    sit("train", *TRAIN, "--out", tmp / "A", "--steps", 8, "--sample-every", 4)
    return {f"train A: {key}": value for key, value in folder_prints(tmp / "A", tmp).items()}


def train_outputs(tmp: Path) -> dict[str, object]:
    """The four training runs (A: linear velocity; B: discrete VP noise; C: GVP score in bf16; R: A resumed)."""
    got = train_a(tmp)
    b, c, r = tmp / "B", tmp / "C", tmp / "R"
    sit("train", *TRAIN, "--out", b, "--steps", 4, "--sample-every", 0, "--interpolant", "vp", "--prediction", "noise",
        "--loss-weight", "likelihood", "--num-timesteps", 100)
    sit("train", *TRAIN, "--out", c, "--steps", 4, "--sample-every", 0, "--interpolant", "gvp", "--prediction", "score",
        "--precision", "bf16", "--grad-clip", "0.5", "--seed", 3)
    sit("train", *TRAIN, "--out", r, "--steps", 4, "--sample-every", 4)
    sit("train", "--resume", r, "--steps", 8)
    for name, run, precision in (("train B", b, "fp32"), ("train C", c, "bf16"), ("train R (resumed)", r, "fp32")):
        got.update({f"{name}: {key}": value for key, value in folder_prints(run, tmp, precision).items()})
    return got


def outputs(tmp: Path) -> dict[str, object]:
    """Run every job once on tiny settings; what each wrote or printed, by name."""
    got = train_outputs(tmp)
    a, b, c = tmp / "A", tmp / "B", tmp / "C"
    samples = {
        "ode adams": [a, "--class-labels", "0,1,2,3,4,5,6,7,8,9", "--npz", "--grid", tmp / "grid.png"],
        "ode heun": [a, "--method", "heun", "--steps", 10],
        "ode dopri5": [a, "--method", "dopri5"],
        "ode bf16": [a, "--method", "rk4", "--steps", 5, "--precision", "bf16"],
        "sde euler sigma": [a, "--sampler", "sde", "--steps", 20],
        "sde heun SBDM tweedie": [a, "--sampler", "sde", "--method", "heun", "--steps", 10, "--w", "SBDM",
                                  "--last-step", "tweedie"],
        "sde guided": [a, "--sampler", "sde", "--steps", 20, "--cfg-scale", 2.5, "--cfg-interval", 0.2, 0.8],
        "ode guided": [a, "--cfg-scale", 1.5, "--steps", 10],
        "ode no-ema": [a, "--no-ema", "--steps", 10],
        "discrete vp noise": [b, "--method", "euler", "--steps", 10],
        "gvp score sde": [c, "--sampler", "sde", "--steps", 10, "--w", "linear"],
        "bare safetensors": [a / "checkpoints" / "0000008" / "ema.safetensors", "--model", "SiT-Ti/4", "--steps", 10],
        "dit pt": [tiny_dit(tmp / "DiT-tiny.pt"), "--method", "heun", "--steps", 10],
    }
    for name, (ckpt, *flags) in samples.items():
        out = tmp / "samples" / name.replace(" ", "-")
        printed = sit("sample", "--ckpt", ckpt, "--out", out, "--num", 12, "--batch-size", 5, *flags)
        got[f"sample {name}: nfe"] = re.search(r"NFE\s+per\s+sample\s+([\d.]+)", printed).group(1)
        got.update({f"sample {name}: {key}": value for key, value in folder_prints(out, tmp).items()})
    got["sample ode adams: grid.png"] = file_print(tmp / "grid.png", tmp)

    nll = {"rk4": ["--method", "rk4", "--steps", 4], "dopri5": ["--atol", "1e-3", "--rtol", "1e-3"]}
    for name, flags in nll.items():
        printed = sit("nll", "--ckpt", a, "--num-samples", 6, "--batch-size", 4, *flags)
        got[f"nll {name}"] = text_print(printed.strip().splitlines()[-1])  # the result line, after the progress bar

    official = tmp / "SiT-Ti-4.pt"
    sit("convert", a, official, "--to", "official")
    got["convert official .pt"] = file_print(official, tmp)
    sit("convert", official, tmp / "back", "--to", "sit")
    got.update({f"convert back to sit: {k}": v for k, v in folder_prints(tmp / "back", tmp).items()})
    back, source = tmp / "back" / "checkpoints" / "0000000", a / "checkpoints" / "0000008"
    got["convert back to sit: its EMA bytes are the source run's EMA"] = \
        (back / "ema.safetensors").read_bytes() == (source / "ema.safetensors").read_bytes()
    printed = sit("convert", a, tmp / "diffusers", "--to", "diffusers", "--no-ema")
    got["convert diffusers: check"] = text_print(re.search(r"check: .*", printed).group(0))
    got["convert diffusers: weights"] = file_print(tmp / "diffusers" / "diffusion_pytorch_model.safetensors", tmp)
    printed = sit("convert", tmp / "DiT-tiny.pt", tmp / "dit-diffusers", "--to", "diffusers")
    line = re.sub(r"\s+", " ", re.search(r"check: .*", printed, re.S).group(0).split("\n")[0])
    got["convert dit diffusers: check"] = text_print(line)
    sit("sample", "--ckpt", tmp / "diffusers", "--out", tmp / "samples" / "from-diffusers", "--num", 4, "--steps", 10)
    got.update({f"sample diffusers: {k}": v for k, v in folder_prints(tmp / "samples" / "from-diffusers", tmp).items()})

    weights = random_inception(tmp / "inception.pth")
    stats = tmp / "stats.npz"
    sit("fid", tmp / "samples" / "ode-adams", tmp / "samples" / "sde-euler-sigma", "--inception-weights", weights,
        "--metrics", "fid,kid", "--kid-subsets", 3, "--save-stats", stats, "--json", tmp / "fid.json",
        "--batch-size", 6, "--num-workers", 0, "--device", "cpu")
    got["fid: stats.npz"] = file_print(stats, tmp)
    metrics = json.loads((tmp / "fid.json").read_text())["metrics"]
    got.update({f"fid: {k}": float(v) for k, v in sorted(metrics.items())})
    return got


def on_one_thread(make, tmp: Path) -> dict[str, object]:
    """``make(tmp)`` with torch on one thread (the record's setting), restoring the thread count after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return make(tmp)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    make = train_outputs if "--train-only" in sys.argv[2:] else outputs
    with tempfile.TemporaryDirectory() as folder:
        Path(sys.argv[1]).write_text(json.dumps(on_one_thread(make, Path(folder))))
