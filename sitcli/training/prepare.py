"""Everything a training run needs before its first step, checked before anything is written.

``prepare`` applies the presets, checks every setting and the output folder, opens the data (and
the VAE), then writes ``config.json`` and builds model, EMA, optimiser and RNG streams, restoring
them from the newest checkpoint when resuming.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from sitcli import atomic, distributed, runs
from sitcli.autoencoder.files import load_normalization
from sitcli.config import EXTERNAL, RESUMABLE, TrainConfig, parse_time_shift
from sitcli.data import DIGITS, batches, check_batch_size, is_latent_cache, open_dataset
from sitcli.ddt import DDT_models
from sitcli.encoders import encoder_identity
from sitcli.errors import InputError
from sitcli.latent_space import STATS_COMMAND, identity, require_statistics, statistics_identity
from sitcli.locks import LOCK
from sitcli.models import model_shape
from sitcli.runtime import check_device_precision, compiled
from sitcli.seeds import check_balanced
from sitcli.session import Session
from sitcli.training.init_from import check_source, init_from_flow, read_source
from sitcli.training.loggers import Logger, check_log, open_loggers
from sitcli.training.losses import LossTerm, loss_terms
from sitcli.training.posthoc_ema import PowerFunctionEMA
from sitcli.training.presets import apply_presets
from sitcli.training.reports import EVAL_LOG, TrainingPreview, truncate_log, write_best
from sitcli.training.state import restore_rng_state
from sitcli.transport import Transport
from sitcli.transport.time_grids import describe_time_shift


@dataclass
class Prepared:
    """A run ready to step: what the loop reads and updates."""

    cfg: TrainConfig
    run: Path
    dist: distributed.Dist
    dataset: object
    data: object  # iterator of per-rank (x, y) batches, positioned at ``step``
    vae: object | None  # encodes pixel batches on the fly (None: the data is already what the model sees)
    model: torch.nn.Module
    net: torch.nn.Module  # model, wrapped for DDP and torch.compile
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    noise: torch.Generator  # training times and noise
    transport: Transport
    terms: list[LossTerm]
    step: int
    latest: Path | None  # the checkpoint resumed from
    preview: TrainingPreview | None
    evaluation: object | None = None  # training.evaluation.TrainingEval when --eval-every is set
    loggers: list[Logger] | None = None  # besides log.csv (rank 0)
    log_window: dict | None = None  # the resumed checkpoint's steps since its last log.csv row
    posthoc_ema: PowerFunctionEMA | None = None  # rank 0's power-function EMAs with --ema-snapshots-every
    encoder_digests: list[str] | None = None  # sha256 of each REPA encoder's files, recorded with each checkpoint


DATA_FIELDS = ("num_classes", "in_channels", "input_size")  # what the data decides about the model
REPA_DIGESTS = "repa_encoder_sha256"  # the key of a checkpoint's state.json that records its REPA encoders
LATENT_FIELDS = ("kind", "sha256", "latent_shape", "encoder_input_size", "image_size")  # the autoencoder's identity


def resume_config(run: str | Path, given: dict | None = None) -> TrainConfig:
    """The config of ``run`` with the flags in ``given`` applied: only RESUMABLE ones may differ."""
    saved = TrainConfig.from_dict(runs.read_config(run), source=f"{run}/{runs.CONFIG}")
    if saved.data == EXTERNAL:
        raise InputError(
            f"{run} holds converted weights, not a training run: sample it with `sit sample --ckpt {run}`; "
            "it cannot be resumed"
        )
    for name, value in (given or {}).items():
        if value is None or name in ("out", "resume"):
            continue
        if name not in {f.name for f in fields(TrainConfig)}:
            raise InputError(f"unknown setting {name!r}")
        if name == "time_shift":  # as given on the command line ("2"), compared as the config holds it (2.0)
            value = parse_time_shift(value)
        if name in RESUMABLE:
            setattr(saved, name, value)
        elif value != getattr(saved, name):
            flag = "--" + name.replace("_", "-")
            raise InputError(
                f"{run} was trained with {flag} {getattr(saved, name)}; a resumed run keeps its settings: "
                f"drop {flag} {value}, or start a new run with --out"
            )
    if "steps" in (given or {}) and given["steps"] is not None:
        saved.epochs = None
    saved.out = str(run)
    return saved


def config_from_flags(flags: dict, resume: str | None = None) -> TrainConfig:
    """The config of `sit train`: a new run from the settings given, or ``resume``'s own with them applied."""
    flags = {k: v for k, v in flags.items() if v is not None}
    out = flags.get("out")
    if resume is not None and out is not None and str(out).rstrip("/") != str(resume).rstrip("/"):
        raise InputError(f"--out {out} and --resume {resume} name different folders; drop --out when resuming")
    return resume_config(resume, flags) if resume is not None else TrainConfig(**flags)


def check_out(cfg: TrainConfig, resume: bool) -> Path | None:
    """The checkpoint to resume from (None for a new run); refuses anything that would overwrite.

    Resuming takes the newest checkpoint whose files all verify (``runs.checkpoint_problem``): a
    damaged newer one is named in a note, and its steps are trained again, to the same weights, since
    training is deterministic; when no checkpoint verifies, the resume is refused.
    """
    run = Path(cfg.out)
    if resume:
        if not runs.is_run(run):
            raise InputError(
                f"--resume {run}: not a sit run (no config.json); pass the folder `sit train --out` created"
            )
        latest, damaged = runs.newest_checkpoint(run)
        if latest is None and damaged:
            path, problem = damaged[0]
            raise InputError(
                f"--resume {run}: checkpoint {path} is damaged ({problem}) and no older one is intact; "
                f"start the run again with a new --out"
            )
        if latest is None:
            raise InputError(f"--resume {run}: the run has no complete checkpoint yet; start it again with a new --out")
        for path, problem in damaged if distributed.is_main() else ():
            print(
                f"note: checkpoint {path} is damaged ({problem}); resuming from {latest}, the newest intact one "
                f"(its later steps are trained again and the damaged checkpoint replaced)"
            )
        done = int(latest.name)
        if done >= cfg.steps:
            raise InputError(
                f"--resume {run}: the run already finished at step {done}; "
                f"pass --steps N with N > {done} to train further"
            )
        return latest
    runs.check_new_run(run)
    return None


def check_resumed_data(cfg: TrainConfig, saved: dict, dataset, latest: Path) -> None:
    """A resumed run's data must give the model it was trained with; a change of size changes the data order."""
    changed = [f"{k} {saved[k]} -> {getattr(cfg, k)}" for k in DATA_FIELDS if saved[k] != getattr(cfg, k)]
    before, now = saved.get("autoencoder"), cfg.autoencoder or {}
    if before:  # a run from before runs recorded it is not checked
        changed += [f"autoencoder {k} differs" for k in LATENT_FIELDS if before.get(k) != now.get(k)]
        stats = [(d.get("normalization") or {}).get("sha256") for d in (before, now)]
        changed += ["statistics differ"] if stats[0] != stats[1] else []
    if changed:
        raise InputError(
            f"--resume {cfg.out}: the data {cfg.data} no longer matches the run ({', '.join(changed)}); "
            f"restore the data the run was trained on, or train a new run with --out"
        )
    state = json.loads((latest / "state.json").read_text())
    size = state["data_size"]
    if size != len(dataset) and distributed.is_main():
        print(
            f"warning: {cfg.data} now holds {len(dataset)} images, the run was trained on {size}: the data order "
            f"changed, so the resumed run is not the one an uninterrupted run would have trained"
        )


def check_resumed_encoders(cfg: TrainConfig, digests: list[str] | None, latest: Path) -> None:
    """A resumed run's REPA encoders must be the files it was trained with (their sha256 is recorded with every
    checkpoint, ``REPA_DIGESTS``), not other weights at the same paths."""
    recorded = json.loads((latest / "state.json").read_text()).get(REPA_DIGESTS)
    if recorded is None or digests is None:  # a run without REPA, or saved before the digests were recorded
        return
    for path, was, now in zip(cfg.repa_encoder, recorded, digests):
        if was != now:
            raise InputError(
                f"--resume {cfg.out}: encoder {path} is not the one the run was trained with (its files' sha256 is "
                f"{now[:12]}..., the run's {was[:12]}...): put the original back, or train a new run with --out"
            )


def open_data(cfg: TrainConfig, device: torch.device):
    """(dataset, vae): the data, and the autoencoder that encodes it when pixels are trained in latent space.
    Fills the data-derived fields of ``cfg`` (shape, classes, latent space)."""
    dataset = open_dataset(cfg.data, None if is_latent_cache(cfg.data) else cfg.image_size)
    info = dataset.info
    vae = None
    if cfg.vae is not None and cfg.data == DIGITS:
        raise InputError(
            "the digits are 1-channel 8x8 images, too small for a VAE: drop --vae and train in pixel space"
        )
    spec = cfg.autoencoder_spec()
    if (spec.kind or cfg.latent_stats) and not info.latent:
        vae = spec.open(info.image_size, device, image_channels=info.channels)
        require_statistics(vae, f"training on {cfg.data} in this latent space", STATS_COMMAND)
        channels, size, _ = vae.latent_shape(info.image_size)
        cfg.in_channels, cfg.input_size, cfg.latent_scale = channels, size, vae.normalization.scale
        cfg.autoencoder = {**identity(vae, info.image_size), "image_channels": info.channels,
                           "normalization": statistics_identity(cfg.latent_stats) if cfg.latent_stats else None}
    elif info.latent and dataset.autoencoder is not None:
        _cache_latent_space(cfg, dataset)
        cfg.in_channels, cfg.input_size, cfg.latent_scale = info.channels, info.size, info.latent_scale
        cfg.image_size = info.image_size
    else:
        if info.latent and (spec.kind == "rae" or cfg.latent_stats):
            raise InputError(f"latent cache {cfg.data} was made before caches recorded their autoencoder: it holds "
                             "SD-VAE latents; drop --rae-encoder and --latent-stats, or encode it again")
        cfg.in_channels, cfg.input_size, cfg.latent_scale = info.channels, info.size, info.latent_scale
        cfg.vae = cfg.vae or info.vae
        cfg.image_size = info.image_size
    cfg.num_classes = info.num_classes
    check_batch_size(len(dataset), cfg.batch_size, distributed.world_size())
    if cfg.epochs is not None:
        cfg.steps = cfg.epochs * (len(dataset) // cfg.batch_size)
    if cfg.input_size % patch_size(cfg.model):
        raise InputError(
            f"{cfg.model} needs an input size divisible by its patch size; the data gives {cfg.input_size}"
        )
    return dataset, vae


def _cache_latent_space(cfg: TrainConfig, dataset) -> None:
    """A cache that records its autoencoder: refuse flags naming another one or other statistics, take its
    statistics (or the ones given, for a cache without), refuse latents that need statistics without any."""
    recorded, where = dataset.autoencoder, f"latent cache {cfg.data}"
    given = cfg.autoencoder_spec()
    if given.kind and given.kind != recorded["kind"]:
        raise InputError(f"{where} holds latents of a {recorded['kind']} autoencoder ({recorded['source']}); drop "
                         f"--{'vae' if given.kind == 'kl' else 'rae-encoder'}")
    path = cfg.vae if recorded["kind"] == "kl" else cfg.rae_encoder
    if path and encoder_identity(path) != recorded["sha256"]:
        raise InputError(f"{where} was encoded by {recorded['source']}, whose files differ from {path}: pass that "
                         "autoencoder, or make a cache with this one")
    if recorded["kind"] == "kl":
        cfg.vae = path or recorded["source"]
    else:
        cfg.rae_encoder = path or recorded["source"]
    stats = dataset.statistics
    if stats and cfg.latent_stats and encoder_identity(cfg.latent_stats) != stats["sha256"]:
        raise InputError(f"{where} records its statistics ({stats['file']}); --latent-stats {cfg.latent_stats} "
                         "holds others: drop --latent-stats, or recompute the cache's with sit latent-stats "
                         "--overwrite")
    if stats:
        cfg.latent_stats = str((dataset.root / stats["file"]).resolve())
    elif cfg.latent_stats:
        dataset.use_normalization(load_normalization(cfg.latent_stats))
        stats = statistics_identity(cfg.latent_stats)
    elif recorded["kind"] == "rae" or recorded.get("downsampling", 8) > 8:
        kind = "RAE" if recorded["kind"] == "rae" else f"f{recorded['downsampling']} VAE"
        raise InputError(f"{where} holds {kind} latents without statistics: compute them with `{STATS_COMMAND} "
                         f"{cfg.data}` (or pass --latent-stats FILE, e.g. RAE's stat.pt)")
    cfg.autoencoder = {**recorded, "image_channels": 3, "normalization": stats}


def patch_size(model: str) -> int:
    """The patch of a model name (DiT^DH: 1)."""
    return 1 if model in DDT_models else model_shape(model)[3]


def prepare(cfg: TrainConfig, resume: bool, session: Session) -> Prepared:
    """Check, lock the run folder, build (or restore) everything the loop steps, then write config.json."""
    dist = session.dist
    source = read_source(cfg) if cfg.init_from is not None and not resume else None  # a resume has its weights
    apply_presets(cfg)
    cfg.check(resumed=resume)
    check_device_precision(cfg.precision, dist.device)
    session.set_threads(cfg.threads)
    run = Path(cfg.out)
    saved = {k: getattr(cfg, k) for k in (*DATA_FIELDS, "autoencoder")}
    dataset, vae = open_data(cfg, dist.device)
    guided = {"meanflow": cfg.meanflow_omega != 1, "dmf": cfg.meanflow_omega != 1,
              "alphaflow": cfg.meanflow_omega != 1, "imf": cfg.imf_omega_max > 1}.get(cfg.objective, False)
    if guided and not (cfg.num_classes and cfg.class_dropout_prob > 0):
        flag = "--imf-omega-max" if cfg.objective == "imf" else "--meanflow-omega"
        raise InputError(
            f"{flag} folds classifier-free guidance into the target, which needs class labels and "
            "--class-dropout-prob > 0 (the unconditional velocity is learnt from dropped labels)"
        )
    if dist.is_main and cfg.time_shift != 1.0:
        print(f"training times: {describe_time_shift(cfg.time_shift, cfg.latent_shape())}")
    if cfg.eval_every and cfg.eval_labels == "balanced":
        check_balanced(cfg.eval_num, max(cfg.num_classes, 1), "--eval-num", "--eval-labels")
    if cfg.objective == "alphaflow" and cfg.alphaflow_end is None:
        cfg.alphaflow_end = cfg.steps  # the schedule is fixed when the run starts: a resume with more steps keeps it
        if cfg.alphaflow_start >= cfg.alphaflow_end:
            raise InputError(f"--alphaflow-start {cfg.alphaflow_start} must be below --alphaflow-end (default: "
                             f"the run's {cfg.steps} steps)")
    if source is not None:
        check_source(cfg, source)
    digests = None
    if cfg.repa_encoder:
        from sitcli.encoders import encoder_identity

        digests = [encoder_identity(path) for path in cfg.repa_encoder]
    encoders = open_encoders(cfg, dataset, dist.device, digests)
    atomic.check_can_create(run, "--out")  # before the lock, which creates the folder
    session.hold(run, "sit train")
    latest = check_out(cfg, resume)
    if latest is not None:
        check_resumed_data(cfg, saved, dataset, latest)
        check_resumed_encoders(cfg, digests, latest)
    check_log(cfg.log)
    evaluation = None
    if cfg.eval_every:
        from sitcli.training.evaluation import TrainingEval

        evaluation = TrainingEval(cfg, dist, vae)  # reads the reference statistics and Inception weights

    # Model and optimiser: same init on every rank; after that each rank has its own RNG streams.
    torch.manual_seed(cfg.seed)
    model = cfg.new_model(tuple(e.width for e in encoders)).to(dist.device)
    if source is not None:  # the source's EMA weights; the run's EMA starts there too
        init_from_flow(model, source.model.state_dict())
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    model.grad_checkpointing = cfg.grad_checkpointing
    # fused None: torch's default implementation
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=cfg.fused_adamw or None)
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    rank_seed = cfg.seed * dist.world_size + dist.rank
    torch.manual_seed(rank_seed)  # the model's label dropout draws from the global RNG
    noise = torch.Generator(dist.device).manual_seed(rank_seed)
    # Rank 0 keeps the post-hoc EMAs; they only read the weights, so the run trains the same with or without them.
    posthoc = PowerFunctionEMA(dict(model.named_parameters()), cfg.ema_sigma_rels) if (
        cfg.ema_snapshots_every and dist.is_main) else None
    step, log_window = 0, None
    if latest is not None:  # restored before config.json changes: a resume that cannot load rewrites nothing
        step, log_window = _restore(latest, model, ema, opt, scaler, noise, cfg, dist, posthoc)
    # The loggers start before config.json is written: one that cannot (a broken install, wandb without a key)
    # is refused with nothing written. Every rank learns rank 0's refusal, so that none waits for it.
    loggers, refused = [], None
    if dist.is_main:
        try:
            loggers = open_loggers(cfg.log, run, cfg.to_dict())
        except InputError as err:
            refused = str(err)
    refused = distributed.all_gather_objects(refused)[0]
    if refused is not None:
        raise InputError(refused)
    distributed.barrier()  # every rank has checked the folder (and loaded its checkpoint) before rank 0 writes
    if dist.is_main:
        runs.write_config(run, cfg.to_dict())
        if latest is not None:
            truncate_log(run / "log.csv", step)
            truncate_log(run / EVAL_LOG, step)
            write_best(run)

    net = model
    if dist.active:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    if cfg.compile:
        net = compiled(net, dist.device)
    transport = cfg.transport()
    data = batches(dataset, cfg.batch_size, cfg.seed, dist.rank, dist.world_size, step, cfg.num_workers)
    preview = TrainingPreview(cfg, run / "grids", vae) if dist.is_main and cfg.sample_every else None
    terms = loss_terms(cfg, transport, model, encoders)
    for note in (n for term in terms for n in getattr(term, "notes", list)()) if dist.is_main else ():
        print(note)
    return Prepared(
        cfg,
        run,
        dist,
        dataset,
        data,
        vae,
        model,
        net,
        ema,
        opt,
        scaler,
        noise,
        transport,
        terms,
        step,
        latest,
        preview,
        evaluation,
        loggers,
        log_window,
        posthoc,
        digests,
    )


def discard_new_run(p: Prepared) -> None:
    """Empty the folder of a new run that stopped before its first checkpoint (rank 0): ``check_out`` found it
    empty, so everything in it is this call's (config.json, logs, grids), and the same command can run again."""
    if not p.dist.is_main or p.latest is not None or runs.newest_checkpoint(p.run)[0] is not None:
        return
    for entry in p.run.iterdir():
        if entry.name != LOCK:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def open_encoders(cfg: TrainConfig, dataset, device: torch.device, digests: list[str] | None = None) -> list:
    """The frozen encoders of the alignment term (none without ``repa_encoder``), on ``device``; on a
    latent cache, the cache's features of them (refused if it has none), found by their ``digests``
    (``encoders.encoder_identity``, computed when not given)."""
    if not cfg.repa_encoder:
        return []
    if dataset.info.latent:  # the cache's stored features; the encoders themselves are not loaded
        from sitcli.encoders import encoder_identity
        from sitcli.training.losses import CachedEncoder

        digests = digests or [encoder_identity(p) for p in cfg.repa_encoder]
        entries = dataset.use_features(digests, cfg.repa_encoder)
        return [
            CachedEncoder(path, e["width"], e["grid"], e["resolution"], e["fixed_resolution"])
            for path, e in zip(cfg.repa_encoder, entries)
        ]
    from sitcli.encoders import load_encoder

    return [load_encoder(path).to(device) for path in cfg.repa_encoder]


def _restore(
    latest: Path, model, ema, opt, scaler, noise: torch.Generator, cfg: TrainConfig, dist, posthoc=None
) -> tuple[int, dict | None]:
    """Load weights, optimiser and RNG state from a checkpoint folder; returns its step and log window."""
    state = runs.load_checkpoint(latest, dist.device)
    try:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"]["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[-1].strip()
        raise InputError(
            f"--resume {cfg.out}: checkpoint {latest} does not fit the model config.json describes "
            f"({first}); the run folder was changed by hand or comes from another version"
        ) from None
    for group in opt.param_groups:  # --lr may have been changed for the resumed run
        group["lr"] = cfg.lr
    if scaler is not None and state["optimizer"].get("scaler"):
        scaler.load_state_dict(state["optimizer"]["scaler"])
    restore_rng_state(state["rng"], noise, dist)
    if posthoc is not None:
        if "posthoc_ema" not in state["optimizer"]:
            raise InputError(f"--resume {cfg.out}: checkpoint {latest} holds no post-hoc EMA state, though config.json "
                             "asks for snapshots; the run folder was changed by hand or comes from another version")
        posthoc.load_state_dict(state["optimizer"]["posthoc_ema"])
    return state["state"]["step"], state["state"].get("log_window")
