"""How good are generated digits? Features of a small classifier trained on the real digits judge them.

The quickstart (see README) trains on scikit-learn's 8x8 digits; this script scores its samples:

    sit train
    sit sample --ckpt runs/digits --num-samples 1000 --out runs/digits/samples-1000
    python examples/digits_quality.py runs/digits/samples-1000

It prints, each beside its real-vs-real floor at the same number of images
(``sitcli.evaluate.digits``): the Fréchet distance in the classifier's features (FD, lower is
better), precision and recall in the same features (fidelity and coverage), and the accuracy of
an RBF SVM on the raw pixels against the labels the images were drawn for (``labels.csv``).
Example code: not part of the package; CI runs it on stand-ins only.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

from sitcli.evaluate.digits import DigitsJudge, DigitsScore


def load_samples(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Generated images as (N, 8, 8) grey levels in [0, 1], in index order, and their labels."""
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
        images.append(np.asarray(image, dtype=np.float64) / 255.0)
        labels.append(label)
    return np.stack(images), np.array(labels)


def report(score: DigitsScore, what: str, count: int) -> str:
    return (
        f"{what}: {count} images (features of the first {score.n}, floors at the same n)\n"
        f"  FD (classifier features) {score.fd:8.2f}   floor {score.fd_floor:.2f}\n"
        f"  precision                {score.precision:8.3f}   floor {score.precision_floor:.3f}\n"
        f"  recall                   {score.recall:8.3f}   floor {score.recall_floor:.3f}\n"
        f"  SVM accuracy             {score.accuracy:8.1%}   floor {score.accuracy_floor:.1%} (held-out real digits)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", type=Path, help="output folder of `sit sample` on a digits run")
    args = parser.parse_args()
    images, labels = load_samples(args.samples)
    print(report(DigitsJudge.default().score(images, labels), str(args.samples), len(images)))


if __name__ == "__main__":
    main()
