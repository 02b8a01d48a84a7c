"""What a training run shows (rank 0 only): the progress bar, ``log.csv``, ``loss.png``, EMA sample grids,
``eval.csv`` and ``best.json`` (FID during training), and the same numbers to the ``loggers``."""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sitcli import atomic
from sitcli.config import TrainConfig
from sitcli.images import make_grid, to_images
from sitcli.latent_space import can_decode, decodes, model_autoencoder
from sitcli.seeds import labels_and_noise
from sitcli.transport import ODE_METHODS, sample_ode

TIMING_COLUMNS = ("steps_per_s", "images_per_s", "elapsed_s")
OPTIMISER_COLUMNS = ("grad_norm", "lr")  # the gradient norm before clipping; the learning rate
EVAL_LOG, BEST = "eval.csv", "best.json"


def log_columns(terms: list[str]) -> tuple[str, ...]:
    """step, the total loss, one ``loss_<name>`` column per term when there is more than one,
    gradient norm and learning rate, timing."""
    parts = tuple(f"loss_{name}" for name in terms) if len(terms) > 1 else ()
    return ("step", "loss", *parts, *OPTIMISER_COLUMNS, *TIMING_COLUMNS)


class TrainLog:
    """Progress bar every step; a ``log.csv`` row (means since the last row) every ``log_every`` steps,
    sent to every logger of ``loggers`` (``training.loggers``) too.

    A checkpoint keeps the steps since the last row (``window``) and a resumed run starts from them, so
    its rows are the ones of an uninterrupted run in every column but the timing ones (``TIMING_COLUMNS``).
    """

    def __init__(self, run: Path, total: int, is_main: bool, progress: bool, start: int = 0, log_every: int = 100,
                 terms: tuple[str, ...] = ("regression",), loggers: list | tuple = (), window: dict | None = None):
        self.path = Path(run) / "log.csv"
        self.is_main, self.total, self.log_every = is_main, total, log_every
        self.loggers = list(loggers)
        # A resumed run keeps the columns its log.csv began with.
        self.columns = _header(self.path) if is_main and self.path.is_file() else log_columns(list(terms))
        window = window or {}
        self.losses: list[list[float]] = [list(v) for v in window.get("losses", [])]
        self.grad_norms: list[torch.Tensor | float] = list(window.get("grad_norms", []))  # floats: from a checkpoint
        self.norm_dtype = getattr(torch, window.get("grad_norm_dtype", "float32"))
        self.lr = float("nan")
        self.images = 0
        self.window_start = time.perf_counter()
        self.elapsed_before = self._previous_elapsed()
        self.started = time.perf_counter()
        self.bar = Progress(
            TextColumn("[bold]train[/] step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}  {task.fields[speed]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not (is_main and progress),
        )
        self.task = self.bar.add_task("train", total=total, completed=start, loss="-", speed="")

    def _previous_elapsed(self) -> float:
        rows = read_log(self.path) if self.is_main else []
        return rows[-1]["elapsed_s"] if rows else 0.0

    def __enter__(self) -> "TrainLog":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)
        for logger in self.loggers:
            logger.close()

    def step(self, step: int, losses: list[float], images: int, grad_norm: torch.Tensor | None = None,
             lr: float | None = None) -> None:
        """Record one step: ``losses`` is the total, then each term's value when there are several."""
        if not self.is_main:
            return
        self.losses.append(losses)
        if grad_norm is not None:
            self.grad_norms.append(grad_norm.detach())  # read at the next row: no device sync per step
        self.lr = self.lr if lr is None else lr
        self.images += images
        now = time.perf_counter()
        window = max(now - self.window_start, 1e-9)
        steps_per_s, images_per_s = len(self.losses) / window, self.images / window
        shown = f"{losses[0]:.4f}" + "".join(f" {n[5:]} {v:.4f}" for n, v in zip(self.columns[2:], losses[1:]))
        self.bar.update(
            self.task, completed=step, loss=shown, speed=f"{steps_per_s:.2f} steps/s {images_per_s:.0f} img/s"
        )
        if step % self.log_every == 0 or step == self.total:
            means = [sum(column) / len(column) for column in zip(*self.losses)]
            grad_norm = float(torch.stack(self._norms()).float().mean()) if self.grad_norms else float("nan")
            elapsed = self.elapsed_before + now - self.started
            values = {
                **dict(zip(("loss", *(c for c in self.columns if c.startswith("loss_"))), means)),
                "grad_norm": grad_norm,
                "lr": self.lr,
                "steps_per_s": steps_per_s,
                "images_per_s": images_per_s,
                "elapsed_s": elapsed,
            }
            new = not self.path.is_file()
            with open(self.path, "a") as f:  # appending one line; a torn last line is dropped on resume
                if new:
                    f.write(",".join(self.columns) + "\n")
                f.write(
                    ",".join([str(step)] + [_format(c, values.get(c, float("nan"))) for c in self.columns[1:]]) + "\n"
                )
            self.losses, self.grad_norms, self.images, self.window_start = [], [], 0, now
            plot_loss(read_log(self.path), self.path.parent / "loss.png")
            for logger in self.loggers:
                logger.scalars(
                    step,
                    {
                        ("train/" + k if k.startswith("loss") or k in OPTIMISER_COLUMNS else "speed/" + k): v
                        for k, v in values.items()
                    },
                )

    def _norms(self) -> list[torch.Tensor]:
        """The gradient norms of the window as tensors, those from a checkpoint on the device of the others."""
        device = next((g.device for g in self.grad_norms if isinstance(g, torch.Tensor)), "cpu")
        return [
            g if isinstance(g, torch.Tensor) else torch.tensor(g, dtype=self.norm_dtype, device=device)
            for g in self.grad_norms
        ]

    def window(self) -> dict:
        """The steps since the last row, for a checkpoint: per-step losses and gradient norms (exact in JSON)."""
        norms = self._norms()
        return {
            "losses": self.losses,
            "grad_norms": [float(g) for g in norms],
            "grad_norm_dtype": str(norms[0].dtype).removeprefix("torch.") if norms else "float32",
        }

    def image(self, step: int, tag: str, path: Path | None) -> None:
        """An image the run wrote (an EMA sample grid) to every logger."""
        if self.is_main and path is not None:
            for logger in self.loggers:
                logger.image(step, tag, path)

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        """One evaluation during training: a row of ``eval.csv``, ``best.json`` (the lowest FID so far), the loggers.

        Its seconds (``metrics["eval_s"]``) are left out of the training speed shown and logged.
        """
        self.window_start += metrics.get("eval_s", 0.0)
        if not self.is_main:
            return
        path = self.path.parent / EVAL_LOG
        columns = ("step", *metrics)
        new = not path.is_file()
        with open(path, "a") as f:
            if new:
                f.write(",".join(columns) + "\n")
            f.write(",".join([str(step)] + [f"{metrics[c]:.6g}" for c in columns[1:]]) + "\n")
        best = write_best(path.parent)
        self.bar.console.print(
            f"step {step}: "
            + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            + (f"; best fid {best['fid']:.4g} at step {best['step']}" if best else ""),
            highlight=False,
        )
        for logger in self.loggers:
            logger.scalars(step, {f"eval/{k}": v for k, v in metrics.items()})


def _format(column: str, value: float) -> str:
    return (
        f"{value:.4g}"
        if column in ("steps_per_s", "images_per_s")
        else f"{value:.1f}"
        if column == "elapsed_s"
        else f"{value:.6g}"
    )


def _header(path: Path) -> tuple[str, ...]:
    return tuple(Path(path).read_text().splitlines()[0].split(","))


def write_best(run: Path) -> dict | None:
    """``best.json``: the step of the lowest FID in ``eval.csv`` (its checkpoint, when one was saved at that
    step), rewritten atomically; removed when there is no evaluation (a resume cut them all)."""
    rows = [r for r in read_log(Path(run) / EVAL_LOG) if math.isfinite(r.get("fid", math.nan))]
    if not rows:
        (Path(run) / BEST).unlink(missing_ok=True)
        return None
    row = min(rows, key=lambda r: (r["fid"], r["step"]))
    step = int(row["step"])
    ckpt = Path(run) / "checkpoints" / f"{step:07d}"
    best = {"step": step, "fid": row["fid"], "checkpoint": str(ckpt) if ckpt.is_dir() else None}
    atomic.write_json(Path(run) / BEST, best)
    return best


def read_log(path: Path) -> list[dict]:
    """Rows of a ``log.csv`` as dicts of numbers, keyed by its header; unparsable (torn) lines are skipped."""
    if not Path(path).is_file():
        return []
    lines = Path(path).read_text().splitlines()
    if not lines:
        return []
    columns = lines[0].split(",")
    rows = []
    for line in lines[1:]:
        try:
            rows.append({k: float(v) for k, v in zip(columns, line.split(","), strict=True)})
        except ValueError:
            continue
    return rows


def truncate_log(path: Path, step: int) -> None:
    """Keep the rows up to ``step`` (a resumed run repeats the steps after its checkpoint)."""
    if not Path(path).is_file():
        return
    columns = Path(path).read_text().splitlines()[0].split(",")
    rows = [r for r in read_log(path) if r["step"] <= step]
    lines = [",".join(columns)] + [
        ",".join(f"{r[k]:g}" if k != "step" else str(int(r[k])) for k in columns) for r in rows
    ]
    atomic.write_text(path, "\n".join(lines) + "\n")


def plot_loss(rows: list[dict], path: Path) -> Path | None:
    """Training loss against step (log scale) as a PNG, drawn by matplotlib; without matplotlib
    (``pip install 'sit[plots]'``) no plot is drawn and None returned: log.csv holds the numbers."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    points = [(r["step"], r["loss"]) for r in rows if r["loss"] > 0 and math.isfinite(r["loss"])]
    figure = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if points:
        axes.plot(*zip(*points), marker="." if len(points) < 30 else None)
    axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    axes.grid(True, which="both", alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic.atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
    return Path(path)


def sampling_shift(cfg: TrainConfig, method: str) -> float:
    """The time shift of a run's own samples (previews, evaluations): its training shift, as RAE samples with
    the shift it trains with; 1 for adaptive methods, which choose their own steps."""
    return 1.0 if ODE_METHODS[method].kind == "adaptive" else cfg.resolved_time_shift()


class TrainingPreview:
    """EMA sample grids during training: the same noise and labels every time, so progress shows."""

    def __init__(self, cfg: TrainConfig, folder: Path, vae=None, steps: int = 25):
        # In discrete time at most T - 1 uniform steps fit on the T training times.
        steps = min(steps, cfg.num_timesteps - 1) if cfg.num_timesteps else steps
        self.cfg, self.folder, self.vae, self.steps = cfg, Path(folder), vae, steps
        classes = max(cfg.num_classes, 1)
        self.ncol = classes if classes <= 16 else 8
        n = classes * 8 if classes <= 16 else 32
        self.y, self.x0 = labels_and_noise(
            cfg.seed,
            list(range(n)),
            (cfg.in_channels, cfg.input_size, cfg.input_size),
            classes,
            ",".join(str(i % classes) for i in range(n)) if classes <= 16 else None,
        )
        if cfg.latent_scale is not None and can_decode(cfg) and (self.vae is None or not decodes(self.vae)):
            self.vae = model_autoencoder(cfg)  # a latent cache: decode with the autoencoder it names
        self.time_shift = sampling_shift(cfg, "heun")

    @torch.no_grad()
    def save(self, ema: torch.nn.Module, step: int) -> Path | None:
        if self.cfg.latent_scale is not None and (self.vae is None or not decodes(self.vae)):
            return None  # latents without a VAE to decode them: nothing to look at
        device = next(ema.parameters()).device
        kwargs = {"y": self.y.to(device) if self.cfg.num_classes > 0 else None}
        x, _ = sample_ode(self.cfg.transport(), ema, self.x0.to(device), "heun", self.steps, model_kwargs=kwargs,
                          time_shift=self.time_shift)
        path = self.folder / f"{step:07d}.png"
        atomic.save_image(path, make_grid(to_images(x, self.vae), ncol=self.ncol))
        return path
