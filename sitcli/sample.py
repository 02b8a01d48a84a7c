"""Sampling: images from a trained model, one PNG per global index, resumable and shardable.

Every index i has its own random streams, seeded from (seed, i): its class label (when labels are
random), its starting noise and, for the SDE, its Brownian increments. An image therefore does not
depend on the batch it was drawn in, on the number of ranks, or on restarts; re-running into the
same folder only draws the missing indices. (With an adaptive ODE solver the step sizes are chosen
per batch, so images agree only up to the solver tolerance across batch sizes.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sitcli import atomic, distributed, runs
from sitcli.sample_config import PROVENANCE, UNUSED_BY, SampleConfig
from sitcli.errors import InputError
from sitcli.formats import nonfinite_tensors
from sitcli.guidance import AutoGuidance, ClassifierFreeGuidance
from sitcli.images import make_grid, read_png, to_images, to_pil
from sitcli.latent_space import model_autoencoder, pixel_channels
from sitcli.loading import Loaded, load_model
from sitcli.locks import LOCK
from sitcli.outputs import Kind, Output, check_outputs, json_object
from sitcli.runtime import autocast_model, check_device_precision, compiled
from sitcli.session import Session, session
from sitcli.seeds import check_balanced, index_generator, labels_and_noise
from sitcli.solver_file import file_sha256, read_solver
from sitcli.transport import ODE_METHODS, sample_meanflow, sample_ode, sample_sde
from sitcli.transport.meanflow import meanflow_time_grid
from sitcli.transport.samplers import ode_time_grid, sde_time_grid
from sitcli.transport.searched import SearchedSolver, check_solver, model_fingerprint
from sitcli.transport.time_conventions import interval_in_time
from sitcli.transport.time_grids import describe_time_shift, resolve_time_shift

SETTINGS_FILE = "sample.json"
GRIDS = ".grids.json"  # the --grid files drawn from the folder, with their sha256: the ones a rerun may replace
NPZ = "samples.npz"  # kept describing every PNG: rewritten whenever images are added to a folder that has one


#################################################################################
#                                    The job                                    #
#################################################################################


@dataclass
class SampleResult:
    out: Path
    new: int  # images drawn by this call (all ranks)
    total: int
    nfe_per_sample: float
    images_per_s: float
    npz: Path | None = None
    grid: Path | None = None
    is_main: bool = True  # rank 0 (the one that reports)


def sample(cfg: SampleConfig, progress: bool = True, device: str | None = None) -> SampleResult:
    """Draw the missing images of ``cfg.out`` (indices 0..num-1), sharded over torchrun ranks."""
    with session(device, tf32=cfg.tf32) as s:
        job = prepare(cfg, s)
        try:
            result = draw(job, progress)
        except BaseException:
            if s.is_main:
                job.undo()  # a call that failed before its first image leaves the folder as it found it
            raise
        if s.is_main and (cfg.npz or cfg.grid or (job.out / NPZ).is_file() and result.new):
            write_extras(job, result)
        distributed.barrier()
        return result


@dataclass
class SampleJob:
    """A sampling job ready to draw: the model callable, the folder and the indices this rank owes."""

    cfg: SampleConfig
    dist: distributed.Dist
    loaded: Loaded
    fn: object  # model(x, t, y) under autocast, guided when asked
    vae: object | None
    out: Path
    names: list[Path]  # the PNG of every index
    mine: list[int]  # the missing indices this rank draws
    time_grid: torch.Tensor  # the times the sampler steps on (checked before the folder is touched)
    solver: SearchedSolver | None = None  # --method searched: the solver read from --solver
    before: dict[str, bytes | None] | None = None  # sample.json and labels.csv as they were (rank 0)
    fresh: list[int] | None = None  # the indices without a PNG before this call

    def undo(self) -> None:
        """Put sample.json and labels.csv back as they were before this call, if it drew no new image."""
        if self.before is None or any(self.names[i].exists() for i in self.fresh):
            return
        for name, content in self.before.items():
            if content is None:
                (self.out / name).unlink(missing_ok=True)
            else:
                atomic.atomic_write(self.out / name, lambda tmp, data=content: Path(tmp).write_bytes(data))


def prepare(cfg: SampleConfig, session: Session) -> SampleJob:
    """Load the model, check every setting and the folder, then write sample.json and labels.csv."""
    dist = session.dist
    check_device_precision(cfg.precision, dist.device)
    loaded = load_model(cfg.ckpt, cfg.ema, cfg.src_format, cfg.model, dmf_depth=cfg.dmf_depth,
                        **cfg.transport_overrides())
    tcfg, arch = loaded.config, loaded.checkpoint.arch
    cfg.for_model(bool(arch.get("mean_flow")) or arch.get("dmf_depth") is not None, bool(arch.get("omega_input")))
    _check_finite(loaded, "--ckpt")
    session.set_threads(cfg.threads if cfg.threads is not None else tcfg.threads)
    model = loaded.model.to(dist.device)
    if cfg.compile:
        model = compiled(model, dist.device)
    vae = model_autoencoder(tcfg, dist.device, cfg.vae, cfg.rae_encoder, cfg.rae_decoder, cfg.latent_stats)
    shift = _resolve_time_shift(cfg, tcfg)
    if cfg.labels == "balanced":
        check_balanced(cfg.num, max(tcfg.num_classes, 1))
    fn, guide = guided_model(cfg, loaded, model, dist.device)
    solver = searched_solver(cfg, loaded, guide) if cfg.sampler == "ode" and cfg.method == "searched" else None
    grid = time_grid(cfg, loaded.transport, solver)
    if shift is not None and dist.is_main:  # told once the grid it shifts is accepted
        print(shift)
    out = Path(cfg.out or _default_out(cfg.ckpt))
    atomic.check_can_create(out, "--out")
    if cfg.grid:  # written last, after all the sampling: refuse a --grid under a file, or a folder, now
        atomic.check_can_create(Path(cfg.grid).parent, "--grid")
        if Path(cfg.grid).is_dir():
            raise InputError(f"--grid {cfg.grid} is a folder: name an image file such as grid.png")
        _check_grid(Path(cfg.grid), out, [loaded] + ([guide] if guide is not None else []))
    settings = cfg.record()
    settings["ckpt"] = str(loaded.weights.resolve())  # images from another checkpoint must not share the folder
    if guide is not None:
        settings["guidance_model"] = str(guide.weights.resolve())
    if solver is not None:  # another solver file must not add to the folder either
        settings.update(solver=str(Path(cfg.solver).resolve()), solver_sha256=file_sha256(cfg.solver))
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; pass a folder")
    session.hold(out, "sit sample")
    _check_folder(out, settings, cfg.num)
    width = _index_width(out, cfg.num)
    names = [out / f"{i:0{width}d}.png" for i in range(cfg.num)]
    all_labels, _ = labels_and_noise(cfg.seed, list(range(cfg.num)), (0,), max(tcfg.num_classes, 1), cfg.class_labels,
                                     cfg.labels, cfg.num)
    side = None if vae is not None else tcfg.input_size  # a VAE's output size is its own
    mode = "RGB" if pixel_channels(vae, tcfg.in_channels) == 3 else "L"
    todo = [i for i in range(cfg.num) if not is_finished(names[i], side, mode)]
    fresh = [i for i in todo if not names[i].exists()]
    redo = len(todo) - len(fresh)
    if redo and dist.is_main:
        print(f"note: {redo} PNG(s) in {out} are not whole {side}x{side} {mode} images; drawing them again")
    distributed.barrier()  # every rank has listed the folder before any rank writes to it
    before = {name: (out / name).read_bytes() if (out / name).is_file() else None
              for name in (SETTINGS_FILE, "labels.csv")} if dist.is_main else None
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_json(out / SETTINGS_FILE, settings)
        atomic.write_text(
            out / "labels.csv", "index,label\n" + "".join(f"{i},{int(v)}\n" for i, v in enumerate(all_labels))
        )
    distributed.barrier()
    return SampleJob(cfg, dist, loaded, fn, vae, out, names, todo[dist.rank :: dist.world_size], grid, solver, before,
                     fresh)


def guided_model(cfg: SampleConfig, loaded: Loaded, model: torch.nn.Module, device) -> tuple[Callable, Loaded | None]:
    """``model`` (``loaded``'s network, on ``device``) as sampling calls it: under autocast, with classifier-free
    guidance or autoguidance as ``cfg`` asks. Returns it and the guide (autoguidance's weak model) or None."""
    tcfg = loaded.config
    if tcfg.num_classes == 0 and (cfg.cfg_scale != 1.0 or cfg.class_labels):
        raise InputError("the model is unconditional: drop --cfg-scale and --class-labels")
    fn = autocast_model(model, cfg.precision, device)
    guide = None
    if cfg.cfg_scale != 1.0 or cfg.guidance_model is not None:
        interval = interval_in_time(loaded.transport.interpolant, *cfg.cfg_interval, cfg.cfg_interval_in)
    if cfg.cfg_scale != 1.0:
        channels = cfg.cfg_channels if cfg.cfg_channels == "all" else int(cfg.cfg_channels)
        fn = ClassifierFreeGuidance(
            fn, cfg.cfg_scale, null_class=tcfg.num_classes, channels=channels, interval=interval
        )
    if cfg.guidance_model is not None:
        guide = _load_guide(cfg, loaded)
        weak = autocast_model(guide.model.to(device), cfg.precision, device)
        fn = AutoGuidance(fn, weak, cfg.guidance_scale, interval=interval)
    return fn, guide


def guidance_record(cfg: SampleConfig, loaded: Loaded, guide: Loaded | None) -> dict:
    """The guidance ``guided_model`` applies, as a searched solver records it (the interval in sit's time, the
    guide by its weights' fingerprint): a solver fitted to one guided field is refused for another."""
    guided = cfg.cfg_scale != 1.0 or guide is not None
    interval = interval_in_time(loaded.transport.interpolant, *cfg.cfg_interval, cfg.cfg_interval_in) if guided \
        else (0.0, 1.0)
    return {"cfg_scale": cfg.cfg_scale, "cfg_channels": cfg.cfg_channels if cfg.cfg_scale != 1.0 else "all",
            "interval": [float(v) for v in interval], "guidance_scale": cfg.guidance_scale,
            "guidance_model": None if guide is None else model_fingerprint(guide.model.state_dict())}


def searched_solver(cfg: SampleConfig, loaded: Loaded, guide: Loaded | None) -> SearchedSolver:
    """The solver of ``--solver``, refused unless it was searched for these weights (their fingerprint),
    interpolant, interval and guidance, and for --steps when given."""
    solver = read_solver(cfg.solver)
    check_solver(solver, model_fingerprint(loaded.model.state_dict()), loaded.transport.interpolant.name,
                 *loaded.transport.sample_interval())
    if cfg.steps is not None and cfg.steps != solver.nfe:
        raise InputError(f"--solver {cfg.solver} takes {solver.nfe} steps, not --steps {cfg.steps}: drop --steps, or "
                         f"search a solver with --nfe {cfg.steps}")
    wanted, fitted = guidance_record(cfg, loaded, guide), solver.metadata.get("guidance")
    if fitted != wanted:
        changed = sorted(k for k in wanted if (fitted or {}).get(k) != wanted[k])
        raise InputError(f"--solver {cfg.solver} was searched under other guidance ({', '.join(changed)} differ): "
                         "sample with its settings, or search one with these")
    cfg.steps = solver.nfe
    return solver


def is_finished(path: Path, side: int | None, mode: str) -> bool:
    """Whether ``path`` is a whole PNG of the expected size and mode: its header and its final IEND chunk
    are read, not its pixels, so checking a folder of 50,000 images takes seconds."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            fits = image.format == "PNG" and image.mode == mode and (side is None or image.size == (side, side))
        with open(path, "rb") as f:
            f.seek(-12, 2)
            return fits and f.read(12)[4:8] == b"IEND"
    except (OSError, ValueError, SyntaxError):  # missing, empty, not an image (PIL raises OSError subclasses)
        return False


def draw(job: SampleJob, progress: bool = True) -> SampleResult:
    """Draw this rank's indices batch by batch, one PNG each; the counts are summed over ranks."""
    cfg, dist, tcfg, transport = job.cfg, job.dist, job.loaded.config, job.loaded.transport
    shape = (tcfg.in_channels, tcfg.input_size, tcfg.input_size)
    nfe_total, batches_done, drawn, seconds = 0, 0, 0, 0.0
    bar = Progress(
        TextColumn("[bold]sample[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not (progress and dist.is_main),
    )
    with bar:
        task = bar.add_task("sample", total=len(job.mine))
        for start in range(0, len(job.mine), cfg.batch_size):
            idx = job.mine[start : start + cfg.batch_size]
            y, x0 = labels_and_noise(cfg.seed, idx, shape, max(tcfg.num_classes, 1), cfg.class_labels, cfg.labels,
                                     cfg.num)
            kwargs = {"y": y.to(dist.device) if tcfg.num_classes > 0 else None}
            if cfg.omega is not None:  # an omega model's guidance scale, one evaluation per step
                kwargs["omega"] = cfg.omega
            began = time.perf_counter()
            x0 = x0.to(dist.device)
            if cfg.sampler == "meanflow":
                x, nfe = sample_meanflow(job.fn, x0, model_kwargs=kwargs, time_grid=job.time_grid)
            elif cfg.sampler == "ode":
                x, nfe = sample_ode(
                    transport,
                    job.fn,
                    x0,
                    cfg.method,
                    atol=cfg.atol,
                    rtol=cfg.rtol,
                    model_kwargs=kwargs,
                    time_grid=job.time_grid,
                    solver=job.solver,
                )
            else:
                gens = [index_generator(cfg.seed, i, dist.device, stream=1) for i in idx]
                x, nfe = sample_sde(
                    transport,
                    job.fn,
                    x0,
                    cfg.method,
                    w=cfg.w,
                    w_norm=cfg.w_norm,
                    last_step=cfg.last_step,
                    generator=gens,
                    model_kwargs=kwargs,
                    time_grid=job.time_grid,
                )
            if not bool(torch.isfinite(x).all()):
                raise InputError(_nonfinite_message(cfg, idx, drawn))
            images = to_images(x, job.vae)
            seconds += time.perf_counter() - began
            for i, image in zip(idx, images):
                atomic.save_image(job.names[i], to_pil(image))
            nfe_total, batches_done, drawn = nfe_total + nfe, batches_done + 1, drawn + len(idx)
            bar.update(task, advance=len(idx))
    stats = distributed.all_reduce_sum(torch.tensor([float(nfe_total), float(batches_done), float(drawn), seconds]))
    nfe_total, batches_done, drawn, seconds = stats.tolist()
    return SampleResult(
        job.out,
        int(drawn),
        cfg.num,
        nfe_total / max(batches_done, 1),
        drawn / max(seconds / dist.world_size, 1e-9),
        is_main=dist.is_main,
    )


def write_extras(job: SampleJob, result: SampleResult) -> None:
    """``samples.npz`` (the ADM evaluator's format) and the grid of the first 100 images, from the PNGs."""
    images = np.stack([np.asarray(read_png(p)) for p in job.names])
    if images.ndim == 3:
        images = images[..., None]
    if job.cfg.npz or (job.out / NPZ).is_file():
        result.npz = job.out / NPZ
        rgb = images if images.shape[-1] == 3 else np.repeat(images, 3, axis=-1)
        atomic.save_npz(result.npz, arr_0=rgb)
    if job.cfg.grid:
        result.grid = Path(job.cfg.grid)
        atomic.save_image(result.grid, make_grid(images[:100]))
        record = json_object(job.out / GRIDS) or {}
        record[str(result.grid.resolve())] = runs.file_digest(result.grid)
        atomic.write_json(job.out / GRIDS, record)


def _resolve_time_shift(cfg: SampleConfig, tcfg) -> str | None:
    """``cfg.time_shift`` as a number: the one given ("dimension": RAE's, of the model's latent shape), else
    the run's training shift for the fixed-grid samplers (1 for adaptive and searched methods, whose grids are
    their own, and for mean-flow jumps). Returns the line that tells a shift other than 1, else None."""
    shape = (tcfg.in_channels, tcfg.input_size, tcfg.input_size)
    setting, from_run = cfg.time_shift, cfg.time_shift is None
    if from_run:
        own_grid = cfg.sampler == "ode" and ODE_METHODS[cfg.method].kind in ("adaptive", "searched")
        setting = 1.0 if own_grid or cfg.sampler == "meanflow" else getattr(tcfg, "time_shift", 1.0)
    cfg.time_shift = resolve_time_shift(setting, shape)
    if cfg.time_shift == 1.0:
        return None
    return describe_time_shift(setting, shape) + (", the run's training shift" if from_run else "")


def time_grid(cfg: SampleConfig, transport, solver: SearchedSolver | None = None) -> torch.Tensor:
    """The times the sampler of ``cfg`` steps on (float64, CPU), built before anything is drawn or written, so
    that every refusal of the grid's settings (steps, spacing, shift, last step) comes first."""
    if cfg.sampler == "meanflow":
        return meanflow_time_grid(cfg.steps, transport.sample_interval())
    if cfg.sampler == "ode":
        return ode_time_grid(
            transport, cfg.method, cfg.steps, cfg.spacing, cfg.time_shift, cfg.edm_rho, dtype=torch.float64,
            solver=solver,
        )
    return sde_time_grid(
        transport,
        cfg.steps,
        cfg.w,
        cfg.last_step,
        cfg.last_step_size,
        cfg.spacing,
        cfg.time_shift,
        cfg.edm_rho,
        dtype=torch.float64,
    )


def _nonfinite_message(cfg: SampleConfig, idx: list[int], drawn: int = 0) -> str:
    scales = [
        f"--{k.replace('_', '-')} {getattr(cfg, k):g}"
        for k in ("cfg_scale", "guidance_scale", "time_shift")
        if getattr(cfg, k) != 1.0
    ]
    cause = f"a scale too large ({', '.join(scales)})" if scales else "the model's outputs overflow"
    precision = f" or --precision {cfg.precision} overflowing (try fp32)" if cfg.precision != "fp32" else ""
    return (
        f"the samples of indices {idx[0]}..{idx[-1]} came out NaN or inf, so no PNG was written for them: likely "
        f"{cause}{precision}; change it and "
        + ("draw into a new --out" if drawn else "run the command again")
    )


def _check_finite(loaded: Loaded, flag: str) -> None:
    """Refuse weights that hold NaN or inf: every sample would come out NaN, and the message blame the scales."""
    bad = nonfinite_tensors(loaded.model.state_dict())
    if bad:
        raise InputError(
            f"{flag}: the weights of {loaded.weights} hold NaN or inf in {len(bad)} tensors ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}): the run diverged or the file is damaged; pass an earlier checkpoint"
        )


def _load_guide(cfg: SampleConfig, main: Loaded) -> Loaded:
    """The weak model of autoguidance, refused unless it can stand in for the main model."""
    guide = load_model(cfg.guidance_model, cfg.ema, None, None, **cfg.transport_overrides())
    _check_finite(guide, "--guidance-model")
    a, b = main.config, guide.config
    if cfg.omega is not None and not guide.checkpoint.arch.get("omega_input"):
        raise InputError(f"--guidance-model {cfg.guidance_model} takes no omega: drop --omega or pick another guide")
    for name in ("in_channels", "input_size", "num_classes"):
        if getattr(a, name) != getattr(b, name):
            raise InputError(
                f"--guidance-model {cfg.guidance_model} has {name}={getattr(b, name)}, the model "
                f"{getattr(a, name)}: pass a checkpoint with the same latent shape and classes"
            )
    if cfg.sampler == "meanflow" and not guide.checkpoint.arch.get("mean_flow"):
        raise InputError(
            f"--guidance-model {cfg.guidance_model} predicts instantaneous velocities, but the mean-flow jumps call "
            "the guide with a second time r: pass a mean-flow guide, or --sampler ode or sde"
        )
    ta, tb = main.transport, guide.transport
    if repr(ta.interpolant) != repr(tb.interpolant) or ta.prediction != tb.prediction:
        raise InputError(
            f"--guidance-model {cfg.guidance_model} predicts {tb.prediction} on {tb.interpolant!r}, the model "
            f"{ta.prediction} on {ta.interpolant!r}: autoguidance needs the same interpolant and prediction"
        )
    return guide


def _check_grid(grid: Path, out: Path, models: list[Loaded]) -> None:
    """--grid may replace only a grid this sample folder drew (and that nobody changed since, ``GRIDS``): never a
    file it reads (a checkpoint, a sample of the folder) nor any other file (a training image, another grid)."""
    reads = {f"the weights {m.weights}": m.weights for m in models}
    if grid.parent.resolve() == out.resolve() and grid.stem.isdigit():  # an index name: a sample of the folder
        reads[f"sample {int(grid.stem)} of --out {out}"] = grid
    record = json_object(out / GRIDS) or {}
    drew = Kind(f"a grid that sit sample drew for --out {out}",
                lambda p: record.get(str(p.resolve())) == runs.file_digest(p) if p.is_file() else False)
    check_outputs([Output(grid, "--grid", drew)], reads, overwrite=True)


def _default_out(ckpt: str) -> Path:
    path = Path(ckpt)
    return path / "samples" if runs.is_run(path) else path.with_suffix("").parent / f"{path.stem}-samples"


def _check_folder(out: Path, settings: dict, num: int) -> None:
    saved_path = out / SETTINGS_FILE
    if saved_path.is_file():
        saved = json_object(saved_path)
        if saved is None:  # the folder's images can no longer be told to match these settings
            raise InputError(f"{saved_path} is damaged (not a JSON object of settings), so {out} cannot be added to: "
                             "pick a new --out")
        unused = UNUSED_BY.get(settings.get("sampler"), set()) | PROVENANCE
        # A setting a folder's sample.json lacks was added to sit later: the folder was drawn with its default.
        defaults = {f.name: f.default for f in fields(SampleConfig)}
        changed = sorted(k for k in settings if k not in unused and saved.get(k, defaults.get(k)) != settings[k])
        if changed == ["tf32"]:
            flag = "--tf32" if saved["tf32"] else "--no-tf32"
            raise InputError(f"{out} holds samples drawn with {flag}; pass {flag} to add to it, or pick a new --out")
        if changed:
            raise InputError(
                f"{out} holds samples drawn with other settings ({', '.join(changed)} differ); pick a new --out"
            )
        held = _held(out)
        if held > num:  # fewer would leave PNGs (and samples.npz) that labels.csv no longer lists
            raise InputError(
                f"{out} holds {held} samples; pass --num {held} or more to finish or extend it, or pick a new --out"
            )
    elif out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        raise InputError(f"--out {out} exists, is not empty and holds no {SETTINGS_FILE}; pick a new --out")


def _index_width(out: Path, num: int) -> int:
    """The digits of the folder's PNG names: those its PNGs already have (one width per folder, however far it is
    extended: 000000.png .. 1000000.png), else enough for ``num`` and at least 6."""
    widths = [len(p.stem) for p in out.glob("*.png") if p.stem.isdigit() and len(p.stem) >= 6] if out.is_dir() else []
    return min(widths) if widths else max(6, len(str(num - 1)))


def _held(out: Path) -> int:
    """How many samples a folder describes: the rows of labels.csv, or one past its highest PNG index."""
    # Bytes, not text: labels.csv is rewritten whole, so a damaged one need only be counted.
    rows = (out / "labels.csv").read_bytes().splitlines()[1:] if (out / "labels.csv").is_file() else []
    indices = [int(p.stem) for p in out.glob("*.png") if p.stem.isdigit()]
    return max(len(rows), max(indices, default=-1) + 1)
