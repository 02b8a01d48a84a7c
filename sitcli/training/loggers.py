"""Where a training run's numbers and pictures go besides ``log.csv``: TensorBoard, Weights & Biases.

``--log csv,tensorboard,wandb`` picks the backends; ``log.csv`` is always written (a resumed run
reads its elapsed time back from it), the others are optional extras (``pip install
'sit[tensorboard]'``, ``'sit[wandb]'``). Every backend is one small class with the same three
methods, so the loop does not know which ones are on:

    scalars(step, {"loss": 0.31, "lr": 1e-3, ...})   # one point per name
    image(step, "ema_samples", Path("grids/0000400.png"))
    close()

TensorBoard event files go to ``<run>/tensorboard``; W&B keeps its files in ``<run>/wandb``
(offline with ``WANDB_MODE=offline``: nothing is sent, ``wandb sync`` uploads them later).
"""

from __future__ import annotations

import importlib.util
import secrets
import shutil
from pathlib import Path
from typing import Protocol

from sitcli import atomic
from sitcli.errors import InputError

# backend -> (module it needs, the pip command that installs it)
BACKENDS = {
    "csv": (None, None),
    "tensorboard": ("tensorboard", "pip install 'sit[tensorboard]'  (or: pip install tensorboard)"),
    "wandb": ("wandb", "pip install 'sit[wandb]'  (or: pip install wandb)"),
}


class Logger(Protocol):
    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def image(self, step: int, tag: str, path: Path) -> None: ...

    def close(self) -> None: ...


def parse_log(spec: str | None) -> tuple[str, ...]:
    """``"csv,tensorboard"`` -> ("csv", "tensorboard"); csv is always among them."""
    names = [n.strip().lower() for n in (spec or "csv").split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise InputError(f"--log-to {unknown[0]!r} is not a logger; choose a comma list of {', '.join(BACKENDS)}")
    return tuple(n for n in BACKENDS if n in names or n == "csv")


def check_log(spec: str | None) -> tuple[str, ...]:
    """``parse_log``, and refuse a backend whose package is not installed (before anything is written)."""
    names = parse_log(spec)
    for name in names:
        module, pip = BACKENDS[name]
        if module is not None and importlib.util.find_spec(module) is None:
            raise InputError(f"--log-to {name} needs the {module} package, which is not installed: {pip}")
    return names


def open_loggers(spec: str | None, run: Path, config: dict) -> list[Logger]:
    """The loggers besides log.csv for ``run`` (rank 0 only); ``config`` is recorded where the backend keeps one.

    A backend that fails to start (a broken install, wandb without an API key) is an InputError naming it; the
    loggers opened before it are closed and the folders this call made removed."""
    opened: list[Logger] = []
    made: list[Path] = []
    for name in check_log(spec):
        if name == "csv":
            continue
        folder = Path(run) / name  # where the backend keeps its files
        if not folder.exists():
            made.append(folder)
        try:
            opened.append(TensorBoardLogger(run, config) if name == "tensorboard" else WandbLogger(run, config))
        except Exception as err:  # noqa: BLE001 - a backend's start fails in its own ways
            for logger in opened:
                logger.close()
            for path in made:
                shutil.rmtree(path, ignore_errors=True)
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            fix = START_FIXES[name]
            raise InputError(f"--log-to {name} cannot start ({type(err).__name__}: {reason}): {fix}") from None
    return opened


# What usually makes a backend start, by name.
START_FIXES = {
    "tensorboard": "reinstall it (pip install --force-reinstall tensorboard), or drop it from --log-to",
    "wandb": "log in (wandb login, or set WANDB_API_KEY), set WANDB_MODE=offline to keep the run on disk, reinstall "
             "wandb, or drop it from --log-to",
}


class TensorBoardLogger:
    """Event files in ``<run>/tensorboard``; a resumed run appends a new file to the same folder."""

    def __init__(self, run: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run) / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in config.items()), 0)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def image(self, step: int, tag: str, path: Path) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as img:
            self.writer.add_image(tag, np.asarray(img.convert("RGB")), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A W&B run kept in ``<run>/wandb``, named after the run folder; its id is kept in
    ``<run>/wandb/sit-run-id`` so that a resumed training run continues the same W&B run."""

    def __init__(self, run: Path, config: dict):
        import wandb

        folder = Path(run) / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "sit-run-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        atomic.write_text(id_file, run_id + "\n")
        self.wandb = wandb
        self.run = wandb.init(project="sit", name=Path(run).name, id=run_id, resume="allow", dir=str(run),
                              config=config)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def image(self, step: int, tag: str, path: Path) -> None:
        self.run.log({tag: self.wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        self.run.finish()
