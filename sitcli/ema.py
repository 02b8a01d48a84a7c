"""`sit ema`: the EMA of any relative width, rebuilt after training from a run's post-hoc EMA snapshots (EDM2).

    from sitcli.ema import EmaConfig, reconstruct
    result = reconstruct(EmaConfig("runs/digits", sigma_rel=0.075, out="runs/digits-ema0.075"))
    # then: sit sample --ckpt runs/digits-ema0.075

A run trained with ``--ema-snapshots-every K`` keeps power-function EMAs of the widths ``--ema-sigma-rels``
and saves them in ``ema_snapshots/`` every K steps (``training.posthoc_ema``, ``runs.save_ema_snapshot``).
The EMA of width sigma_rel at a snapshot's step T is the combination sum_i x_i snapshot_i of the snapshots up
to T whose averaging profile is the least-squares fit of the wanted one (EDM2's Algorithm 3). The fit is not
exact: its relative L2 distance from the wanted profile (``posthoc_ema.profile_error``) is the fit error, and
a width whose fit error exceeds ``max_fit_error`` is refused, naming the widths these snapshots do rebuild.

The result is a run folder of the kind `sit convert --to sit` writes, so that `sit sample --ckpt OUT`, `sit
convert OUT` and `sit nll --ckpt OUT` read it without flags: ``config.json`` is the run's own with
``data="external"`` (it samples; it does not resume), ``checkpoints/<T>/`` holds the reconstruction as both
model and EMA weights, and its ``state.json`` records the width, the step, every coefficient and the fit error.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sitcli import atomic, runs
from sitcli.config import EXTERNAL, TrainConfig
from sitcli.domains import COUNT, POSITIVE, Domain, check_domains
from sitcli.errors import InputError
from sitcli.session import session
from sitcli.training.posthoc_ema import (MAX_SIGMA_REL, Snapshot, combine_snapshots, fit_errors, profile_error,
                                         reconstruction_plan)

EMA_DOMAINS = {
    "sigma_rel": Domain(0, MAX_SIGMA_REL, lo_open=True, hi_open=True),
    "step": COUNT,
    "max_fit_error": POSITIVE,
}
# The widths tried when saying which ones the snapshots rebuild (a log grid over the whole range).
_WIDTHS = np.geomspace(0.002, MAX_SIGMA_REL * 0.999, 400)


@dataclass
class EmaConfig:
    """The settings of ``sit ema``: rebuild the EMA of relative width ``sigma_rel`` at snapshot step ``step``
    (None: the last) from the snapshots of ``run``, into the new run folder ``out``."""

    run: str
    sigma_rel: float
    out: str
    step: int | None = None
    max_fit_error: float = 0.05  # refuse a reconstruction whose profile is further than this (relative L2)
    overwrite: bool = False  # replace an existing out

    def __post_init__(self):
        check_domains(asdict(self), EMA_DOMAINS)
        run, out = Path(self.run).resolve(), Path(self.out).resolve()
        if out == run or run.is_relative_to(out) or out.is_relative_to(run):
            raise InputError(f"--out {self.out} must lie outside the run {self.run} (and not hold it): pick another")


@dataclass
class EmaResult:
    out: Path
    sigma_rel: float
    step: int
    fit_error: float  # relative L2 distance of the rebuilt averaging profile from the wanted one
    coefficients: list[tuple[float, int, float]] = field(default_factory=list)  # (x_i, step_i, sigma_rel_i)
    widths: tuple[float, float] = (math.nan, math.nan)  # the widths these snapshots rebuild within max_fit_error


def reconstruct(cfg: EmaConfig) -> EmaResult:
    """Rebuild the EMA of ``cfg.sigma_rel`` and write it to ``cfg.out`` (module docstring); every refusal comes
    before anything is written. Runs on the CPU: it only adds weight files."""
    with session("cpu"):
        run, out = Path(cfg.run), Path(cfg.out)
        config = TrainConfig.from_dict(runs.read_config(run), source=f"{run}/{runs.CONFIG}")
        found = runs.list_ema_snapshots(run)
        if not found:
            why = ("it was trained without them: train with --ema-snapshots-every K" if not config.ema_snapshots_every
                   else f"none is written yet (every {config.ema_snapshots_every} steps)")
            raise InputError(f"{run} holds no post-hoc EMA snapshots in {runs.SNAPSHOTS}/; {why}")
        files = {Snapshot(step, sigma_rel): path for step, sigma_rel, path in found}
        plan = reconstruction_plan(list(files), cfg.sigma_rel, cfg.step)
        step = max(s.step for _, s in plan)
        used = [s for _, s in plan]
        x = np.array([c for c, _ in plan])
        error = profile_error([s.step for s in used], [s.sigma_rel for s in used], step, cfg.sigma_rel, x)
        widths = rebuildable_widths(used, step, cfg.max_fit_error)
        if error > cfg.max_fit_error:
            tracked = ", ".join(f"{w:g}" for w in sorted({s.sigma_rel for s in used}))
            raise InputError(
                f"--sigma-rel {cfg.sigma_rel:g} is outside what the snapshots of {run} rebuild at step {step}: its "
                f"averaging profile fits only to {error:.1%} (over --max-fit-error {cfg.max_fit_error:g}); these "
                f"{len(used)} snapshots (widths {tracked}) rebuild {widths[0]:.3g} .. {widths[1]:.3g}: pick a width "
                f"there, or train with more frequent snapshots"
            )
        if (out.exists() or out.is_symlink()) and not cfg.overwrite:
            raise InputError(f"--out {out} already exists: pass --overwrite to replace it, or pick another --out")
        atomic.check_can_create(out.parent, "--out")

        weights = combine_snapshots((c, runs.load_ema_snapshot(files[s])) for c, s in plan)  # one file at a time
        result = EmaResult(out, cfg.sigma_rel, step, error, [(c, s.step, s.sigma_rel) for c, s in plan], widths)
        state = {
            "step": step,
            "posthoc_ema": {
                "run": str(run.resolve()),
                "data": config.data,
                "sigma_rel": cfg.sigma_rel,
                "step": step,
                "fit_error": error,
                "coefficients": [{"coefficient": c, "step": s.step, "sigma_rel": s.sigma_rel,
                                  "file": files[s].name} for c, s in plan],
            },
        }
        _write(out, {**config.to_dict(), "data": EXTERNAL, "out": None, "steps": step, "epochs": None}, weights,
               step, state)
        return result


def rebuildable_widths(snapshots: list[Snapshot], step: int, max_fit_error: float) -> tuple[float, float]:
    """The smallest and largest width (on a fine log grid) that ``snapshots`` rebuild at ``step`` with a fit error
    of at most ``max_fit_error``; the tracked widths themselves always fit (exactly, from their own snapshot)."""
    tracked = sorted({s.sigma_rel for s in snapshots})
    widths = np.concatenate([_WIDTHS, tracked])
    errors = fit_errors([s.step for s in snapshots], [s.sigma_rel for s in snapshots], step, widths)
    ok = widths[errors <= max_fit_error]
    return (float(ok.min()), float(ok.max())) if len(ok) else (min(tracked), max(tracked))


def _write(out: Path, config: dict, weights: dict, step: int, state: dict) -> None:
    """A run folder at ``out``: built beside it, then renamed into place (an old ``out`` set aside first and
    removed after), so ``out`` is always the old folder or the whole new one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        staged = staging / out.name
        runs.save_checkpoint(staged, step, weights, weights, optimizer={}, rng={}, state=state)
        runs.write_config(staged, config)
        atomic.honour_umask(staged)
        aside = None
        if out.exists() or out.is_symlink():
            aside = staging / "old"
            os.rename(out, aside)
        try:
            os.rename(staged, out)
        except BaseException:
            if aside is not None:
                os.rename(aside, out)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
