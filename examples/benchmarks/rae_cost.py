"""Benchmark, not a test: the cost of RAE latents against SD-VAE latents, as ratios measured side by side.

    python examples/benchmarks/rae_cost.py [--size S] [--decoder ViT-XL] [--batch-size 1] [--iters 2]
        [--steps 50] [--device cpu] [--precision fp32|bf16]

256-pixel images, two latent spaces, each with the backbone the field trains in it:
    sd-vae   4 x 32 x 32 latents (Stable Diffusion's AutoencoderKL shape), SiT-{size}/2: 256 tokens
    rae      768 x 16 x 16 latents (DINOv2-B with registers at 224 pixels), DiTDH-{size}: 256 tokens
and, to tell the latent space's own cost from the wide head's, ``rae-sit``: SiT-{size}/1 on the RAE
latents (the same 256 tokens and trunk as sd-vae's; only its input and output layers are wider).
Random weights throughout (the cost does not depend on the values). Timed, alternating between the
two spaces step by step so that a change in the machine's load hits both alike, median of ``iters``:
    train step   sit's Transport loss (linear, velocity; RAE's dimension shift for rae) + backward + AdamW,
                 on latents already encoded (a cache)
    encode       one batch of images -> latents (the VAE's encoder; DINOv2-B), for training on the fly
    model NFE    one forward pass of the backbone without gradient (a sample costs ``steps`` of them)
    decode       latents -> images (the VAE's decoder; RAE's ViT decoder)
    per sample   steps x NFE + decode, per image
and the bytes a latent cache holds per image (float16, the image and its mirror image).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="S", choices=["S", "XL"], help="backbone size (DiT^DH exists in S and XL)")
    ap.add_argument("--decoder", default="ViT-XL", help="RAE decoder size (RAE releases ViT-XL)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50, help="sampling steps (NFE) per sample")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = ap.parse_args()

    from diffusers import AutoencoderKL
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from sitcli.autoencoder.kl import KLAutoencoder
    from sitcli.autoencoder.rae import RAE, RAEEncoder
    from sitcli.autoencoder.rae_decoder import RAEDecoder, decoder_config
    from sitcli.ddt import DDT_models
    from sitcli.encoders import TransformersEncoder
    from sitcli.models import SiT_models
    from sitcli.runtime import autocast
    from sitcli.transport import Transport
    from sitcli.transport.time_grids import dimension_time_shift

    dev, b = torch.device(args.device), args.batch_size
    torch.manual_seed(0)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        sample_size=256).eval().requires_grad_(False)
    dino = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=14,
        image_size=518, num_register_tokens=4))
    encoder = RAEEncoder(TransformersEncoder(dino, "random DINOv2-B", 14, 768, None), 224)
    rae = RAE(encoder, RAEDecoder(decoder_config(args.decoder, 768, 256, 16)).eval().requires_grad_(False)).to(dev)
    spaces = {
        "sd-vae": dict(ae=KLAutoencoder(vae.to(dev)), shape=(4, 32, 32), shift=1.0,
                       model=SiT_models[f"SiT-{args.size}/2"](input_size=32, in_channels=4, learn_sigma=False)),
        "rae": dict(ae=rae, shape=(768, 16, 16), shift=dimension_time_shift((768, 16, 16)),
                    model=DDT_models[f"DiTDH-{args.size}"](input_size=16, in_channels=768)),
        "rae-sit": dict(ae=rae, shape=(768, 16, 16), shift=dimension_time_shift((768, 16, 16)),
                        model=SiT_models[f"SiT-{args.size}/1"](input_size=16, in_channels=768, learn_sigma=False)),
    }
    precision = autocast(dev, args.precision)
    images = torch.rand(b, 3, 256, 256, device=dev) * 2 - 1
    y = torch.randint(0, 1000, (b,), device=dev)
    for space in spaces.values():
        space["model"].to(dev)
        space["opt"] = torch.optim.AdamW(space["model"].parameters(), lr=1e-4)
        space["transport"] = Transport("linear", "velocity", time_shift=space["shift"])
        space["x"] = torch.randn(b, *space["shape"], device=dev)
        space["times"] = {k: [] for k in ("train step", "encode", "model NFE", "decode")}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    def train_step(s):
        s["opt"].zero_grad(set_to_none=True)
        with precision:
            loss = s["transport"].training_loss(s["model"], s["x"], {"y": y}).mean()
        loss.backward()
        s["opt"].step()

    def nfe(s):
        with torch.no_grad(), precision:
            s["model"](s["x"], torch.full((b,), 0.5, device=dev), y)

    def coded(s, name):
        with torch.no_grad(), precision:
            s["ae"].encode(images) if name == "encode" else s["ae"].decode(s["x"])

    for it in range(args.iters + 1):
        for s in spaces.values():
            for name in s["times"]:
                fn = {"train step": train_step, "model NFE": nfe}.get(name, lambda s: coded(s, name))
                seconds = timed(lambda: fn(s))
                if it:  # the first round warms up
                    s["times"][name].append(seconds)

    med = {name: {k: statistics.median(v) for k, v in s["times"].items()} for name, s in spaces.items()}
    for name in med:
        med[name]["per sample"] = (args.steps * med[name]["model NFE"] + med[name]["decode"]) / b
    print(f"256 images, batch {b}, {args.precision}, {dev}; SiT-{args.size}/2 on SD-VAE latents vs DiTDH-{args.size} "
          f"on RAE latents (DINOv2-B, {args.decoder} decoder); {args.steps} steps per sample; median of {args.iters}")
    print(f"| measure | sd-vae, SiT-{args.size}/2 (ms) | rae, DiTDH-{args.size} (ms) | ratio | "
          f"rae, SiT-{args.size}/1 (ms) | ratio |")
    print("|---|---|---|---|---|---|")
    for key in ("train step", "encode", "model NFE", "decode", "per sample"):
        a, r, q = (med[k][key] * 1e3 for k in ("sd-vae", "rae", "rae-sit"))
        print(f"| {key} | {a:.0f} | {r:.0f} | {r / a:.2f} | {q:.0f} | {q / a:.2f} |")
    cache = {name: 2 * 2 * torch.Size(s["shape"]).numel() for name, s in spaces.items()}
    print(f"| cache bytes per image (float16, with mirror) | {cache['sd-vae']} | {cache['rae']} | "
          f"{cache['rae'] / cache['sd-vae']:.0f} | {cache['rae-sit']} | {cache['rae-sit'] / cache['sd-vae']:.0f} |")
    params = {name: sum(p.numel() for p in s["model"].parameters()) / 1e6 for name, s in spaces.items()}
    print(f"backbone parameters: SiT-{args.size}/2 {params['sd-vae']:.0f}M, DiTDH-{args.size} {params['rae']:.0f}M, "
          f"SiT-{args.size}/1 on 768 channels {params['rae-sit']:.0f}M")


if __name__ == "__main__":
    main()
