"""A representation autoencoder on the digits, end to end on a CPU: a tiny random DINOv2 (saved to disk) as the
frozen encoder, a tiny ViT decoder trained by `sit train-decoder`, and SiT / DiT^DH models trained in its latent
space and judged as digits, beside a same-budget pixel model.

Everything runs through sit's jobs (``train_decoder``, ``latent_stats``, ``train``, ``sample``), as the commands
would. The digits (8x8) are upsampled to 32 pixels; the encoder is a 2-layer DINOv2 with 4 registers, width 32,
patch 4, with random weights (no pretrained network can be downloaded here), fed 16 pixels: 4 x 4 tokens, so
the latents are 32 x 4 x 4 (512 numbers for a 1,024-pixel image). The decoder is RAE's layout at width 64, 2
layers (``ViT-Ti``), 8-pixel patches, trained on L1 with RAE's noise augmentation (tau 0.8).

1. Decoders (``--decoder-steps``, one per seed): trained on an image folder of the first 1,500 digits (flips on,
   as RAE trains), judged on the other 297 (held out) by L1 (images in [0, 1]) and PSNR, beside the trivial
   decoder that returns the training mean image.
2. Generators (``--steps`` each, batch 128, lr 1e-3, EMA 0.995, the digits' quickstart settings), on the 1,797
   digits at 32 pixels (no flips), per seed:
     pixels      SiT-Ti/8 on the 1 x 32 x 32 pixels (16 tokens)
     rae         SiT-Ti/1 on the RAE latents, normalised per element (``sit latent-stats``; 16 tokens)
     rae-ddt     DiTDH-Ti (RAE's wide head, here 96 wide) on the same latents
     rae-shift   SiT-Ti/1 with RAE's dimension time shift, sqrt(32*4*4/4096) = 0.354 (``--time-shift dimension``;
                 RAE's formula outside its regime: below 1 it moves training times towards the data), not run
                 by default
   all decoded by decoder seed 0. Each draws ``--num`` class-conditional samples (labels 0..9 cycled, the ODE with
   adams 50 steps, the run's own time shift, EMA weights), reduced to 8x8 (``to_8x8``: the inverse of the
   upsampling) and scored by ``sitcli.evaluate.digits`` (Fréchet distance and precision/recall in a digit
   classifier's features, SVM accuracy). Floors: the real digits, and the real digits through the same 32-pixel
   round trip.

Timings are wall seconds of each job in this process, taken in turns, so only their ratios mean anything.

    python examples/rae_digits.py [--root runs/rae-digits] [--seeds 3] [--decoder-steps 600] [--steps 600]
        [--num 898] [--arms pixels,rae,rae-ddt,rae-shift]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sitcli.config import TrainConfig

from sitcli.sample_config import SampleConfig
from sitcli.data import DigitsDataset
from sitcli.evaluate.digits import DigitsJudge, real_digits

IMAGE, PATCH, HELD_OUT = 32, 8, 1500
ARMS = {
    "pixels": dict(model="SiT-Ti/8"),
    "rae": dict(model="SiT-Ti/1", rae=True),
    "rae-shift": dict(model="SiT-Ti/1", rae=True, time_shift="dimension"),
    "rae-ddt": dict(model="DiTDH-Ti", rae=True),
}


def encoder(root: Path) -> Path:
    """The tiny random DINOv2 with registers, saved as a transformers folder (once)."""
    path = root / "dino"
    if not (path / "config.json").is_file():
        from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

        torch.manual_seed(1)
        Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=4,
            image_size=16, num_register_tokens=4)).save_pretrained(path)
    return path


def digit_folders(root: Path) -> tuple[Path, Path]:
    """The 8x8 digits as grey PNGs, one sub-folder per class: the first 1,500 and the other 297."""
    images, labels = real_digits()
    folders = root / "digits-train", root / "digits-heldout"
    if not folders[1].is_dir():
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = folders[i >= HELD_OUT] / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(image * 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return folders


def timed(path: Path, job) -> float:
    """Run ``job`` unless ``path`` records that it ran; its wall seconds."""
    record = path / "seconds.json"
    if not record.is_file():
        start = time.perf_counter()
        if getattr(job(), "interrupted", False):  # Ctrl-C saved a checkpoint: not a finished run
            raise SystemExit(f"{path} was interrupted: remove it and run again")
        path.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"seconds": time.perf_counter() - start}))
    return json.loads(record.read_text())["seconds"]


def folder_tensor(folder: Path) -> torch.Tensor:
    from sitcli.data import ImageFolderDataset

    data = ImageFolderDataset(folder, IMAGE)
    return data.__getitems__([(i, False) for i in range(len(data))])[0]


def to_8x8(images01: np.ndarray) -> np.ndarray:
    """(N, 32, 32) grey levels -> (N, 8, 8): the 8x8 image whose bilinear upsampling (the one that made the
    training digits, ``DigitsDataset(32)``) is nearest in least squares, clipped to [0, 1]. Separable:
    Y ~ U X U^T with U the (32, 8) 1-D upsampling, so X = U^+ Y U^+^T; exact on real digits (the floor row)."""
    basis = torch.eye(8, dtype=torch.float64)[:, None, :]
    up = F.interpolate(basis, size=IMAGE, mode="linear", align_corners=False)[:, 0].T  # (32, 8)
    pinv = torch.linalg.pinv(up).numpy()
    return np.clip(np.einsum("ij,njk,lk->nil", pinv, images01, pinv), 0, 1)


def decoders(root: Path, dino: Path, seeds: int, steps: int) -> tuple[list[Path], list[dict]]:
    from sitcli.autoencoder.decoder_training import l1_loss
    from sitcli.autoencoder.rae import RAE, load_rae_encoder
    from sitcli.latent_space import load_decoder
    from sitcli.training.decoder import DecoderTrainConfig, train_decoder

    train_folder, held_folder = digit_folders(root)
    held, train = folder_tensor(held_folder), folder_tensor(train_folder)
    trivial = train.mean(0, keepdim=True).expand_as(held)
    rae_encoder = load_rae_encoder(dino, IMAGE, PATCH)
    out, rows = [], []
    for seed in range(seeds):
        run = root / f"decoder-{seed}"
        cfg = DecoderTrainConfig(rae_encoder=str(dino), data=str(train_folder), out=str(run), image_size=IMAGE,
                                 rae_patch=PATCH, decoder_size="ViT-Ti", batch_size=64, steps=steps, lr=2e-3,
                                 ema_decay=0.99, seed=seed, log_every=100, ckpt_every=steps, threads=1)
        seconds = timed(run, lambda: train_decoder(cfg, progress=False))
        rae = RAE(rae_encoder, load_decoder(run))
        with torch.no_grad():
            recon = rae.decode(rae.encode(held)).clamp(-1, 1)
        mse = (((recon - held) / 2) ** 2).flatten(1).mean(1)
        rows.append({"l1": l1_loss(recon, held).item(), "psnr": (10 * torch.log10(1 / mse)).mean().item(),
                     "trivial_l1": l1_loss(trivial, held).item(),
                     "trivial_psnr": (10 * torch.log10(1 / (((trivial - held) / 2) ** 2).flatten(1).mean(1))).mean()
                     .item(), "seconds": seconds})
        out.append(run)
    return out, rows


def generators(root: Path, dino: Path, decoder: Path, arms: list[str], seeds: int, steps: int, num: int):
    from sitcli.latent_stats import LatentStatsConfig, latent_stats
    from sitcli.sample import sample
    from sitcli.training import train

    stats = root / "stats.safetensors"
    if not stats.is_file():
        latent_stats(LatentStatsConfig("digits", out=str(stats), rae_encoder=str(dino), rae_patch=PATCH,
                                       image_size=IMAGE), progress=False)
    judge = DigitsJudge.default()
    labels = np.arange(num) % 10
    scores, cost = {a: [] for a in arms}, {a: [] for a in arms}
    for seed in range(seeds):
        for arm in arms:
            spec = dict(ARMS[arm])
            rae = spec.pop("rae", False)
            run = root / f"{arm}-{seed}"
            extra = dict(rae_encoder=str(dino), rae_decoder=str(decoder), latent_stats=str(stats)) if rae else {}
            cfg = TrainConfig(data="digits", image_size=IMAGE, out=str(run), steps=steps, seed=seed, sample_every=0,
                              ckpt_every=steps, log_every=100, **spec, **extra)
            cost[arm].append(timed(run, lambda: train(cfg, progress=False)))
            folder = run / "samples"
            if not (folder / "labels.csv").is_file() or len(list(folder.glob("*.png"))) < num:
                sample(SampleConfig(ckpt=str(run), out=str(folder), num=num, batch_size=300,
                                   class_labels=",".join(map(str, range(10))), threads=1), progress=False)
            images = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float64) / 255
                               for p in sorted(folder.glob("*.png"))[:num]])
            s = judge.score(to_8x8(images), labels)
            scores[arm].append((s.fd, s.precision, s.recall, s.accuracy))
    real = judge.score(judge.images[judge.other[:num]], judge.labels[judge.other[:num]])
    up = DigitsDataset(IMAGE).x[:, 0].numpy()  # the real digits at 32 pixels, back to 8x8
    round_trip = judge.score(to_8x8((up[judge.other[:num]] + 1) / 2), judge.labels[judge.other[:num]])
    return scores, cost, real, round_trip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("runs/rae-digits"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--decoder-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--num", type=int, default=898)
    parser.add_argument("--arms", default="pixels,rae,rae-ddt")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.root.mkdir(parents=True, exist_ok=True)
    dino = encoder(args.root)

    runs_, rows = decoders(args.root, dino, args.seeds, args.decoder_steps)
    print(f"\nDecoders: {args.decoder_steps} steps, batch 64, {args.seeds} seeds; held-out 297 digits at 32 px")
    print("| decoder | L1 (0-1) | PSNR (dB) | training s |")
    print("|---|---|---|---|")
    for key, name in (("", "RAE decoder (ViT-Ti)"), ("trivial_", "mean training image")):
        l1 = [r[f"{key}l1"] for r in rows]
        psnr = [r[f"{key}psnr"] for r in rows]
        secs = f"{np.mean([r['seconds'] for r in rows]):.0f}" if not key else "-"
        print(f"| {name} | {np.mean(l1):.4f} ± {np.std(l1):.4f} | {np.mean(psnr):.2f} ± {np.std(psnr):.2f} | {secs} |")

    arms = [a for a in args.arms.split(",") if a]
    scores, cost, real, round_trip = generators(args.root, dino, runs_[0], arms, args.seeds, args.steps, args.num)
    print(f"\nGenerators: {args.steps} steps each, batch 128, {args.seeds} seeds, {args.num} samples (adams 50, EMA); "
          "mean ± std over seeds")
    print("| model | space | FD (features) | precision | recall | SVM accuracy | training s |")
    print("|---|---|---|---|---|---|---|")
    for arm in arms:
        cells = " | ".join(f"{np.mean(v):.3g} ± {np.std(v):.2g}" for v in zip(*scores[arm]))
        space = "pixels 1x32x32" if arm == "pixels" else "RAE 32x4x4" + (", shift 0.354" if "time_shift" in
                                                                            ARMS[arm] else "")
        print(f"| {arm} ({ARMS[arm]['model']}) | {space} | {cells} | {np.mean(cost[arm]):.0f} |")
    print(f"| real digits (other half) | - | {real.fd_floor:.3g} | {real.precision_floor:.3g} | "
          f"{real.recall_floor:.3g} | {real.accuracy_floor:.3g} | - |")
    s = round_trip
    print(f"| real digits, 8 -> 32 -> 8 px | - | {s.fd:.3g} | {s.precision:.3g} | {s.recall:.3g} | "
          f"{s.accuracy:.3g} | - |")
    if "pixels" in arms:
        for arm in arms:
            ratio = np.array(cost[arm]) / np.array(cost["pixels"])
            print(f"training time {arm} / pixels: {ratio.mean():.2f}x ± {ratio.std():.2f}")


if __name__ == "__main__":
    main()
