"""`sit search-solver`: a solver searched for one model's weights at a given NFE (``transport.searched``).

    from sitcli.search_solver import SearchConfig, search
    result = search(SearchConfig(ckpt="runs/digits", nfe=10))     # writes runs/digits/solver-nfe10.safetensors
    # sit sample --ckpt runs/digits --method searched --solver runs/digits/solver-nfe10.safetensors

The job loads the model (EMA weights unless ``ema=False``), draws the starting noises and labels of indices
0..samples-1 of ``seed`` as ``sit sample`` does (``seeds.labels_and_noise``), carries them to data with dopri5 at
atol = rtol = ``reference_tol`` (1e-8) for the reference endpoints, and fits an ``nfe``-step solver's times and
coefficients to them (``searched.search_solver``). Both run in float64 (a tolerance of 1e-8 is below float32's
resolution), through the guidance asked for (classifier-free guidance, its interval, autoguidance: the field the
solver will run on, recorded in it). The solver is written atomically to ``out`` (default: beside the run,
``RUN/solver-nfe{N}.safetensors``; beside a checkpoint file ``NAME-solver-nfe{N}.safetensors``) with the weights'
fingerprint; an existing file is refused unless ``overwrite``. ``sit sample --method searched`` refuses it for
other weights, another interpolant, interval or guidance.

Resumable: the references (once) and the search's state (after every Adam step) are kept in ``OUT.search/``
(``OUT`` without its suffix), written atomically. The same command again (or ``resume=True``) continues from there
and ends with the solver an uninterrupted search writes, bit for bit; the folder goes when the solver is written.
A folder left by a search with other settings is refused (``overwrite`` starts afresh).

In discrete time the solver keeps to the training times: it starts on the uniform grid snapped onto them, and only
its coefficients are fitted.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sitcli import atomic, runs
from sitcli.sample_config import SampleConfig
from sitcli.domains import COUNT, COUNT_OR_ZERO, FINITE, POSITIVE, SEED, Domain, check_domains
from sitcli.errors import InputError
from sitcli.loading import load_model
from sitcli.sample import guidance_record, guided_model
from sitcli.seeds import labels_and_noise
from sitcli.session import session
from sitcli.solver_file import write_solver
from sitcli.transport.samplers import CountingModel
from sitcli.transport.searched import SearchState, model_fingerprint, reference_endpoints, search_solver

F64 = torch.float64
STATE, REFERENCE, SETTINGS = "state.pt", "reference.safetensors", "search.json"


@dataclass
class SearchConfig:
    """The settings of ``sit search-solver``; what decides the solver is recorded in ``OUT.search/search.json``
    while it runs (a resumed search must match it) and in the solver's metadata."""

    ckpt: str
    nfe: int
    out: str | None = None  # a .safetensors file; default beside the run (module docstring)
    samples: int = 256  # starting noises fitted to (indices 0..samples-1 of seed)
    iterations: int = 300  # Adam steps
    lr: float = 2e-2  # peak learning rate (warm-up over the first tenth, then a cosine to 0)
    batch_size: int | None = None  # noises per Adam step (None: all); also the chunk of the reference solves
    seed: int = 0  # of the noises and labels (as sit sample --seed) and of the mini-batch order
    fit_times: bool = True  # fit the time points too (always False in discrete time)
    reference_tol: float = 1e-8  # atol = rtol of the dopri5 reference
    ema: bool = True
    class_labels: str | None = None  # as sit sample: one label, a comma list cycled, or None for random
    cfg_scale: float = 1.0
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    cfg_interval_in: str = "t"
    cfg_channels: str = "all"
    guidance_model: str | None = None
    guidance_scale: float = 1.0
    threads: int | None = None  # torch threads; None: the run's setting, 0: torch's default
    resume: bool = False  # insist on resuming an interrupted search (the same command resumes anyway)
    overwrite: bool = False  # replace an existing solver file, or discard another search's folder

    def __post_init__(self):
        self.cfg_interval = tuple(float(v) for v in self.cfg_interval)
        check_domains(asdict(self), SEARCH_DOMAINS)
        if self.out is not None and Path(self.out).suffix != ".safetensors":
            raise InputError(f"--out {self.out}: name a .safetensors file, e.g. solver-nfe{self.nfe}.safetensors")
        if self.resume and self.overwrite:
            raise InputError("--resume continues a search and --overwrite starts afresh: pass one of them")
        self.sample_config()  # the guidance settings are checked where they are defined

    def sample_config(self) -> SampleConfig:
        """The sampling settings of the field the solver is fitted to (``sample.guided_model`` reads them)."""
        return SampleConfig(ckpt=self.ckpt, ema=self.ema, sampler="ode", method="euler", steps=self.nfe,
                            class_labels=self.class_labels, cfg_scale=self.cfg_scale, cfg_interval=self.cfg_interval,
                            cfg_interval_in=self.cfg_interval_in, cfg_channels=self.cfg_channels,
                            guidance_model=self.guidance_model, guidance_scale=self.guidance_scale, seed=self.seed)


SEARCH_DOMAINS: dict[str, Domain] = dict(
    nfe=COUNT, samples=COUNT, iterations=COUNT, lr=POSITIVE, batch_size=COUNT, seed=SEED, reference_tol=POSITIVE,
    cfg_scale=FINITE, cfg_interval=Domain(infinite=True), guidance_scale=FINITE, threads=COUNT_OR_ZERO,
)
# Settings that do not change the solver (the weights and the guide count by their fingerprints).
FREE_SETTINGS = {"ckpt", "out", "threads", "resume", "overwrite", "guidance_model"}


@dataclass
class SearchResult:
    out: Path
    nfe: int
    iterations: int
    resumed_from: int  # the iteration an interrupted search went on from (0: started afresh)
    init: str  # the Adams-Bashforth start, e.g. "AB3 uniform"
    init_loss: float  # mean squared distance to the references on the fitted noises, at the start
    loss: float  # and of the solver written
    reference_nfe: int  # velocity evaluations of the dopri5 references (0 when resumed: already computed)
    seconds: float


def default_out(ckpt: str, nfe: int) -> Path:
    """Beside the run: RUN/solver-nfe{N}.safetensors, or NAME-solver-nfe{N}.safetensors beside a checkpoint."""
    path = Path(ckpt)
    name = f"solver-nfe{nfe}.safetensors"
    return path / name if runs.is_run(path) else path.with_suffix("").parent / f"{path.stem}-{name}"


def search(cfg: SearchConfig, progress: bool = True, device: str | None = None) -> SearchResult:
    """Search an ``cfg.nfe``-step solver for the model of ``cfg.ckpt`` and write it (module docstring)."""
    began = time.perf_counter()
    out = Path(cfg.out) if cfg.out is not None else default_out(cfg.ckpt, cfg.nfe)
    work = out.with_suffix(".search")
    with session(device) as s:
        loaded = load_model(cfg.ckpt, cfg.ema)
        tcfg, transport = loaded.config, loaded.transport
        s.set_threads(cfg.threads if cfg.threads is not None else tcfg.threads)
        fingerprint = model_fingerprint(loaded.model.state_dict())  # of the weights as stored, before float64
        sampling = cfg.sample_config()
        fn, guide = guided_model(sampling, loaded, loaded.model.to(s.device), s.device)
        guidance = guidance_record(sampling, loaded, guide)
        for net in [loaded.model] + ([guide.model] if guide is not None else []):
            net.double()
        atomic.check_can_create(out.parent, "--out")
        if out.is_dir():
            raise InputError(f"--out {out} is a folder: name a .safetensors file")
        if out.exists() and not cfg.overwrite:
            raise InputError(f"{out} exists: pass --overwrite to replace it, or another --out")
        settings = {k: v for k, v in asdict(cfg).items() if k not in FREE_SETTINGS}
        settings.update(cfg_interval=list(cfg.cfg_interval), fingerprint=fingerprint, guidance=guidance,
                        interpolant=transport.interpolant.name)
        saved = _saved_settings(work)
        if cfg.resume and saved is None:
            raise InputError(f"no interrupted search to resume in {work}: drop --resume to start one")
        if saved is not None and saved != settings and not cfg.overwrite:
            changed = sorted(k for k in settings if saved.get(k) != settings[k])
            raise InputError(f"{work} holds an interrupted search with other settings ({', '.join(changed)} differ): "
                             "rerun it with those, or pass --overwrite to start afresh")
        s.hold(work, "sit search-solver")
        if saved is not None and (saved != settings or cfg.overwrite):
            for name in (STATE, REFERENCE, SETTINGS):
                (work / name).unlink(missing_ok=True)
            saved = None

        t0, t1 = transport.sample_interval()
        shape = (tcfg.in_channels, tcfg.input_size, tcfg.input_size)
        labels, x0 = labels_and_noise(cfg.seed, list(range(cfg.samples)), shape, max(tcfg.num_classes, 1),
                                      cfg.class_labels)
        x0 = x0.to(s.device, F64)
        labels = labels.to(s.device) if tcfg.num_classes > 0 else None

        def velocity_of(rows: torch.Tensor | None):
            """The guided velocity on the noises ``rows`` (None: all), with their labels."""
            y = labels if labels is None or rows is None else labels[rows.to(labels.device)]
            counter = CountingModel(fn, {"y": y})

            def velocity(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
                output, t_batch = counter(x, t)
                return transport.velocity(output, x, t_batch)

            velocity.counter = counter
            return velocity

        bar = Progress(TextColumn("[bold]{task.description}[/]"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[loss]}"), TimeRemainingColumn(), console=Console(stderr=True),
                       disable=not progress)
        with bar:
            reference, reference_nfe = _reference(work, saved, settings, x0, velocity_of, t0, t1, cfg, bar)
            state = _read_state(work)
            resumed_from = state.iteration if state is not None else 0
            task = bar.add_task("search", total=cfg.iterations, completed=resumed_from, loss="")

            def save(now: SearchState) -> None:
                atomic.atomic_write(work / STATE, lambda tmp: torch.save(now.to_dict(), tmp))
                bar.update(task, completed=now.iteration, loss=f"loss {now.losses[-1]:.3e}")

            discrete = transport.timestep_grid(dtype=F64) is not None
            init_grid = transport.time_grid(t0, t1, cfg.nfe, dtype=F64, spacing="uniform") if discrete else None
            state = search_solver(velocity_of(None), x0, reference, cfg.nfe, t0, t1, iterations=cfg.iterations,
                                  lr=cfg.lr, init_grid=init_grid, fit_times=cfg.fit_times and not discrete,
                                  batch_size=cfg.batch_size, seed=cfg.seed, interpolant=transport.interpolant.name,
                                  fingerprint=fingerprint, state=state, callback=save, batch_velocity=velocity_of)
        solver = state.solver()
        solver.metadata.update(guidance=guidance, class_labels=cfg.class_labels, reference_tol=cfg.reference_tol,
                               ema=cfg.ema, batch_size=cfg.batch_size)
        write_solver(out, solver)
        for name in (STATE, REFERENCE, SETTINGS):
            (work / name).unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)  # only the emptied folder is left once its lock is released
    init = state.init
    return SearchResult(out, cfg.nfe, state.iteration, resumed_from, f"AB{init['order']} {init['spacing']}",
                        init["loss"] if init["loss"] is not None else float("nan"), solver.metadata["loss"],
                        reference_nfe, time.perf_counter() - began)


def _saved_settings(work: Path) -> dict | None:
    path = work / SETTINGS
    return json.loads(path.read_text()) if path.is_file() else None


def _reference(work: Path, saved: dict | None, settings: dict, x0: torch.Tensor, velocity_of, t0: float, t1: float,
               cfg: SearchConfig, bar: Progress) -> tuple[torch.Tensor, int]:
    """The dopri5 endpoints of ``x0``: read back when an earlier run of this search computed them, else
    computed chunk by chunk and kept (with the settings) for a resumed search."""
    from safetensors.torch import load_file, save_file

    if saved is not None and (work / REFERENCE).is_file():
        return load_file(work / REFERENCE)["reference"].to(x0.device), 0
    chunk = cfg.batch_size or cfg.samples
    task = bar.add_task("reference", total=cfg.samples, loss="dopri5")
    parts, nfe = [], 0
    for start in range(0, cfg.samples, chunk):
        rows = torch.arange(start, min(start + chunk, cfg.samples))
        velocity = velocity_of(rows)
        parts.append(reference_endpoints(velocity, x0[rows.to(x0.device)], t0, t1, cfg.reference_tol,
                                         cfg.reference_tol))
        nfe += velocity.counter.nfe
        bar.update(task, advance=len(rows))
    reference = torch.cat(parts)
    atomic.atomic_write(work / REFERENCE, lambda tmp: save_file({"reference": reference.cpu().contiguous()}, tmp))
    atomic.write_json(work / SETTINGS, settings)
    return reference, nfe


def _read_state(work: Path) -> SearchState | None:
    path = work / STATE
    if not path.is_file():
        return None
    return SearchState.from_dict(torch.load(path, map_location="cpu", weights_only=True))
