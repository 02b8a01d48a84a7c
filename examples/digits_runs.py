"""The digits examples' runs: `sit train` and `sit sample` commands, run once into a --root folder, then scored.

A ``Training`` is one set of `sit train` flags, a ``Sampling`` one set of `sit sample` flags; each
is run for seeds 0 .. n - 1, the training seed and the sampling seed the same number, and its
folder under the root is named after its flags and seed, so a second call finds it and redraws the
tables without training or sampling again. Scores come from ``sitcli.evaluate.digits``
(``DigitsJudge``): Fréchet distance, precision and recall in a small digit classifier's features and
an RBF SVM's accuracy, plus the raw-pixel Fréchet distance (grey levels 0..16, the examples' measure
before the classifier) against the same reference half of the real digits.
Example code: not part of the package.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from digits_quality import load_samples  # noqa: E402

from sitcli import runs  # noqa: E402
from sitcli.evaluate.digits import DigitsJudge, statistics  # noqa: E402
from sitcli.evaluate.metrics import frechet_distance  # noqa: E402

LABELS = "0,1,2,3,4,5,6,7,8,9"  # class-balanced samples
COLUMNS = ("fd", "precision", "recall", "accuracy", "raw_fd")
HEADER = "| FD (features) | precision | recall | SVM accuracy | FD (raw pixels) |"


@dataclass(frozen=True)
class Training:
    interpolant: str
    prediction: str
    num_timesteps: int | None = None  # discrete time on this many grid points

    @property
    def name(self) -> str:
        name = f"{self.interpolant}-{self.prediction}"
        return name + (f"-T{self.num_timesteps}" if self.num_timesteps else "")

    def folder(self, root: Path, seed: int) -> Path:
        return root / f"{self.name}-s{seed}"

    def command(self, root: Path, seed: int, steps: int, threads: int) -> list[str]:
        cmd = ["sit", "train", "--data", "digits", "--interpolant", self.interpolant, "--pred", self.prediction]
        if self.num_timesteps:
            cmd += ["--num-timesteps", str(self.num_timesteps)]
        return cmd + ["--steps", str(steps), "--threads", str(threads), "--seed", str(seed),
                      "--out", str(self.folder(root, seed))]


@dataclass(frozen=True)
class Sampling:
    flags: tuple[str, ...]

    def folder(self, run: Path) -> Path:
        return run / ("samples-" + "-".join(f.lstrip("-") for f in self.flags))

    def command(self, run: Path, seed: int, num: int, threads: int) -> list[str]:
        return ["sit", "sample", "--ckpt", str(run), *self.flags, "--num", str(num), "--seed", str(seed),
                "--class-labels", LABELS, "--threads", str(threads), "--out", str(self.folder(run))]


def arguments(description: str) -> argparse.ArgumentParser:
    """The flags every digits-runs script shares: where runs are cached, their budget, seeds and parallelism."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--steps", type=int, default=500, help="training steps per run")
    parser.add_argument("--num", type=int, default=300, help="samples per run and sampler")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..SEEDS-1 (training and sampling alike)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="`sit` commands run at a time")
    return parser


def trained(folder: Path, steps: int) -> bool:
    """Whether the run holds its final checkpoint (a run still training has earlier ones)."""
    last = runs.latest_checkpoint(folder) if folder.is_dir() else None
    return last is not None and int(last.name) >= steps


def sampled(folder: Path, num: int) -> bool:
    return (folder / "labels.csv").is_file() and len(list(folder.glob("*.png"))) >= num


def execute(commands: list[list[str]], jobs: int = 1) -> None:
    """Run `sit` commands (this interpreter's sitcli), ``jobs`` at a time; stop at the first failure."""
    def one(cmd: list[str]) -> None:
        print("$", shlex.join(cmd), flush=True)
        done = subprocess.run([sys.executable, "-m", "sitcli", *cmd[1:]], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        if done.returncode:
            raise RuntimeError(f"{shlex.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(one, commands))


def prepare(pairs: list[tuple[Training, Sampling]], root: Path, seeds: int, steps: int, num: int,
            threads: int = 1, jobs: int = 1) -> None:
    """Train and sample what ``root`` does not hold yet: every (training, sampling) pair for every seed."""
    trainings = {t.folder(root, s): t.command(root, s, steps, threads)
                 for t, _ in pairs for s in range(seeds)}
    # A run cut short is continued from its newest checkpoint rather than refused.
    execute([cmd if not (folder / "config.json").is_file() else ["sit", "train", "--resume", str(folder),
                                                                  "--steps", str(steps)]
             for folder, cmd in trainings.items() if not trained(folder, steps)], jobs)
    samples = {}
    for t, sampling in pairs:
        for s in range(seeds):
            run = t.folder(root, s)
            samples[sampling.folder(run)] = sampling.command(run, s, num, threads)
    execute([cmd for folder, cmd in samples.items() if not sampled(folder, num)], jobs)


def raw_pixels(images: np.ndarray) -> np.ndarray:
    """(N, 64) grey levels 0..16, as scikit-learn stores the real digits."""
    return np.asarray(images, dtype=np.float64).reshape(len(images), -1) * 16.0


def pixel_fd(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two (N, 64) pixel arrays (singular covariances
    are fine: the corner pixels of real digits are always 0)."""
    return frechet_distance(*statistics(a), *statistics(b))


def score(folder: Path, num: int) -> dict[str, float]:
    """The figures of one sample folder (its first ``num`` images)."""
    judge = DigitsJudge.default()
    images, labels = load_samples(folder)
    images, labels = images[:num], labels[:num]
    result = judge.score(images, labels)
    raw_fd = pixel_fd(raw_pixels(images[:result.n]), raw_pixels(judge.images[judge.reference]))
    return {"fd": result.fd, "precision": result.precision, "recall": result.recall,
            "accuracy": result.accuracy, "raw_fd": raw_fd}


def floors(num: int) -> str:
    """One line: every figure for ``num`` real digits of the other half against the reference half."""
    judge = DigitsJudge.default()
    real = judge.other[:num]
    s = judge.score(judge.images[real], judge.labels[real])
    raw_fd = pixel_fd(raw_pixels(judge.images[real]), raw_pixels(judge.images[judge.reference]))
    return (f"real-vs-real floors at n = {s.n} (other real digits against the {len(judge.reference)}-digit reference "
            f"half): FD (features) {s.fd_floor:.2f}, precision {s.precision_floor:.3f}, recall "
            f"{s.recall_floor:.3f}, SVM accuracy {s.accuracy_floor:.1%} (held out), FD (raw pixels) {raw_fd:.1f}")


def seed_scores(training: Training, sampling: Sampling, root: Path, seeds: int, num: int) -> list[dict[str, float]]:
    return [score(sampling.folder(training.folder(root, s)), num) for s in range(seeds)]


def mean_std(values: list[float], digits: int = 2, percent: bool = False) -> str:
    """mean ± sample standard deviation (ddof = 1) over the seeds."""
    a = np.asarray(values, dtype=np.float64) * (100.0 if percent else 1.0)
    std = a.std(ddof=1) if len(a) > 1 else float("nan")
    return f"{a.mean():.{digits}f} ± {std:.{digits}f}" + ("%" if percent else "")


def cells(scores: list[dict[str, float]]) -> str:
    """The table cells of one row, in ``HEADER``'s order."""
    col = {k: [s[k] for s in scores] for k in COLUMNS}
    return " | ".join([mean_std(col["fd"], 2), mean_std(col["precision"], 3), mean_std(col["recall"], 3),
                       mean_std(col["accuracy"], 1, percent=True), mean_std(col["raw_fd"], 1)])
