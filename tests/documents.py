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
    "sit fid --fast": "a flag named in prose",
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
            word = "SiT-Ti/2"
        elif word.startswith("/"):
            word = str(world / word.lstrip("/"))
        out.append(word)
    if job == "train":
        steps = "4" if "--resume" in out or "--ema-snapshots-every" in out else "2"  # 4 snapshot steps: sit ema fits
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
    hub = world / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(random_inception_state(), hub / "pt_inception-2015-12-05-6726825d.pth")
