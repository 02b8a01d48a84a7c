"""The commands README.md and examples/*.md show, and tiny stand-ins to run them on.

Commands come from the ```bash blocks (continuation lines joined, comments dropped, `&&` chains split)
and from inline code that holds a whole command. ``shrunk`` makes a command's arguments small (steps, images,
image size, model size, loader workers, sampler steps where none are given) with absolute paths under a
folder that ``build_world`` fills with the data, VAE, weights and Inception weights the documents point at.
``NOT_RUN`` names the commands that need a GPU, several nodes or real data, with the reason.
"""

import re
import shlex
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from helpers import random_inception_state, random_sit, tiny_vae

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "examples").glob("*.md"))]
COMMANDS = ("train", "sample", "nll", "fid", "convert", "cache-latents", "methods", "ema", "recipes", "search-solver")
# Commands shown but not run here, by their first words, and why.
NOT_RUN = {
    "torchrun --nnodes=4": "four nodes of 8 GPUs (run on 2 CPU ranks in tests/test_torchrun_commands.py)",
    "torchrun --nnodes=1 --nproc_per_node=8 -m sitcli sample --ckpt /runs/sit-xl2":
        "samples the run of the 32-GPU training above, on 8 GPUs (2 CPU ranks: tests/test_torchrun_commands.py)",
    "sit fid /data/VIRTUAL_imagenet256_labeled.npz": "needs the ADM reference batch (real data) and a GPU",
    "sit fid /data/adm-in256-stats.npz": "needs the statistics of the ADM reference batch, on a GPU",
    "sit fid REF_IMAGES": "a template (upper-case placeholders), not a command",
    "torchrun --nproc_per_node=K": "a template (K, ...), not a command",
    "sit <command>": "a template, not a command",
    "sit train --fused-adamw": "a flag named in prose",
    "sit latent-stats CACHE": "a template (upper-case placeholder), not a command",
    "sit latent-stats DATA": "a template (upper-case placeholder), not a command",
    "torchrun --nnodes=8": "eight nodes of 8 GPUs (the same flags on the digits: examples/rae_digits.py)",
    "torchrun --nproc_per_node=8 -m sitcli sample --ckpt /runs/ditdh-xl": "samples the 64-GPU run above",
    "torchrun --nproc_per_node=8 -m sitcli train-decoder":
        "a ViT-XL decoder with LPIPS and rFID on ImageNet (these flags on stand-ins: tests/test_train_decoder.py)",
    "sit fid --fast": "a flag named in prose",
    "sit train --init-from SiT-XL-2-256x256.pt": "fine-tunes the released SiT-XL/2 on ImageNet latents (the same flags "
                                                 "on the digits just above)",
    "sit search-solver --ckpt RUN": "a template (upper-case placeholders), not a command",
    "sit sample --method searched --solver FILE": "a template (upper-case placeholder), not a command",
}


def documented_commands(path: Path) -> list[str]:
    """The commands of one document, in order."""
    text = path.read_text()
    found = []
    for kind, body in _spans(text):
        for line in body.replace("\\\n", " ").splitlines() if kind == "block" else [body]:
            line = re.sub(r"\s+#.*$", "", line).strip()
            for part in line.split("&&"):
                part = " ".join(part.split())
                if kind == "inline" and len(part.split()) < 3:
                    continue  # the name of a command in prose (`sit fid`), not a command
                if part.startswith("sit ") or (part.startswith("torchrun ") and " -m sitcli " in part + " "):
                    found.append(part)
    return found


def _spans(text: str):
    """("block", body) for each bash code block and ("inline", code) for inline code outside blocks, in order."""
    for match in re.finditer(r"```(\w*)\n(.*?)```|`([^`\n]+)`", text, re.S):
        if match.group(3) is not None:
            yield "inline", match.group(3)
        elif match.group(1) in ("bash", "sh", ""):
            yield "block", match.group(2)


def not_run(command: str) -> str | None:
    if "--device cuda" in command:
        return "needs a GPU (--device cuda)"
    if command.endswith("...") or " ... " in command:
        return "elided (...) in prose: the full command is shown beside it"
    return next((why for start, why in NOT_RUN.items() if command.startswith(start)), None)


def shrunk(command: str, world: Path) -> list[str]:
    """The argument list `sit` is called with: sizes shrunk, absolute paths under ``world``."""
    words = shlex.split(command)
    if words[0] == "torchrun":  # one node: the same job in one process
        words = words[words.index("sitcli") + 1 :]
    else:
        words = words[1:]
    job, args = words[0], words[1:]
    small = {"--num": 2 if job == "nll" else 10, "--batch-size": 8, "--steps": 5, "--image-size": 16,
             "--ema-snapshots-every": 1, "--samples": 8, "--iterations": 3}
    small["--num-samples"] = small["--num"]
    out = []
    for i, word in enumerate(args):
        flag = args[i - 1] if i else None
        if flag in small and word.isdigit():
            word = str(min(int(word), small[flag]))
        elif flag == "--model" and word.startswith("SiT-"):
            word = "SiT-Ti/1" if word.endswith("/1") else "SiT-Ti/2"
        elif flag == "--model" and word.startswith("DiTDH-"):
            word = "DiTDH-Ti"
        elif flag == "--decoder-size":
            word = "ViT-Ti"
        elif word.startswith("/"):
            word = str(world / word.lstrip("/"))
        out.append(word)
    if job == "train":
        steps = "4" if "--resume" in out or "--ema-snapshots-every" in out else "2"  # 4 snapshot steps: sit ema fits
        if "--epochs" in out:  # a recipe's epochs of ImageNet: steps here
            del out[out.index("--epochs") : out.index("--epochs") + 2]
        if "--steps" in out:
            out[out.index("--steps") + 1] = steps
        else:
            out += ["--steps", steps]
        if "--out" not in out and "--resume" not in out and (world / "runs" / "digits").exists():
            out += ["--out", str(world / "runs" / f"extra-{len(list(world.glob('runs/extra-*')))}")]
        defaults = {"--batch-size": "8", "--ckpt-every": "2", "--sample-every": "0", "--log-every": "1"}
        if "--resume" not in out:
            defaults["--num-workers"] = "0"
        out += [x for flag, value in defaults.items() if flag not in out for x in (flag, value)]
    if job == "sample" and "--steps" not in out and "searched" not in out:  # a searched solver brings its steps
        out += ["--steps", "10"]
    if job == "search-solver":
        out += [x for flag, value in {"--samples": "8", "--iterations": "3"}.items() if flag not in out
                for x in (flag, value)]
    if job == "cache-latents" and "--num-workers" not in out:
        out += ["--num-workers", "0"]
    if job == "train-decoder":
        for flag in ("--epochs", "--steps"):
            if flag in out:
                del out[out.index(flag) : out.index(flag) + 2]
        out += ["--steps", "2", "--threads", "1"] + ([] if "--batch-size" in out else ["--batch-size", "4"])
    return [job, *out]


def build_world(world: Path) -> None:
    """The data, VAE, weights and Inception weights the documents point at, tiny."""
    tiny_vae(world / "models" / "sd-vae-ft-ema")
    rng = np.random.default_rng(0)
    for folder in ("data/my-images", "data/imagenet/train", "ref_images"):
        for name in ("a", "b"):
            (world / folder / name).mkdir(parents=True)
            for k in range(5):  # 10 images: enough for the Inception Score's 10 splits
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                    world / folder / name / f"{k}.png"
                )
    # Official-looking SiT and DiT weights: latent 8x8x4 (the stand-in VAE's), 1000 classes.
    for name, seed in (("SiT-XL-2-256x256.pt", 0), ("DiT-XL-2-256x256.pt", 1)):
        model = random_sit(seed, input_size=8, in_channels=4, hidden_size=96, depth=4, num_heads=4, num_classes=1000)
        torch.save(model.state_dict(), world / name)
    rae_stand_ins(world)
    hub = world / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(random_inception_state(), hub / "pt_inception-2015-12-05-6726825d.pth")


def rae_stand_ins(world: Path) -> None:
    """The RAE files the documents name, for 16-pixel images: a 2-layer DINOv2 with registers (patch 4, so a 16
    pixel image with RAE's 16-pixel decoder patches is one 32-wide token), RAE's decoder and statistics, a
    DiT^DH-Ti as RAE's stage-2 files, and an f16 VAE with 32 latent channels; plus the image folder."""
    from diffusers import AutoencoderKL

    from helpers import dinov2_folder, image_folder
    from sitcli.autoencoder.rae_decoder import RAEDecoder, decoder_config
    from sitcli.ddt import DDT_models

    image_folder(world / "data" / "imgs", per_class=5, size=(16, 16))
    image_folder(world / "data" / "imagenet" / "val", per_class=3, size=(16, 16))
    dinov2_folder(world / "models" / "dinov2-reg-base", registers=4)
    (world / "models" / "rae").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(RAEDecoder(decoder_config("ViT-Ti", 32, 1, 16)).state_dict(), world / "models" / "rae" / "decoder.pt")
    stats = {"mean": torch.randn(32, 1, 1) * 0.1, "var": torch.rand(32, 1, 1) + 0.5}  # RAE's stat.pt layout
    torch.save(stats, world / "models" / "rae" / "stat.pt")
    ddt = DDT_models["DiTDH-Ti"](input_size=1, in_channels=32, num_classes=1000)
    from torchvision.models.vgg import cfgs, make_layers

    (world / "models" / "lpips").mkdir()  # random VGG16 features and LPIPS heads, in their files' layouts
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()},
               world / "models" / "lpips" / "vgg16-397923af.pth")
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) * 0.1 for k, c in enumerate((64, 128, 256, 512, 512))},
               world / "models" / "lpips" / "vgg.pth")
    torch.save(random_inception_state(), world / "models" / "pt_inception-2015-12-05-6726825d.pth")
    for path in (world / "stage2_model.pt", world / "models" / "rae" / "DiTDH-XL.pt"):
        torch.save({"ema": ddt.state_dict()}, path)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 5,
                  up_block_types=("UpDecoderBlock2D",) * 5, block_out_channels=(8,) * 5, layers_per_block=1,
                  latent_channels=32, norm_num_groups=4, sample_size=32).save_pretrained(world / "models" /
                                                                                         "f16c32-vae")
