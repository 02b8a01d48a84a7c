"""Benchmark, not a test: what REPA's alignment term adds to a training step.

    python examples/benchmarks/repa_cost.py [--model SiT-B/2] [--encoder base] [--batch-size 4] [--iters 4]
        [--device cpu] [--precision fp32|bf16]

Two variants take turns step by step in one process (one model each, same weights), so that a
change in the machine's load hits both alike: ``plain``, sit's training step on 32x32x4 latents
(``training.loop.step_loss`` + ``step_update``), and ``repa``, the same with the alignment term
(projector of width 2048, REPA's depth for the model) against a DINOv2-shaped ViT/14 encoder at
224 pixels (random weights of timm's ``vit_{size}_patch14_dinov2``: the cost does not depend on
the values), fed 256-pixel images as a VAE-encoded run would feed it; and ``cached``, the same
term reading the encoder's features from a latent cache (``sit cache-latents --repa-encoder``):
float16 rows of the batch gathered from an in-memory array of 4 x batch images and cast to float32, as
``LatentDataset`` does from its memory-mapped file (the disk read itself is not timed). Printed: the
median step time of each, their ratios to plain, and the encoder's forward alone as a share of the
repa step: the encoder's cost per step with and without cached features.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="SiT-B/2")
    ap.add_argument("--encoder", default="base", choices=["small", "base", "large"])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    args = ap.parse_args()

    import timm

    from sitcli.config import TrainConfig
    from sitcli.encoders import TimmEncoder
    from sitcli.runtime import autocast
    from sitcli.training.loop import step_loss, step_update
    from sitcli.training.losses import loss_terms
    from sitcli.training.presets import apply_presets

    dev = torch.device(args.device)
    module = timm.create_model(f"vit_{args.encoder}_patch14_dinov2", pretrained=False, num_classes=0, img_size=224,
                               dynamic_img_size=True)
    encoder = TimmEncoder(module, "random", 14, module.embed_dim, None).to(dev)
    cfg = apply_presets(TrainConfig(data="imagenet", model=args.model, repa_encoder=["random"]))
    cfg.in_channels, cfg.input_size, cfg.num_classes = 4, 32, 1000
    variants = {}
    for name, encoders in (("plain", []), ("repa", [encoder]), ("cached", [encoder])):
        torch.manual_seed(0)
        model = cfg.new_model(tuple(e.width for e in encoders)).to(dev)
        ema = cfg.new_model(tuple(e.width for e in encoders)).to(dev).requires_grad_(False)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        transport = cfg.transport()
        variants[name] = (model, ema, opt, transport, loss_terms(cfg, transport, model, encoders), [])
    x = torch.randn(args.batch_size, 4, 32, 32, device=dev)
    pixels = torch.rand(args.batch_size, 3, 256, 256, device=dev) * 2 - 1
    y = torch.randint(0, 1000, (args.batch_size,), device=dev)
    store = encoder.features(pixels.repeat(4, 1, 1, 1), 16).half().cpu().numpy()  # what a cache holds (N, 256, D)
    rows = torch.randperm(len(store))[: args.batch_size].numpy()
    precision = autocast(dev, args.precision)
    encoder_times = []

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for it in range(args.iters + 1):
        for name, (model, ema, opt, transport, terms, times) in variants.items():
            sync()
            start = time.perf_counter()
            features = None
            if name == "cached":
                features = [torch.from_numpy(np.ascontiguousarray(store[rows])).float().to(dev)]
            loss, _ = step_loss(model, transport, terms, x, y, None, precision, pixels, features)
            step_update(loss, model, ema, opt, 0.9999)
            sync()
            if it:
                times.append(time.perf_counter() - start)
        sync()
        start = time.perf_counter()
        with precision:
            encoder.features(pixels, 16)
        sync()
        if it:
            encoder_times.append(time.perf_counter() - start)
    plain, repa, cached = (statistics.median(variants[k][-1]) for k in ("plain", "repa", "cached"))
    enc = statistics.median(encoder_times)
    print(f"{args.model}, DINOv2-{args.encoder[0].upper()}/14 at 224, batch {args.batch_size}, {args.precision}, {dev}")
    print(f"plain step {plain * 1e3:.0f} ms | repa step {repa * 1e3:.0f} ms ({repa / plain:.2f}x) | "
          f"repa on cached features {cached * 1e3:.0f} ms ({cached / plain:.2f}x) | "
          f"encoder forward {enc * 1e3:.0f} ms = {enc / repa:.0%} of the repa step")


if __name__ == "__main__":
    main()
