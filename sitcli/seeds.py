"""Per-index random streams: every sample index has its own generator, seeded by (seed, index).

A sample's class label, starting noise and (stream 1) SDE increments are drawn from its own
generator, so an image does not depend on the batch it was drawn in, on the number of ranks, or
on restarts. Training previews use the same streams, so their noise is fixed across a run.

Labels are drawn one of two ways (``LABEL_SAMPLINGS``): ``random``, uniform from the index's own
generator, or ``balanced``, exactly N / K of each of K classes among N samples (``balanced_labels``,
as RAE's ``--label-sampling equal``); the starting noise is the same either way.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from sitcli.errors import InputError


def index_generator(seed: int, index: int, device: str | torch.device = "cpu", stream: int = 0) -> torch.Generator:
    """The generator of sample ``index``: seeded by (seed, index, stream) alone.

    torch's CPU generator keeps only the low 32 bits of its seed, so all three numbers must live
    there. Within one seed every (index, stream) gets its own value, index + stream * 2**31 offset by
    a 32-bit hash of the seed (0 for seed 0, whose stream-0 generators are the ones sit always
    used); two seeds' windows of values meet with probability about 4 num / 2**32.
    """
    if not 0 <= seed < 2**30 or not 0 <= index < 2**31 or stream not in (0, 1):
        raise InputError(f"--seed must lie in [0, {2**30}) and sample indices below 2**31")
    return torch.Generator(device).manual_seed((_seed_offset(seed) + index + (stream << 31)) % 2**32)


def _seed_offset(seed: int) -> int:
    """0 for seed 0, else the splitmix64 finaliser of the seed folded to 32 bits (a well-mixed hash)."""
    if seed == 0:
        return 0
    z = (seed * 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    z ^= z >> 31
    return (z ^ (z >> 32)) % 2**32


def index_normal(seed: int, index: int, shape: tuple[int, ...], stream: int = 0) -> torch.Tensor:
    """Standard normal float32 noise of ``shape`` owned by (seed, index, stream) alone, on the CPU.

    Drawn from numpy's PCG64 seeded through a SeedSequence of all three numbers, which keeps
    their full entropy (torch's CPU generator keeps only 32 bits of a seed, see ``index_generator``).
    """
    if seed < 0 or index < 0 or stream < 0:
        raise InputError(f"--seed must be 0 or more (got seed {seed}, index {index})")
    rng = np.random.default_rng([index, seed, stream])
    return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))


LABEL_SAMPLINGS = ("random", "balanced")
_BALANCED_STREAM = 0xBA1  # keeps the label permutations' numpy streams apart from index_normal's


def labels_and_noise(
    seed: int, indices: list[int], shape: tuple[int, ...], num_classes: int, class_labels: str | None,
    labels: str = "random", num_samples: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-index class labels and starting noise (CPU), the same on every device and batch split.

    A random label is always drawn first, so the noise of an index does not depend on ``class_labels``
    or ``labels``. ``labels="balanced"`` takes the labels from ``balanced_labels`` (``num_samples`` is N).
    """
    if labels not in LABEL_SAMPLINGS:
        raise InputError(f"unknown --labels {labels!r}; choose one of {', '.join(LABEL_SAMPLINGS)}")
    fixed = parse_class_labels(class_labels, num_classes)
    if labels == "balanced" and fixed:
        raise InputError("--class-labels fixes every label: drop it, or drop --labels balanced")
    drawn, noise = [], []
    for i in indices:
        g = index_generator(seed, i)
        label = int(torch.randint(0, max(num_classes, 1), (1,), generator=g))
        drawn.append(fixed[i % len(fixed)] if fixed else label)
        noise.append(torch.randn(shape, generator=g))
    if labels == "balanced":
        if num_samples is None:
            raise ValueError("balanced labels need num_samples, the N that every class divides evenly")
        return balanced_labels(seed, indices, num_samples, max(num_classes, 1)), torch.stack(noise)
    return torch.tensor(drawn, dtype=torch.long), torch.stack(noise)


def check_balanced(num_samples: int, num_classes: int, num_flag: str = "--num-samples",
                   labels_flag: str = "--labels") -> None:
    """Refuse balanced labels for N samples that K classes do not divide (the message names the flags given)."""
    if num_classes < 1:
        raise ValueError(f"balanced labels need at least one class, got {num_classes}")
    if num_samples % num_classes:
        below = num_samples // num_classes * num_classes
        choices = f"{below} or {below + num_classes}" if below else f"{num_classes}"
        raise InputError(f"{labels_flag} balanced draws exactly N / K of each class, but {num_flag} {num_samples} is "
                         f"not a multiple of the {num_classes} classes: pass {num_flag} {choices}, or {labels_flag} "
                         "random")


def balanced_labels(seed: int, indices: Sequence[int], num_samples: int, num_classes: int) -> torch.Tensor:
    """Labels of ``indices`` such that indices 0..N-1 (N = ``num_samples``) hold each of the K =
    ``num_classes`` classes exactly N / K times.

    The indices are cut into blocks of K consecutive ones, and block b holds every class once, in the
    order of a permutation pi_b of 0..K-1 drawn by numpy's PCG64 from (seed, b, K) alone:

        label(i) = pi_{i // K}(i mod K).

    An index's label is thus a function of (seed, K, i) only: the same in any subset of indices, batch,
    rank split or restart, and for any N (every multiple of K indices from 0 is balanced as well). K
    must divide N (``check_balanced``); each index must lie in [0, N).
    """
    check_balanced(num_samples, num_classes)
    bad = [i for i in indices if not 0 <= i < num_samples]
    if bad:
        raise ValueError(f"index {bad[0]} is outside the {num_samples} samples")
    if seed < 0:
        raise InputError(f"--seed must be 0 or more (got {seed})")
    blocks = {b: np.random.default_rng([seed, b, num_classes, _BALANCED_STREAM]).permutation(num_classes)
              for b in {i // num_classes for i in indices}}
    return torch.tensor([int(blocks[i // num_classes][i % num_classes]) for i in indices], dtype=torch.long)


def parse_class_labels(class_labels: str | None, num_classes: int) -> list[int]:
    if class_labels is None or str(class_labels).strip() == "":
        return []
    try:
        labels = [int(v) for v in str(class_labels).split(",")]
    except ValueError:
        raise InputError(f"--class-labels {class_labels!r}: pass one label (3) or a comma list (1,4,7)") from None
    bad = [v for v in labels if not 0 <= v < num_classes]
    if bad:
        raise InputError(f"--class-labels {bad[0]} is out of range: the model has classes 0..{num_classes - 1}")
    return labels
