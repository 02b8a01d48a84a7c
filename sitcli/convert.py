"""`sit convert`: checkpoints between sit, the official SiT/DiT code and diffusers; DiT under sit's samplers.

    from sitcli.convert import ConvertConfig, convert
    result = convert(ConvertConfig("DiT-XL-2-256x256.pt", "dit-xl-diffusers", dst_format="diffusers"))
    print(result.deviation)                      # diffusers' DiT vs the original network, measured

(To sample any of these formats without converting, ``sitcli.loading.load_model`` reads them all.)

Formats (``--from`` / ``--to``):
    sit        a sit run folder, a checkpoint folder inside one, or a .safetensors weights file
    official   the official SiT code's .pt (raw state dict, or training checkpoint {model, ema, opt, args})
    dit        the DiT code's .pt: the same layout, trained as a DDPM (``sitcli.transport.ddpm``)
    diffusers  a diffusers model folder: diffusers' ``DiTTransformer2DModel`` or sitcli's
               ``SiTTransformer2DModel`` (``sitcli.formats.diffusers_sit``), or a pipeline folder holding one
    rae        RAE's stage-2 .pt of a DiT^DH ({"ema", "model"}; read: bare or any training checkpoint), which
               converts to and from sit run folders only

Weights are copied, never recomputed, so every round trip returns the same tensors bit for bit
(the one exception: diffusers' DiT class does not store ``pos_embed``; it is rebuilt from its
formula, and the deviation report says if the source's differed). Nothing at DST is touched until
the result is complete: it is written to a hidden folder beside DST and renamed into place.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from sitcli import atomic, runs
from sitcli.domains import COUNT, COUNT_OR_ZERO, check_domains
from sitcli.errors import InputError
from sitcli.formats import Checkpoint, nonfinite_tensors
from sitcli.formats.architecture import fewstep_parts, is_fewstep, model_with_weights
from sitcli.formats.diffusers import load_diffusers_model, write_diffusers
from sitcli.formats.official import write_official
from sitcli.formats.rae import write_rae
from sitcli.formats.sitrun import write_sit
from sitcli.loading import FORMATS, read_checkpoint
from sitcli.locks import LOCK, FolderLock
from sitcli.outputs import Kind, Output, check_outputs, json_object
from sitcli.session import session

DIFFUSERS_CLASSES = ("auto", "sit", "dit")


@dataclasses.dataclass
class Deviation:
    """How far a diffusers model's output is from sit's on the same weights and inputs.

    ``max_abs`` is over the prediction channels of a fixed random batch; ``rel`` divides it by the
    largest |sit output|. ``time_features`` is the largest difference of the 256 sinusoidal
    timestep features alone, ``pos_embed`` that of the position table (None where both are sit's).
    """

    diffusers_class: str
    inputs: str
    max_abs: float
    rel: float
    time_features: float
    pos_embed: float | None

    def __str__(self) -> str:
        if self.max_abs == 0:
            return f"{self.diffusers_class} reproduces sit exactly (max |diff| = 0 on {self.inputs})"
        text = (f"{self.diffusers_class} deviates from sit by max |diff| = {self.max_abs:.3g} "
                f"({self.rel:.3g} of max |output|) on {self.inputs}")
        if self.time_features:
            text += (f"; its timestep features differ by up to {self.time_features:.3g} (frequencies "
                     f"exp(-ln(1e4) i/127) where sit uses i/128)")
        if self.pos_embed:
            text += f"; position tables differ by up to {self.pos_embed:.3g}"
        return text


@dataclasses.dataclass
class ConvertConfig:
    """The settings of ``sit convert``: read ``src`` (format ``src_format``, None: detected) and write ``dst`` as
    ``dst_format`` (None: official for a .pt name).

    ``ema``: take the EMA weights (default) or the raw ones from a training checkpoint or run, for formats holding
    one set; a sit run keeps both. ``diffusers_class`` for ``--to diffusers``: "dit" (diffusers'
    DiTTransformer2DModel), "sit" (``formats.diffusers_sit.SiTTransformer2DModel``), or "auto": dit for DiT weights,
    sit for SiT weights. ``num_heads``: attention heads, needed only when the hidden size is not in the size table.
    ``overwrite``: replace an existing ``dst``. ``check``: when either side is diffusers, measure its output
    against sit's (``Deviation``). ``dmf_depth``: the blocks that see t of a Decoupled MeanFlow file that does not
    record it (DMF's released weights).
    """

    src: str | Path
    dst: str | Path
    src_format: str | None = None
    dst_format: str | None = None
    ema: bool = True
    diffusers_class: str = "auto"
    num_heads: int | None = None
    overwrite: bool = False
    check: bool = True
    dmf_depth: int | None = None

    def __post_init__(self):
        self.src, self.dst = Path(self.src), Path(self.dst)
        check_domains(dataclasses.asdict(self), CONVERT_DOMAINS)
        if self.diffusers_class not in DIFFUSERS_CLASSES:
            raise InputError(f"--diffusers-class {self.diffusers_class!r}: choose {', '.join(DIFFUSERS_CLASSES)}")
        for flag, value in (("--from", self.src_format), ("--to", self.dst_format)):
            if value is not None and value not in FORMATS:
                raise InputError(f"{flag} {value!r} is not a format: choose one of {', '.join(FORMATS)}")
        if self.dst_format is None:
            if self.dst.suffix not in (".pt", ".pth"):
                raise InputError(f"cannot tell the target format from {self.dst.name}: pass --to sit, official, dit "
                                 "or diffusers")
            self.dst_format = "official"


CONVERT_DOMAINS = {"num_heads": COUNT, "dmf_depth": COUNT_OR_ZERO}


@dataclasses.dataclass
class ConvertResult:
    src: Path
    dst: Path
    src_format: str
    dst_format: str
    kind: str
    arch: dict[str, Any]
    weights: str
    deviation: Deviation | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)  # e.g. weights that hold NaN or inf


#################################################################################
#                                    Converting                                 #
#################################################################################


def convert(cfg: ConvertConfig) -> ConvertResult:
    """Convert ``cfg.src`` to ``cfg.dst_format`` at ``cfg.dst`` (on the CPU: the weights are copied, the diffusers
    check runs one small batch)."""
    with session("cpu"):
        return _convert(cfg)


def _convert(cfg: ConvertConfig) -> ConvertResult:
    src, dst, dst_format, ema = cfg.src, cfg.dst, cfg.dst_format, cfg.ema
    _check_destination(src, dst, dst_format, cfg.overwrite)
    ckpt = read_checkpoint(src, cfg.src_format, cfg.num_heads, cfg.dmf_depth)
    if dst_format == "dit" and ckpt.kind != "dit":
        raise InputError(f"{src} holds SiT weights, not DiT ones: write them with --to official")
    ddt = "head_width" in ckpt.arch
    if ddt != (dst_format == "rae") and not (ddt and dst_format == "sit"):
        raise InputError(f"{src} holds SiT weights: --to rae writes RAE's DiT^DH files only" if not ddt else
                         f"{src} is a DiT^DH (RAE's wide-head model): it converts --to sit or --to rae only")
    if is_fewstep(ckpt.arch) and dst_format != "sit":
        raise InputError(f"{src} is a few-step model ({', '.join(fewstep_parts(ckpt.arch))}): the official code "
                         f"and diffusers have no such model, so it converts --to sit only")
    result = ConvertResult(src, dst, ckpt.format, dst_format, ckpt.kind, ckpt.arch, ckpt.used(ema))
    # Weights are copied as they are, but a model that samples black images is worth a word.
    for name, weights in ckpt.weights.items():
        bad = nonfinite_tensors(weights)
        if bad:
            result.warnings.append(
                f"the {name} weights hold NaN or inf in {len(bad)} of {len(weights)} tensors: "
                f"{', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}; they are converted unchanged"
            )
    diffusers_class = cfg.diffusers_class
    if diffusers_class == "auto":
        diffusers_class = "dit" if ckpt.kind == "dit" else "sit"

    dst.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(dst)
    staging = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.tmp-"))
    held = FolderLock(staging, "sit convert").acquire()  # so that another convert's clean-up leaves it alone
    try:
        staged = staging / dst.name
        with atomic.storage_errors(dst, staging):  # a full disk: an OSError naming DST, as for every other write
            if dst_format == "sit":
                write_sit(ckpt, staged)
                if "model" not in ckpt.weights or "ema" not in ckpt.weights:
                    result.weights = "the one set (as both model and ema)"
                else:
                    result.weights = "model and ema"
            elif dst_format == "rae":
                write_rae(ckpt, staged)
                result.weights = "ema and model" if "model" in ckpt.weights else "ema"
            elif dst_format in ("official", "dit"):
                write_official(ckpt.state_dict(ema), staged)
                result.notes.extend(_name_notes(dst, ckpt.kind))
            else:
                write_diffusers(ckpt, staged, ema, diffusers_class)
                if diffusers_class == "dit" and ckpt.kind == "sit":
                    result.notes.append(
                        "diffusers' DiTTransformer2DModel is fed sit's time t in [0, 1] as `timestep` here; its DiT "
                        "pipelines and schedulers (integer DDPM steps) do not apply to SiT weights"
                    )
        if cfg.check and "diffusers" in (ckpt.format, dst_format):
            diffusers_model = load_diffusers_model(staged if dst_format == "diffusers" else src)
            result.deviation = measure_deviation(ckpt, ema, diffusers_model)
        atomic.honour_umask(staged)
        _commit(staged, dst)
    finally:
        held.release()
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _clean_stale(dst: Path) -> None:
    """Remove what a killed `sit convert` (SIGTERM, kill -9: no ``finally`` ran) left beside DST: its hidden staging
    folders, and an old DST set aside by ``_commit`` (put back when DST itself is missing). A staging folder that
    a running convert holds (its lock), or that was made a moment ago and is not held yet, is left alone."""
    in_use = False
    for stale in sorted(dst.parent.glob(f".{glob.escape(dst.name)}.tmp-*")):
        if not stale.is_dir():
            continue
        if not (stale / LOCK).exists() and time.time() - stale.stat().st_mtime < 60:
            in_use = True
            continue
        try:
            FolderLock(stale, "sit convert").acquire().release()
        except InputError:  # held by a convert that is running
            in_use = True
            continue
        shutil.rmtree(stale, ignore_errors=True)
    for old in [] if in_use else sorted(dst.parent.glob(f".{glob.escape(dst.name)}.old-*")):
        if not (dst.exists() or dst.is_symlink()) and (old / dst.name).exists():
            os.rename(old / dst.name, dst)  # killed between the two renames of _commit: the old DST goes back
        shutil.rmtree(old, ignore_errors=True)


def _check_destination(src: Path, dst: Path, dst_format: str, overwrite: bool) -> None:
    """DST is never the source, nor holds it; --overwrite replaces only a previous result of the same format."""
    if src.exists() and dst.exists() and src.resolve() == dst.resolve():
        raise InputError(f"DST {dst} is the source itself: pick another destination")
    if dst.exists() and src.exists() and src.resolve().is_relative_to(dst.resolve()):
        raise InputError(f"DST {dst} contains the source: pick another destination")
    check_outputs([Output(dst, "DST", DESTINATIONS[dst_format])], {"the source": src}, overwrite)


def _is_torch_file(path: Path) -> bool:
    """A file ``torch.save`` wrote (its zip layout holds data.pkl): an official or DiT .pt."""
    try:
        with zipfile.ZipFile(path) as zf:
            return path.is_file() and any(n.endswith("/data.pkl") or n == "data.pkl" for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _is_diffusers_folder(path: Path) -> bool:
    config = json_object(path / "config.json") if path.is_dir() else None
    return config is not None and "_class_name" in config


# What --overwrite may replace, by --to: a previous result of that format.
DESTINATIONS = {
    "sit": Kind("a sit run folder (config.json, checkpoints/)", lambda p: p.is_dir() and runs.is_run(p)),
    "official": Kind("a .pt file that torch.save wrote", _is_torch_file),
    "dit": Kind("a .pt file that torch.save wrote", _is_torch_file),
    "rae": Kind("a .pt file that torch.save wrote", _is_torch_file),
    "diffusers": Kind("a diffusers model folder (config.json with _class_name)", _is_diffusers_folder),
}


def _commit(staged: Path, dst: Path) -> None:
    """Move the finished result to ``dst`` in one rename; an old ``dst`` is set aside first and
    put back if the rename fails, so ``dst`` is always either the old or the new result."""
    if staged.is_file() and (dst.is_file() or not dst.exists()):
        os.replace(staged, dst)
        return
    old = None
    if dst.exists() or dst.is_symlink():
        old = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.old-")) / dst.name
        os.rename(dst, old)
    try:
        os.rename(staged, dst)
    except BaseException:
        if old is not None:
            os.rename(old, dst)
        raise
    if old is not None:
        shutil.rmtree(old.parent, ignore_errors=True)


def _name_notes(dst: Path, kind: str) -> list[str]:
    prefix = "DiT-" if kind == "dit" else "SiT-"
    if dst.name.lower().startswith(prefix.lower()):
        return []
    flag = "--from dit" if kind == "dit" else "--from official"
    return [f"SiT and DiT files share one layout: name the file {prefix}... or pass {flag} when reading it back"]


#################################################################################
#                           Measuring diffusers against sit                     #
#################################################################################


@torch.no_grad()
def measure_deviation(
    ckpt: Checkpoint, ema: bool, diffusers_model: torch.nn.Module, batch: int = 3, seed: int = 0
) -> Deviation:
    """Run sit and the diffusers model on one fixed random batch (float32) and compare outputs.

    Times are those the weights were trained with: DiT timesteps 0..999 (fed as integers to
    diffusers' DiT class, as its pipelines do) or sit times in [0, 1]. The batch is small because
    on a CPU the two forward passes of an XL model are most of a conversion's time.
    """
    from diffusers.models.embeddings import get_timestep_embedding

    state_dict = {k: v.float() for k, v in ckpt.state_dict(ema).items()}
    sit = model_with_weights(ckpt.arch, state_dict)
    if diffusers_model.dtype != torch.float32:
        diffusers_model = diffusers_model.float()
    diffusers_model.eval()
    arch, gen = ckpt.arch, torch.Generator().manual_seed(seed)
    x = torch.randn(batch, arch["in_channels"], arch["input_size"], arch["input_size"], generator=gen)
    y = torch.arange(batch) % max(arch["num_classes"], 1)
    if ckpt.kind == "dit":
        steps = ckpt.transport.get("num_timesteps", 1000)
        t = torch.linspace(0, steps - 1, batch).round()
        inputs = f"{batch} inputs at DiT timesteps {t.long().tolist()}"
    else:
        t = torch.linspace(0, 1, batch)
        inputs = f"{batch} inputs at sit times {[round(v, 3) for v in t.tolist()]}"
    is_dit_class = type(diffusers_model).__name__ != "SiTTransformer2DModel"
    timestep = t.long() if (is_dit_class and ckpt.kind == "dit") else t
    expected = sit(x, t, y)
    got = diffusers_model(x, timestep=timestep, class_labels=y).sample[:, : arch["in_channels"]]
    max_abs = (got - expected).abs().max().item()
    time_features, pos_embed = 0.0, None
    if is_dit_class:
        theirs = get_timestep_embedding(timestep, 256, flip_sin_to_cos=True, downscale_freq_shift=1)
        time_features = (theirs - sit.t_embedder.timestep_embedding(t)).abs().max().item()
        pos_embed = (diffusers_model.pos_embed.pos_embed - state_dict["pos_embed"]).abs().max().item()
    return Deviation(
        type(diffusers_model).__name__,
        inputs,
        max_abs,
        max_abs / max(expected.abs().max().item(), 1e-30),
        time_features,
        pos_embed,
    )
