"""sit run folders (``config.json`` + ``checkpoints/NNNNNNN/*.safetensors``) as a conversion format.

Read: a run folder (its newest complete checkpoint), a checkpoint folder inside one, or a bare
``.safetensors`` weights file. Written: a new run folder whose ``config.json`` is a ``TrainConfig``
(``data="external"``) and whose step-0 checkpoint holds the converted weights, so ``sit sample
--ckpt RUN`` needs no flags. A DiT checkpoint is recorded as ``interpolant="ddpm"``,
``prediction="noise"`` (see ``sitcli.transport.ddpm``).

Run configs name their architecture by registry key (``SiT-XL/2``), so only architectures of the
configuration table can become runs; any other is refused with the alternatives.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from sitcli import checkpoint
from sitcli.errors import InputError
from sitcli.formats import DIT_TRANSPORT, SIT_DEFAULT_TRANSPORT, Checkpoint, heads_from_model_name, infer_architecture
from sitcli.models import SIZES

TRANSPORT_KEYS = ("interpolant", "prediction", "loss_weight", "train_eps", "sample_eps", "num_timesteps")


def is_sit_source(path: Path) -> bool:
    """A run folder, a checkpoint folder of one, or a .safetensors file."""
    if path.is_file():
        return path.suffix == ".safetensors"
    return checkpoint.is_run(path) or any((path / name).is_file() for name in checkpoint.WEIGHT_FILES)


def read_sit(path: Path, num_heads: int | None = None) -> Checkpoint:
    """Both weight sets of a run's newest checkpoint (or of the given checkpoint folder or file)."""
    config, folder = {}, None
    if path.is_file():  # e.g. RUN/checkpoints/0001000/ema.safetensors
        weights = {"model" if path.name == checkpoint.WEIGHT_FILES[0] else "ema": _load(path)}
        run = path.parents[2] if len(path.parents) > 2 and checkpoint.is_run(path.parents[2]) else None
    elif checkpoint.is_run(path):
        folder, run = checkpoint.latest_checkpoint(path), path
        if folder is None:
            raise InputError(f"run {path} has no complete checkpoint yet: convert a checkpoint folder or train longer")
    else:
        folder, run = path, path.parent.parent if checkpoint.is_run(path.parent.parent) else None
    if folder is not None:
        names = [name for name in checkpoint.WEIGHT_FILES if (folder / name).is_file()]
        weights = {name.split(".")[0]: _load(folder / name) for name in names}
        if not weights:
            raise InputError(f"{folder} holds no {' or '.join(checkpoint.WEIGHT_FILES)}: it is not a sit checkpoint")
    if run is not None:
        config = checkpoint.read_config(run)
    if num_heads is None:
        num_heads = heads_from_model_name(config.get("model"))
    first = next(iter(weights.values()))
    arch = infer_architecture(first, num_heads, where=str(path))
    if config.get("class_dropout_prob") is not None:
        arch["class_dropout_prob"] = float(config["class_dropout_prob"])
    kind = "dit" if config.get("interpolant") == DIT_TRANSPORT["interpolant"] else "sit"
    if kind == "dit":
        transport = dict(DIT_TRANSPORT)
    else:
        transport = {k: config[k] for k in TRANSPORT_KEYS if config.get(k) is not None} or dict(SIT_DEFAULT_TRANSPORT)
    extra = {k: config[k] for k in ("vae", "latent_scale", "image_size") if config.get(k) is not None}
    return Checkpoint(weights, arch, kind, transport, source=f"{path} (sit)", format="sit", extra=extra)


def registry_name(arch: dict[str, Any]) -> str | None:
    """The ``SiT_models`` key of an architecture, or None when the table has no such model."""
    for size, (depth, hidden, heads) in SIZES.items():
        if (arch["depth"], arch["hidden_size"], arch["num_heads"]) == (depth, hidden, heads) and arch["mlp_ratio"] == 4:
            if arch["patch_size"] in (2, 4, 8):
                return f"SiT-{size}/{arch['patch_size']}"
    return None


def run_config(ckpt: Checkpoint, source: str) -> dict[str, Any]:
    """config.json for a converted run: a TrainConfig that rebuilds exactly this model and transport."""
    from sitcli.train import TrainConfig  # the run format is owned by the trainer

    arch, model = ckpt.arch, registry_name(ckpt.arch)
    if model is None:
        sizes = ", ".join(f"{k} = depth {d}, hidden {h}, heads {n}" for k, (d, h, n) in SIZES.items())
        raise InputError(
            f"{source}: a sit run names its model from the table ({sizes}; patch 2, 4 or 8, mlp ratio 4), and this "
            f"one (depth {arch['depth']}, hidden {arch['hidden_size']}, heads {arch['num_heads']}, patch "
            f"{arch['patch_size']}) is not in it: convert --to official or --to diffusers instead"
        )
    if ckpt.kind == "dit":
        transport = {"interpolant": DIT_TRANSPORT["interpolant"], "prediction": DIT_TRANSPORT["prediction"]}
    else:
        transport = {k: v for k, v in ckpt.transport.items() if k in TRANSPORT_KEYS}
    latent = arch["in_channels"] == 4
    cfg = TrainConfig(
        data="external",
        out=None,
        model=model,
        image_size=ckpt.extra.get("image_size") or arch["input_size"] * (8 if latent else 1),
        vae=ckpt.extra.get("vae"),
        class_dropout_prob=arch.get("class_dropout_prob", 0.1),
        learn_sigma=arch["learn_sigma"],
        in_channels=arch["in_channels"],
        input_size=arch["input_size"],
        num_classes=arch["num_classes"],
        latent_scale=ckpt.extra.get("latent_scale") or (0.18215 if latent else None),
        steps=0,
        **transport,
    )
    config = asdict(cfg)
    config["out"] = None  # filled by whoever trains on from it
    return config


def write_sit(ckpt: Checkpoint, path: Path) -> None:
    """Write a new run folder at ``path`` (a fresh path: the caller stages and renames it).

    Both weight sets are kept when the source has both; a single set is written as both model and
    EMA weights (sampling reads EMA), so a run needs no choice of ``--use``.
    """
    config = run_config(ckpt, str(path))
    ema = ckpt.state_dict("ema")
    model = ckpt.weights.get("model", ema)
    state = {"step": 0, "converted_from": ckpt.source}
    checkpoint.save_checkpoint(path, 0, model, ema, optimizer={}, rng={}, state=state)
    (path / checkpoint.CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def _load(path: Path):
    try:
        return load_file(path)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise InputError(f"{path} is not a readable safetensors file ({err}): check the path") from None
