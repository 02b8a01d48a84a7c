"""REPA on the digits: does aligning SiT's tokens with a self-supervised encoder speed up training?

1. The encoder. A 4-layer transformers ``Dinov2Model`` (width 64, patch 2: a 4x4 token grid on
   the 8x8 digits, one grey channel) trained *without labels* on scikit-learn's digits for
   ``--encoder-steps`` steps (a few CPU minutes): two augmented views of every image in a batch
   (a random shift of up to 1 pixel, a random contrast scaling, Gaussian pixel noise and 1-3 of the
   16 patches blanked) and the InfoNCE loss (SimCLR's, temperature 0.2) on the mean of the final
   patch tokens through a 2-layer head, so that every patch token is trained. It is saved with
   ``save_pretrained`` (and a ``preprocessor_config.json`` of mean 0.5, std 0.5) and loaded by
   sit's own ``--repa-encoder`` loader. Why it stands in fairly for DINOv2: like DINOv2 it is a ViT
   trained self-supervised for augmentation invariance on the images alone, it never saw a label or
   a generated image, and it is frozen during SiT's training; it is tiny, as the SiT is.
2. SiT-Ti/2 (16 tokens of 2x2 pixels, so the encoder's 4x4 grid matches with no interpolation)
   on the digits, the digits preset otherwise (lr 1e-3, batch 128, EMA 0.995), ``--steps`` steps,
   seeds 0 .. ``--seeds`` - 1, without the term and with it (``--repa-weight`` 0.5, block
   ``--repa-depth`` 2 of 4, projector width 256).
3. Every ``--every`` steps, ``--num`` class-conditional samples of the EMA model (adams, 20 steps,
   the same noise for every run) are judged by ``sitcli.evaluate.digits.DigitsJudge``: the Fréchet
   distance in a digit classifier's features (FD), precision, recall and the SVM accuracy.

Prints mean ± std over the seeds at every checkpoint, the steps each needs to reach the plain runs'
final mean FD, and writes ``ROOT/repa_digits.png`` (FD against steps). Runs already in ``--root``
are reused.

    python examples/repa_digits.py [--root runs/repa] [--steps 2000] [--every 250] [--seeds 3] [--num 500] \
        [--only plain|repa]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sitcli import runs
from sitcli.config import TrainConfig
from sitcli.evaluate.digits import DigitsJudge, real_digits
from sitcli.loading import load_model
from sitcli.training import train
from sitcli.transport import sample_ode

ENCODER = dict(
    image_size=8,
    patch_size=2,
    num_channels=1,
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=128,
)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random view of digits x (B, 1, 8, 8) in [-1, 1]: shift, contrast, noise, blanked patches."""
    b = len(x)
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2, b), generator=g)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8] for i in range(b)])
    out = (out + 1) * (0.7 + 0.6 * torch.rand(b, 1, 1, 1, generator=g)) - 1
    out = out + 0.1 * torch.randn(out.shape, generator=g)
    keep = torch.ones(b, 16)
    for i in range(b):
        keep[i, torch.randperm(16, generator=g)[: int(torch.randint(1, 4, (1,), generator=g))]] = 0
    mask = keep.view(b, 1, 4, 4).repeat_interleave(2, 2).repeat_interleave(2, 3)
    return (out * mask - (1 - mask)).clamp(-1, 1)


def train_encoder(folder: Path, steps: int, seed: int = 0) -> Path:
    """The self-supervised digits encoder (see the module docstring), saved as a transformers folder."""
    if (folder / "config.json").is_file():
        return folder
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    images, _ = real_digits()
    x_all = torch.tensor(images, dtype=torch.float32)[:, None] * 2 - 1
    model = Dinov2Model(Dinov2Config(**ENCODER))
    head = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64))
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-3, weight_decay=0.05)
    for step in range(steps):
        x = x_all[torch.randint(0, len(x_all), (256,), generator=g)]
        views = torch.cat([augment(x, g), augment(x, g)])
        z = F.normalize(head(model(pixel_values=views).last_hidden_state[:, 1:].mean(1)), dim=-1)
        logits = z @ z.T / 0.2
        logits.fill_diagonal_(float("-inf"))
        target = torch.arange(len(z)).roll(len(x))  # view i's positive is view i +- B
        loss = F.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"encoder step {step}: InfoNCE {loss.item():.3f}", flush=True)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5], "image_std": [0.5]}))
    return folder


def trained(root: Path, name: str, seed: int, steps: int, every: int, encoder: Path | None) -> Path:
    out = root / f"{name}-{seed}"
    latest = runs.latest_checkpoint(out)
    if latest is None or int(latest.name) < steps:
        print(f"training {out}", flush=True)
        repa = dict(repa_encoder=[str(encoder)], repa_depth=2, repa_projector_dim=256) if encoder else {}
        cfg = TrainConfig(
            data="digits",
            model="SiT-Ti/2",
            out=str(out),
            steps=steps,
            seed=seed,
            ckpt_every=every,
            sample_every=0,
            **repa,
        )
        train(cfg, resume=latest is not None, progress=False)
    return out


def quality(checkpoint: Path, judge: DigitsJudge, x0: torch.Tensor, y: torch.Tensor) -> tuple[float, ...]:
    loaded = load_model(checkpoint)
    with torch.no_grad():
        x, _ = sample_ode(loaded.transport, loaded.model, x0, "adams", 20, model_kwargs={"y": y})
    grey = ((x.clamp(-1, 1) + 1) * 127.5).round()[:, 0].numpy() / 255.0  # as the PNGs are read back
    s = judge.score(grey, y.numpy())
    return s.fd, s.precision, s.recall, s.accuracy


def first_reaching(steps: list[int], fds: np.ndarray, target: float) -> str:
    """The first checkpoint step of each seed whose FD is at most ``target``, as mean ± std."""
    reached = [next((s for s, f in zip(steps, row) if f <= target), None) for row in fds]
    if any(r is None for r in reached):
        return f"{sum(r is not None for r in reached)}/{len(reached)} seeds reach it: {reached}"
    return f"{np.mean(reached):.0f} ± {np.std(reached):.0f} steps (seeds: {reached})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("runs/repa"))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--num", type=int, default=500)
    parser.add_argument("--encoder-steps", type=int, default=1500)
    parser.add_argument("--only", choices=["plain", "repa"], help="train and score one kind only (two processes)")
    parser.add_argument("--seed-list", type=lambda v: [int(s) for s in v.split(",")], help="with --only: these seeds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.root.mkdir(parents=True, exist_ok=True)
    judge = DigitsJudge.default()
    g = torch.Generator().manual_seed(12345)
    x0, y = torch.randn(args.num, 1, 8, 8, generator=g), torch.arange(args.num) % 10
    steps = list(range(args.every, args.steps + 1, args.every))
    scores = {}  # name -> (seeds, checkpoints, 4)
    for name in ("plain", "repa"):
        if args.only and name != args.only:
            continue
        enc = train_encoder(args.root / "encoder", args.encoder_steps) if name == "repa" else None
        per_seed = []
        for seed in args.seed_list or range(args.seeds):
            run = trained(args.root, name, seed, args.steps, args.every, enc)
            per_seed.append([quality(run / "checkpoints" / f"{s:07d}", judge, x0, y) for s in steps])
            print(f"{name} seed {seed}: FD {per_seed[-1][-1][0]:.2f} at step {steps[-1]}", flush=True)
        scores[name] = np.array(per_seed)

    if args.only:
        return
    floor = judge.score(real_digits()[0][judge.other][: args.num], None)
    print(
        f"\nSiT-Ti/2 on digits, seeds 0..{args.seeds - 1}, {args.num} samples (adams 20), mean ± std over seeds; "
        f"real-vs-real floor: FD {floor.fd_floor:.2f}, precision {floor.precision_floor:.3f}, "
        f"recall {floor.recall_floor:.3f}"
    )
    print(
        "| step | plain FD | REPA FD | plain precision | REPA precision | plain recall | REPA recall | "
        "plain SVM acc. | REPA SVM acc. |"
    )
    print("|---|" + "---|" * 8)
    for k, s in enumerate(steps):
        cells = [f"{scores[n][:, k, m].mean():.3g} ± {scores[n][:, k, m].std():.2g}" for m in range(4) for n in scores]
        print(f"| {s} | " + " | ".join(cells) + " |")
    target = scores["plain"][:, -1, 0].mean()
    print(f"\nsteps to reach the plain runs' final mean FD ({target:.2f}):")
    for name in scores:
        print(f"  {name}: {first_reaching(steps, scores[name][:, :, 0], target)}")
    np.savez(args.root / "repa_digits.npz", steps=np.array(steps), **scores)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing (pip install -e '.[examples]'): no figure")
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, label in (("plain", "SiT-Ti/2"), ("repa", "SiT-Ti/2 + REPA")):
        mean, std = scores[name][:, :, 0].mean(0), scores[name][:, :, 0].std(0)
        ax.plot(steps, mean, marker="o", label=label)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.axhline(floor.fd_floor, color="grey", ls=":", label="real vs real")
    ax.set(
        xlabel="training step",
        ylabel="FD (digit-classifier features)",
        yscale="log",
        title=f"digits, {args.seeds} seeds (mean ± std)",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.root / "repa_digits.png", dpi=120)
    print(f"figure: {args.root / 'repa_digits.png'}")


if __name__ == "__main__":
    main()
