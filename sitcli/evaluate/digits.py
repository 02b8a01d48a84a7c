"""Sample quality on the 8x8 digits: Fréchet distance and precision/recall in a digit classifier's features.

Inception features mean little for 8x8 grey digits, raw-pixel Fréchet distance misses structure
and a classifier's accuracy misses diversity (one perfect 3 for every 3 scores 100%). So, as
MNIST work does with LeNet, a small CNN is trained on the real digits and its penultimate layer
(``FEATURES`` numbers per image) is the feature space:

- ``fd``: the Fréchet distance (``metrics.frechet_distance``) between Gaussians fitted to the
  samples' features and to a fixed reference half of the real digits.
- ``precision`` / ``recall``: improved precision and recall (``metrics.precision_recall``, k = 3)
  against the same reference features.
- ``accuracy``: an RBF SVM on the raw pixels, trained on all real digits, against the labels the
  samples were drawn for (the examples' measure before this one, kept as a second column).

Every figure depends on the number of samples n, so each comes with its real-vs-real floor: the
same measure for n real digits of the other half against the reference (n is capped at that
half, 898 images). The classifier is trained once per process, in float32 on one thread with a
fixed seed and a fixed batch order, so the same machine gives the same features every time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from sitcli.evaluate.metrics import frechet_distance, precision_recall

FEATURES = 64
EPOCHS = 30
SEED = 0


class DigitNet(nn.Module):
    """Two 3x3 convolutions, a 2x2 pooling, then 512 -> ``FEATURES`` -> 10."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(32 * 4 * 4, FEATURES), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURES, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def real_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as (N, 8, 8) grey levels in [0, 1], and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images / 16.0, digits.target


def train_classifier(images: np.ndarray, labels: np.ndarray, seed: int = SEED, epochs: int = EPOCHS) -> DigitNet:
    """Adam (lr 1e-3), batches of 64 in a seeded order, cross-entropy; one thread so that the
    reduction order, and so the weights, are the same on every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = DigitNet()
        x = torch.as_tensor(images, dtype=torch.float32)[:, None]
        y = torch.as_tensor(labels, dtype=torch.long)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(epochs):
            for batch in torch.randperm(len(x), generator=generator).split(64):
                loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return net.eval()
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def features(net: DigitNet, images: np.ndarray) -> np.ndarray:
    """Penultimate-layer features (N, ``FEATURES``) of (N, 8, 8) or (N, 64) grey levels in [0, 1]."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32).reshape(-1, 1, 8, 8))
    return net.body(x).double().numpy()


def statistics(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return f.mean(0), np.cov(f, rowvar=False)


@dataclass(frozen=True)
class DigitsScore:
    """One sample set's figures, each beside its real-vs-real floor at the same n."""

    n: int
    fd: float
    precision: float
    recall: float
    accuracy: float | None
    fd_floor: float
    precision_floor: float
    recall_floor: float
    accuracy_floor: float


class DigitsJudge:
    """The classifier, the SVM and the two halves of the real digits, built once per process
    (``DigitsJudge.default()``)."""

    def __init__(self, seed: int = SEED):
        from sklearn.model_selection import train_test_split
        from sklearn.svm import SVC

        images, labels = real_digits()
        self.net = train_classifier(images, labels, seed=seed)
        # A stratified half is the fixed reference; the other half gives the floors.
        index = np.arange(len(labels))
        self.other, self.reference = train_test_split(index, test_size=0.5, random_state=seed, stratify=labels)
        self.images, self.labels = images, labels
        self.f = features(self.net, images)
        self.reference_stats = statistics(self.f[self.reference])
        pixels = images.reshape(len(images), -1) * 16.0
        self.svm = SVC(kernel="rbf", gamma=0.001, C=10.0).fit(pixels, labels)
        # The SVM's floor is a held-out one: trained on one half, scored on the other.
        half = SVC(kernel="rbf", gamma=0.001, C=10.0).fit(pixels[self.reference], labels[self.reference])
        self.accuracy_floor = float((half.predict(pixels[self.other]) == labels[self.other]).mean())

    @staticmethod
    @lru_cache(maxsize=1)
    def default() -> "DigitsJudge":
        return DigitsJudge()

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        pixels = np.asarray(images, dtype=np.float64).reshape(len(images), -1) * 16.0
        return float((self.svm.predict(pixels) == np.asarray(labels)).mean())

    def score(self, images: np.ndarray, labels: np.ndarray | None = None) -> DigitsScore:
        """Score (N, 8, 8) grey levels in [0, 1]; the first min(N, 898) images are used for the
        feature figures, all of them for the SVM accuracy (which needs ``labels``)."""
        images = np.asarray(images, dtype=np.float64)
        n = min(len(images), len(self.other))
        if n <= 3:
            raise ValueError(f"need more than 3 images to score, got {len(images)}")
        fake = features(self.net, images[:n])
        real = self.f[self.other[:n]]
        reference = self.f[self.reference]
        precision, recall = precision_recall(reference, fake)
        precision_floor, recall_floor = precision_recall(reference, real)
        return DigitsScore(
            n=n,
            fd=frechet_distance(*statistics(fake), *self.reference_stats),
            precision=precision,
            recall=recall,
            accuracy=None if labels is None else self.accuracy(images, labels),
            fd_floor=frechet_distance(*statistics(real), *self.reference_stats),
            precision_floor=precision_floor,
            recall_floor=recall_floor,
            accuracy_floor=self.accuracy_floor,
        )
