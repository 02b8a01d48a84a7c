"""How recognisable are generated digits? An RBF SVM trained on the real digits classifies them.

The quickstart (see README) trains on scikit-learn's 8x8 digits; this script scores its samples:

    sit train
    sit sample --ckpt runs/digits --num-samples 1000 --out runs/digits/samples-1000
    python examples/digits_accuracy.py runs/digits/samples-1000

It prints the classifier's accuracy on held-out real digits (the ceiling), then its accuracy on the
generated images against the labels they were generated for (``labels.csv`` of ``sit sample``).
Test-only code: it is not part of the package and CI does not run it.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC


def classifier(x: np.ndarray, y: np.ndarray) -> SVC:
    return SVC(kernel="rbf", gamma=0.001, C=10.0).fit(x, y)


def load_samples(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Generated images as 8x8 grey levels 0..16 (the real digits' scale) and their labels."""
    with open(folder / "labels.csv", newline="") as f:
        rows = [(int(r["index"]), int(r["label"])) for r in csv.DictReader(f)]
    width = len(next(folder.glob("*.png")).stem)
    images, labels = [], []
    for index, label in rows:
        path = folder / f"{index:0{width}d}.png"
        if not path.is_file():
            continue
        image = Image.open(path).convert("L")
        if image.size != (8, 8):
            image = image.resize((8, 8), Image.BOX)
        images.append(np.asarray(image, dtype=np.float64).reshape(-1) * 16.0 / 255.0)
        labels.append(label)
    return np.stack(images), np.array(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", type=Path, help="output folder of `sit sample` on a digits run")
    args = parser.parse_args()

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(digits.data, digits.target, test_size=0.5, random_state=0,
                                                        stratify=digits.target)
    held_out = (classifier(x_train, y_train).predict(x_test) == y_test).mean()
    print(f"RBF SVM on held-out real digits: {held_out:.1%} ({len(y_test)} images)")

    x, y = load_samples(args.samples)
    predicted = classifier(digits.data, digits.target).predict(x)
    print(f"RBF SVM on generated digits:     {(predicted == y).mean():.1%} ({len(y)} images, {args.samples})")
    per_class = "  ".join(f"{c}:{(predicted[y == c] == c).mean():.0%}" for c in np.unique(y))
    print(f"per class: {per_class}")


if __name__ == "__main__":
    main()
