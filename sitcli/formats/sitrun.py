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

from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from sitcli import runs
from sitcli.config import EXTERNAL, TrainConfig, model_form
from sitcli.errors import InputError
from sitcli.formats import DIT_TRANSPORT, SIT_DEFAULT_TRANSPORT, Checkpoint
from sitcli.formats.architecture import (
    FEWSTEP_KEYS,
    assumed_latent_space,
    backbone,
    ddt_head,
    heads_from_model_name,
    infer_architecture,
    is_fewstep,
    registry_name,
)
from sitcli.formats.rae import ddt_architecture, is_ddt
from sitcli.models import SIZES

TRANSPORT_KEYS = ("interpolant", "prediction", "loss_weight", "train_eps", "sample_eps", "num_timesteps")


def is_sit_source(path: Path) -> bool:
    """A run folder, a checkpoint folder of one, or a .safetensors file."""
    if path.is_file():
        return path.suffix == ".safetensors"
    return runs.is_run(path) or any((path / name).is_file() for name in runs.WEIGHT_FILES)


def read_sit(path: Path, num_heads: int | None = None) -> Checkpoint:
    """Both weight sets of a run's newest checkpoint (or of the given checkpoint folder or file)."""
    config, folder, files = {}, None, {}
    if path.is_file():  # e.g. RUN/checkpoints/0001000/ema.safetensors
        weight_set = "model" if path.name == runs.WEIGHT_FILES[0] else "ema"
        weights, files = {weight_set: _load(path)}, {weight_set: str(path)}
        run = path.parents[2] if len(path.parents) > 2 and runs.is_run(path.parents[2]) else None
    elif runs.is_run(path):
        folder, run = _newest_intact(path), path
    else:
        folder, run = path, path.parent.parent if runs.is_run(path.parent.parent) else None
        problem = runs.checkpoint_problem(path) if path.name.isdigit() and run is not None else None
        if problem is not None:
            raise InputError(f"checkpoint {path} is damaged ({problem}); pass another checkpoint of {run}")
    if folder is not None:
        names = [name for name in runs.WEIGHT_FILES if (folder / name).is_file()]
        weights = {name.split(".")[0]: _load(folder / name) for name in names}
        files = {name.split(".")[0]: str(folder / name) for name in names}
        if not weights:
            raise InputError(f"{folder} holds no {' or '.join(runs.WEIGHT_FILES)}: it is not a sit checkpoint")
    if run is not None:
        config = runs.read_config(run)
    if num_heads is None:
        num_heads = heads_from_model_name(config.get("model"))
    first = next(iter(weights.values()))
    if is_ddt(first):  # a DiT^DH run (sitcli.ddt): RAE's names
        arch = ddt_architecture(first, head_depth=config.get("head_depth"), where=str(path))
    else:
        arch = infer_architecture(first, num_heads, where=str(path))
    if config.get("class_dropout_prob") is not None:
        arch["class_dropout_prob"] = float(config["class_dropout_prob"])
    kind = "dit" if config.get("interpolant") == DIT_TRANSPORT["interpolant"] else "sit"
    if kind == "dit":
        transport = dict(DIT_TRANSPORT)
    else:
        transport = {k: config[k] for k in TRANSPORT_KEYS if config.get(k) is not None} or dict(SIT_DEFAULT_TRANSPORT)
    extra = {k: config[k] for k in ("vae", "latent_scale", "image_size") if config.get(k) is not None}
    if config.get("time_shift") not in (None, 1.0):
        extra["time_shift"] = config["time_shift"]
    if config.get("dmf_depth") is not None:  # DMF's form is not in the weights: the run records it
        arch["dmf_depth"] = int(config["dmf_depth"])
    if run is not None:
        objective = config.get("objective", "flow")
        want = model_form(objective, config.get("dmf_depth"), bool(config.get("omega_input")),
                          config.get("velocity_head_depth"))
        have = {k: arch[k] for k in FEWSTEP_KEYS if k in arch}
        if want != have:
            raise InputError(
                f"{path}: the weights' few-step parts ({have or 'none'}) are not those config.json describes "
                f"(objective={objective}: {want or 'none'}); the run folder was changed by hand"
            )
    return Checkpoint(
        weights,
        arch,
        kind,
        transport,
        source=f"{path} (sit)",
        format="sit",
        extra=extra,
        transport_assumed=run is None,
        run_config=config if run is not None else None,
        files=files,
    )


def _newest_intact(run: Path) -> Path:
    """The newest checkpoint of ``run``, refused when it is damaged: images from an older one would differ
    from what the user asked for, so the message names the newest intact one instead of taking it."""
    folder, damaged = runs.newest_checkpoint(run)
    if damaged:
        path, problem = damaged[0]
        older = f"sample the newest intact one with --ckpt {folder}" if folder else "no older checkpoint is intact"
        raise InputError(f"the newest checkpoint of {run}, {path}, is damaged ({problem}); {older}")
    if folder is None:
        raise InputError(f"run {run} has no complete checkpoint yet; wait for one (--ckpt-every) or train longer")
    return folder


def run_config(ckpt: Checkpoint, source: str) -> dict[str, Any]:
    """config.json for a converted run: a TrainConfig that rebuilds exactly this model and transport."""
    arch, model = ckpt.arch, registry_name(ckpt.arch)
    ddt = "head_width" in arch
    if model is None and ddt:
        raise InputError(f"{source}: a sit run names its model from the table, and this DiT^DH's trunk (depth "
                         f"{arch['depth']}, hidden {arch['hidden_size']}, heads {arch['num_heads']}) is none of "
                         "DiTDH-XL, -S, -Ti: convert --to rae instead")
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
    image_size, latent_scale = assumed_latent_space(arch["in_channels"], arch["input_size"])
    cfg = TrainConfig(
        data=EXTERNAL,
        out=None,
        model=model,
        image_size=ckpt.extra.get("image_size") or image_size,
        vae=ckpt.extra.get("vae"),
        class_dropout_prob=arch.get("class_dropout_prob", 0.1),
        learn_sigma=arch.get("learn_sigma", False),
        in_channels=arch["in_channels"],
        input_size=arch["input_size"],
        num_classes=arch["num_classes"],
        latent_scale=ckpt.extra.get("latent_scale") or latent_scale,
        steps=0,
        time_shift=ckpt.extra.get("time_shift", 1.0),
        **(ddt_head(arch) if ddt else {}),
        **_fewstep_settings(ckpt),
        **transport,
    )
    return cfg.to_dict()


def _fewstep_settings(ckpt: Checkpoint) -> dict[str, Any]:
    """The objective and model form a converted run records: its source run's objective where it has one, else the
    one its form implies (iMF's parts: imf; DMF's form: dmf; an r embedder: meanflow)."""
    arch = ckpt.arch
    if not is_fewstep(arch):
        return {}
    objective = (ckpt.run_config or {}).get("objective")
    if objective in (None, "flow"):
        fewstep = arch.get("omega_input") or arch.get("velocity_head_depth")
        objective = "imf" if fewstep else "dmf" if arch.get("dmf_depth") is not None else "meanflow"
    return dict(objective=objective, dmf_depth=arch.get("dmf_depth"), omega_input=bool(arch.get("omega_input")),
                velocity_head_depth=arch.get("velocity_head_depth"))


def write_sit(ckpt: Checkpoint, path: Path) -> None:
    """Write a new run folder at ``path`` (a fresh path: the caller stages and renames it).

    Both weight sets are kept when the source has both; a single set is written as both model and
    EMA weights (sampling reads EMA), so a run needs no choice of ``--use``.
    """
    config = run_config(ckpt, str(path))
    ema = ckpt.state_dict(ema=True)
    model = ckpt.weights.get("model", ema)
    state = {"step": 0, "converted_from": ckpt.source}
    runs.save_checkpoint(path, 0, model, ema, optimizer={}, rng={}, state=state)
    runs.write_config(path, config)


def _load(path: Path):
    try:
        return backbone(load_file(path))  # a REPA-trained run's projectors stay behind
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise InputError(f"{path} is not a readable safetensors file ({err}): check the path") from None
