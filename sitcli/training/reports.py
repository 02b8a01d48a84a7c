"""What a training run shows (rank 0 only): the progress bar, ``log.csv``, ``loss.png`` and EMA sample grids."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sitcli import atomic
from sitcli.config import TrainConfig
from sitcli.images import make_grid, to_images
from sitcli.seeds import labels_and_noise
from sitcli.transport import sample_ode

TIMING_COLUMNS = ("steps_per_s", "images_per_s", "elapsed_s")


def log_columns(terms: list[str]) -> tuple[str, ...]:
    """step, the total loss, one ``loss_<name>`` column per term when there is more than one, timing."""
    parts = tuple(f"loss_{name}" for name in terms) if len(terms) > 1 else ()
    return ("step", "loss", *parts, *TIMING_COLUMNS)


class TrainLog:
    """Progress bar every step; a ``log.csv`` row (means since the last row) every ``log_every`` steps."""

    def __init__(self, run: Path, total: int, is_main: bool, progress: bool, start: int = 0, log_every: int = 100,
                 terms: tuple[str, ...] = ("regression",)):
        self.path = Path(run) / "log.csv"
        self.is_main, self.total, self.log_every = is_main, total, log_every
        self.columns = log_columns(list(terms))
        self.losses: list[list[float]] = []
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

    def step(self, step: int, losses: list[float], images: int) -> None:
        """Record one step: ``losses`` is the total, then each term's value when there are several."""
        if not self.is_main:
            return
        self.losses.append(losses)
        self.images += images
        now = time.perf_counter()
        window = max(now - self.window_start, 1e-9)
        steps_per_s, images_per_s = len(self.losses) / window, self.images / window
        shown = f"{losses[0]:.4f}" + "".join(f" {n[5:]} {v:.4f}" for n, v in zip(self.columns[2:], losses[1:]))
        self.bar.update(self.task, completed=step, loss=shown, speed=f"{steps_per_s:.2f} steps/s {images_per_s:.0f} img/s")
        if step % self.log_every == 0 or step == self.total:
            means = [sum(column) / len(column) for column in zip(*self.losses)]
            new = not self.path.is_file()
            with open(self.path, "a") as f:  # appending one line; a torn last line is dropped on resume
                if new:
                    f.write(",".join(self.columns) + "\n")
                elapsed = self.elapsed_before + now - self.started
                f.write(f"{step}," + "".join(f"{m:.6g}," for m in means) + f"{steps_per_s:.4g},{images_per_s:.4g},{elapsed:.1f}\n")
            self.losses, self.images, self.window_start = [], 0, now
            plot_loss(read_log(self.path), self.path.parent / "loss.png")


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
    lines = [",".join(columns)] + [",".join(f"{r[k]:g}" if k != "step" else str(int(r[k])) for k in columns) for r in rows]
    atomic.write_text(path, "\n".join(lines) + "\n")


def plot_loss(rows: list[dict], path: Path, width: int = 640, height: int = 360) -> None:
    """A plain loss-vs-step line chart (log-scale loss) drawn with Pillow."""
    from PIL import Image, ImageDraw

    points = [(r["step"], r["loss"]) for r in rows if r["loss"] > 0 and math.isfinite(r["loss"])]
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 60, width - 20, 20, height - 40
    draw.rectangle([left, top, right, bottom], outline="black")
    if len(points) >= 2:
        steps, losses = zip(*points)
        lo, hi = math.log10(min(losses)), math.log10(max(losses))
        hi = hi if hi > lo else lo + 1e-3
        s0, s1 = min(steps), max(steps)
        xy = [(left + (s - s0) / max(s1 - s0, 1) * (right - left), bottom - (math.log10(v) - lo) / (hi - lo) * (bottom - top))
              for s, v in points]
        draw.line(xy, fill=(31, 119, 180), width=2)
        draw.text((5, top), f"{10 ** hi:.3g}", fill="black")
        draw.text((5, bottom - 10), f"{10 ** lo:.3g}", fill="black")
        draw.text((left, bottom + 8), f"step {int(s0)}", fill="black")
        draw.text((right - 80, bottom + 8), f"step {int(s1)}", fill="black")
    draw.text((width // 2 - 40, height - 18), "training loss (log scale)", fill="black")
    atomic.save_image(path, image)


class TrainingPreview:
    """EMA sample grids during training: the same noise and labels every time, so progress shows."""

    def __init__(self, cfg: TrainConfig, folder: Path, vae=None, steps: int = 25):
        self.cfg, self.folder, self.vae, self.steps = cfg, Path(folder), vae, steps
        classes = max(cfg.num_classes, 1)
        self.ncol = classes if classes <= 16 else 8
        n = classes * 8 if classes <= 16 else 32
        self.y, self.x0 = labels_and_noise(cfg.seed, list(range(n)), (cfg.in_channels, cfg.input_size, cfg.input_size),
                                           classes, ",".join(str(i % classes) for i in range(n)) if classes <= 16 else None)
        if self.vae is None and cfg.latent_scale is not None and cfg.vae:
            from sitcli.autoencoder import load_vae

            self.vae = load_vae(cfg.vae)

    @torch.no_grad()
    def save(self, ema: torch.nn.Module, step: int) -> Path | None:
        if self.cfg.latent_scale is not None and self.vae is None:
            return None  # latents without a VAE to decode them: nothing to look at
        device = next(ema.parameters()).device
        kwargs = {"y": self.y.to(device) if self.cfg.num_classes > 0 else None}
        x, _ = sample_ode(self.cfg.transport(), ema, self.x0.to(device), "heun", self.steps, model_kwargs=kwargs)
        path = self.folder / f"{step:07d}.png"
        atomic.save_image(path, make_grid(to_images(x, self.vae), ncol=self.ncol))
        return path
