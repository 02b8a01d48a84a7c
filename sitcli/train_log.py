"""What a training run reports: the progress bar, ``log.csv`` and ``loss.png`` (rank 0 only)."""

from __future__ import annotations

import math
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sitcli.checkpoint import atomic_save_image, atomic_write_text

LOG_COLUMNS = ("step", "loss", "steps_per_s", "images_per_s", "elapsed_s")


class TrainLog:
    """Progress bar every step; a ``log.csv`` row (mean loss since the last row) every ``log_every`` steps."""

    def __init__(self, run: Path, total: int, is_main: bool, progress: bool, start: int = 0, log_every: int = 100):
        self.path = Path(run) / "log.csv"
        self.is_main, self.total, self.log_every = is_main, total, log_every
        self.losses: list[float] = []
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

    def step(self, step: int, loss: float, images: int) -> None:
        if not self.is_main:
            return
        self.losses.append(loss)
        self.images += images
        now = time.perf_counter()
        window = max(now - self.window_start, 1e-9)
        steps_per_s, images_per_s = len(self.losses) / window, self.images / window
        self.bar.update(self.task, completed=step, loss=f"{loss:.4f}",
                        speed=f"{steps_per_s:.2f} steps/s {images_per_s:.0f} img/s")
        if step % self.log_every == 0 or step == self.total:
            mean = sum(self.losses) / len(self.losses)
            new = not self.path.is_file()
            with open(self.path, "a") as f:  # appending one line; a torn last line is dropped on resume
                if new:
                    f.write(",".join(LOG_COLUMNS) + "\n")
                elapsed = self.elapsed_before + now - self.started
                f.write(f"{step},{mean:.6g},{steps_per_s:.4g},{images_per_s:.4g},{elapsed:.1f}\n")
            self.losses, self.images, self.window_start = [], 0, now
            plot_loss(read_log(self.path), self.path.parent / "loss.png")


def read_log(path: Path) -> list[dict]:
    """Rows of a ``log.csv`` as dicts of numbers; unparsable (torn) lines are skipped."""
    if not Path(path).is_file():
        return []
    rows = []
    lines = Path(path).read_text().splitlines()
    for line in lines[1:]:
        parts = line.split(",")
        try:
            rows.append({k: float(v) for k, v in zip(LOG_COLUMNS, parts, strict=True)})
        except ValueError:
            continue
    return rows


def truncate_log(path: Path, step: int) -> None:
    """Keep the rows up to ``step`` (a resumed run repeats the steps after its checkpoint)."""
    rows = [r for r in read_log(path) if r["step"] <= step]
    if Path(path).is_file():
        lines = [",".join(LOG_COLUMNS)] + [",".join(f"{r[k]:g}" if k != "step" else str(int(r[k])) for k in LOG_COLUMNS) for r in rows]
        atomic_write_text(path, "\n".join(lines) + "\n")


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
    atomic_save_image(path, image)
