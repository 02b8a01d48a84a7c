"""`sit fid` as a library call: read the inputs, run Inception once per input, compute the metrics."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from sitcli import runtime
from sitcli.domains import COUNT, COUNT_OR_ZERO, SEED, Domain, check_domains
from sitcli.errors import InputError
from sitcli.evaluate import inception, inputs, metrics as M
from sitcli.evaluate.statistics import GaussianStats, SplitScore
from sitcli.outputs import Output, check_outputs
from sitcli.session import session

METRICS = ("fid", "is", "sfid", "pr", "kid", "fd_dinov2")
INCEPTION_METRICS = METRICS[:5]  # what "all" names: fd_dinov2 needs an encoder file besides
ProgressFn = Callable[[str, int, int], None]
"""Called as ``progress(label, images_done, images_total)`` before the first and after each batch."""


def parse_metrics(spec: str | Iterable[str]) -> tuple[str, ...]:
    """``"fid,is"`` or ``["fid", "is"]`` or ``"all"`` -> known metric names, in ``METRICS`` order."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip().lower() for n in names if n.strip()]
    if "all" in names:
        return INCEPTION_METRICS + (("fd_dinov2",) if "fd_dinov2" in names else ())
    unknown = sorted(set(names) - set(METRICS))
    if unknown:
        raise InputError(f"unknown metric {', '.join(unknown)}; choose from {','.join(METRICS)} or all")
    return tuple(m for m in METRICS if m in names)


@dataclass
class Summary:
    """What one input contributes to the metrics."""

    label: str
    source: inputs.Source
    count: int | None = None
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # mu, sigma, mu_s, sigma_s
    pool: np.ndarray | None = None  # (N, 2048) float32, kept only for precision/recall and KID
    inception_score: tuple[float, float] | None = None


def _summarise(
    source: inputs.Source,
    label: str,
    net: inception.FIDInceptionV3,
    device: torch.device,
    *,
    gaussian: bool,
    spatial: bool,
    keep_pool: bool,
    is_splits: int | None,
    batch_size: int,
    num_workers: int,
    progress: ProgressFn | None,
    tf32: bool = False,
) -> Summary:
    """One pass of Inception over an image source, accumulating only what is asked for."""
    total = int(source.num_images)
    outputs = {"pool"} if (gaussian or keep_pool) else set()
    if spatial:
        outputs.add("spatial")
    if is_splits:
        outputs.add("logits")
    pool_stats = GaussianStats(inception.POOL_DIM, device) if gaussian else None
    spatial_stats = GaussianStats(inception.SPATIAL_DIM, device) if spatial else None
    score = SplitScore(total, is_splits) if is_splits else None
    kept: list[np.ndarray] = []
    done = 0
    if progress:
        progress(label, 0, total)
    loader = inputs.image_batches(source, batch_size, num_workers, pin_memory=device.type == "cuda")
    with torch.inference_mode(), runtime.tf32(tf32):
        for batch in loader:
            if batch.error:
                raise InputError(batch.error)
            if isinstance(batch.images, list):
                # Mixed sizes: Inception resizes each image to 299x299 anyway, so do it per image.
                feats = [net(img[None].to(device).float() / 255, outputs) for img in batch.images]
                out = {k: torch.cat([f[k] for f in feats]) for k in outputs}
            else:
                images = batch.images.to(device, non_blocking=True).float() / 255
                out = net(images, outputs)
            if pool_stats:
                pool_stats.update(out["pool"])
            if spatial_stats:
                spatial_stats.update(out["spatial"])
            if score:
                score.update(out["logits"])
            if keep_pool:
                kept.append(out["pool"].float().cpu().numpy())
            done += len(batch)
            if progress:
                progress(label, done, total)
    summary = Summary(label, source, count=done)
    if pool_stats:
        summary.stats.update(mu=pool_stats.mean(), sigma=pool_stats.covariance())
    if spatial_stats:
        summary.stats.update(mu_s=spatial_stats.mean(), sigma_s=spatial_stats.covariance())
    if keep_pool:
        summary.pool = np.concatenate(kept)
    if score:
        summary.inception_score = score.result()
    return summary


def _needs(sources: dict[str, inputs.Source], wanted: Sequence[str], samples: str, saving: bool,
           dinov2: bool = False) -> dict[str, set[str]]:
    """Which features each input must provide: gaussian, spatial, pool, is, dinov2."""
    needs: dict[str, set[str]] = {label: set() for label in sources}
    for label in sources:
        if "fid" in wanted:
            needs[label].add("gaussian")
        if "sfid" in wanted:
            needs[label].add("spatial")
        if "pr" in wanted or "kid" in wanted:
            needs[label].add("pool")
        if "fd_dinov2" in wanted:
            needs[label].add("dinov2")
    if "is" in wanted:
        needs[samples].add("is")
    if saving:
        needs["A"] |= {"gaussian", "spatial"} | ({"dinov2"} if dinov2 else set())
    return needs


def _check(
    label: str, source: inputs.Source, needs: set[str], wanted: Sequence[str], is_splits: int, pr_k: int
) -> None:
    """Refuse, before any image is decoded, what an input cannot provide."""
    where = f"{label} ({source.path})"
    if source.kind == "stats_npz":
        if needs & {"pool", "is"}:
            what = [m for m in ("is", "pr", "kid") if m in wanted]
            raise InputError(f"{', '.join(what)} need images, but {where} holds only statistics")
        if "spatial" in needs and "mu_s" not in source.stats:
            raise InputError(
                f"{where} has no sFID statistics (mu_s, sigma_s); recompute them with "
                f"`sit fid IMAGES --save-stats OUT.npz`"
            )
        if "dinov2" in needs and "mu_d" not in source.stats:
            raise InputError(f"{where} has no FD-DINOv2 statistics (mu_d, sigma_d); recompute them with "
                             f"`sit fid IMAGES --save-stats OUT.npz --dinov2 ENCODER`")
        return
    n = source.num_images
    if needs & {"gaussian", "spatial"} and n < 2:
        raise InputError(f"{where} has {n} image; a covariance needs at least 2")
    if "is" in needs and n < is_splits:
        raise InputError(
            f"the Inception Score with {is_splits} splits needs at least {is_splits} images; {where} has {n}"
        )
    if "pr" in wanted and n <= pr_k:
        raise InputError(f"precision/recall with k={pr_k} need more than {pr_k} images; {where} has {n}")
    if "kid" in wanted and n < 2:
        raise InputError(f"KID needs at least 2 images per input; {where} has {n}")


def _check_dimensions(sources: dict[str, inputs.Source], wanted: Sequence[str]) -> None:
    """FID between statistics of different layers is meaningless: refuse it before any decoding."""
    for metric, key, own in (("FID", "mu", inception.POOL_DIM), ("sFID", "mu_s", inception.SPATIAL_DIM)):
        if metric.lower() not in wanted:
            continue
        dims = {label: s.stats[key].shape[0] if s.kind == "stats_npz" else own for label, s in sources.items()}
        if dims["A"] != dims["B"]:
            raise InputError(
                f"{metric}: A has {dims['A']}-d statistics but B has {dims['B']}-d; compute both with the same "
                f"network and layer ({metric} uses {own}-d features)"
            )


def _describe(summary: Summary) -> dict:
    return {
        "path": str(summary.source.path),
        "kind": summary.source.kind,
        "num_images": summary.count if summary.count is not None else summary.source.num_images,
    }


@dataclass
class FidConfig:
    """The settings of ``sit fid``: a reference set ``a``, a sample set ``b`` (the order of the ADM evaluator), the
    metrics, and the outputs.

    Each of ``a``, ``b`` is an image folder, an images .npz (``arr_0``) or a statistics .npz (``mu``, ``sigma``);
    see ``sitcli.evaluate.inputs``. ``metrics`` (default: ``fid`` when there are two inputs, none otherwise) is a
    comma list or sequence of:

    - ``fid``: Fréchet distance of 2048-d pool features (pytorch-fid's number);
    - ``sfid``: the same on the 2023-d spatial features of the ADM evaluator (Mixed_6d 1x1 branch, first 7
      channels; see ``FIDInceptionV3``);
    - ``is``: Inception Score of the samples (``b``, or ``a`` when it is the only input), ``is_splits`` splits,
      reported as mean and standard deviation;
    - ``pr``: improved precision (samples inside the reference manifold) and recall (reference inside the sample
      manifold), ``pr_k`` nearest neighbours, on at most ``pr_subset`` random images of each set (default: all);
    - ``kid``: KID mean and standard deviation over ``kid_subsets`` subsets of ``kid_subset_size``;
    - ``fd_dinov2``: Fréchet distance of the class-token features of the DINOv2 encoder at ``dinov2`` (a local
      folder or torch hub file, ``sitcli.encoders``), see ``evaluate.dinov2``. Not part of ``"all"``.

    ``fast`` folds Inception's batch norms into its convolutions and runs it channels-last
    (``inception.optimize_for_inference``): features within float32 round-off of the plain network; off by
    default so statistics stay bit-for-bit pytorch-fid's. ``tf32`` lets CUDA run Inception's float32
    convolutions and matmuls in TF32 (features move by ~1e-3); off by default (``runtime.tf32``).
    ``save_stats`` writes ``a``'s statistics (``mu``, ``sigma``, ``mu_s``, ``sigma_s``) for reuse (``b`` may then
    be omitted), ``json`` the result; an existing file is refused unless ``overwrite``.
    """

    a: str | Path
    b: str | Path | None = None
    metrics: str | Sequence[str] | None = None
    save_stats: str | Path | None = None
    json: str | Path | None = None
    inception_weights: str | Path | None = None
    batch_size: int = 50
    num_workers: int | None = None
    is_splits: int = 10
    pr_k: int = 3
    pr_subset: int | None = None
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    seed: int = 2020
    fast: bool = False
    tf32: bool = False
    dinov2: str | Path | None = None
    overwrite: bool = False

    def __post_init__(self):
        check_domains(asdict(self), FID_DOMAINS)
        runtime.check_workers(self.num_workers)
        if self.pr_subset is not None and self.pr_subset <= self.pr_k:
            raise InputError(f"--pr-subset {self.pr_subset}: pass more than k = {self.pr_k} images")
        self.metrics = parse_metrics(self.metrics if self.metrics is not None else
                                     ("fid",) if self.b is not None else ())
        pair_metrics = [m for m in self.metrics if m != "is"]
        if self.b is None and pair_metrics:
            raise InputError(f"{', '.join(pair_metrics)} compare two inputs; give a second input B")
        if self.b is None and not self.metrics and self.save_stats is None:
            raise InputError("nothing to do: give a second input, --metrics, or --save-stats")
        if self.dinov2 is not None and "fd_dinov2" not in self.metrics and self.save_stats is None:
            raise InputError("--dinov2 is the encoder of fd_dinov2 and has no effect without it: add --metrics "
                             "fd_dinov2 (or --save-stats, whose statistics then hold its features), or drop --dinov2")
        # pytorch-fid recognises a statistics file by its .npz suffix only.
        if self.save_stats is not None and Path(self.save_stats).suffix.lower() != ".npz":
            raise InputError(f"--save-stats {self.save_stats}: name the file *.npz")


FID_DOMAINS = dict(batch_size=COUNT, num_workers=COUNT_OR_ZERO, is_splits=COUNT, pr_k=COUNT,
                   pr_subset=Domain(2, integer=True), kid_subsets=COUNT, kid_subset_size=Domain(2, integer=True),
                   seed=SEED)


@dataclass
class FidResult:
    """The metrics by name (``fid, sfid, is, is_std, precision, recall, kid, kid_std, fd_dinov2``), what each input
    was, the settings used, the files written and the warnings (e.g. singular covariances)."""

    metrics: dict[str, float]
    inputs: dict[str, dict]
    settings: dict
    saved_stats: str | None = None
    json: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(cfg: FidConfig, progress: ProgressFn | None = None, device: str | torch.device | None = None) -> FidResult:
    """The metrics of ``cfg``: every image input is read once, and only the features a metric needs are kept (mean
    and covariance stream in float64; pool features, N x 2048 float32, are held only for ``pr`` and ``kid``)."""
    wanted = cfg.metrics
    inputs.check_destination(cfg.save_stats, "--save-stats")
    inputs.check_destination(cfg.json, "--json")
    check_outputs([Output(cfg.save_stats, "--save-stats", inputs.STATISTICS),
                   Output(cfg.json, "--json", inputs.FID_RESULT)], {"input A": cfg.a, "input B": cfg.b}, cfg.overwrite)
    sources = {"A": inputs.open_source(cfg.a)}
    if cfg.b is not None:
        sources["B"] = inputs.open_source(cfg.b)
    samples = "B" if cfg.b is not None else "A"
    if cfg.save_stats is not None and sources["A"].kind == "stats_npz":
        raise InputError(f"A ({sources['A'].path}) already holds statistics; --save-stats needs images")

    needs = _needs(sources, wanted, samples, cfg.save_stats is not None, cfg.dinov2 is not None)
    for label, source in sources.items():
        _check(label, source, needs[label], wanted, cfg.is_splits, cfg.pr_k)
    if cfg.dinov2 is None and any("dinov2" in needs[k] and s.kind != "stats_npz" for k, s in sources.items()):
        raise InputError("fd_dinov2 needs a DINOv2 encoder: pass --dinov2 PATH (a transformers folder such as "
                         "facebook/dinov2-large, or torch hub's dinov2_vitl14_pretrain.pth)")
    if cfg.b is not None:
        _check_dimensions(sources, wanted)

    with session(device) as job:
        summaries, net, feature_seconds = _features(cfg, sources, needs, job.device, progress)
    results, warnings = _metrics(cfg, summaries, samples, job.device)
    saved = None
    if cfg.save_stats is not None:
        saved = str(inputs.save_stats(cfg.save_stats, {k: summaries["A"].stats[k] for k in inputs.STATS_KEYS
                                                           if k in summaries["A"].stats}))
    settings = {
        "device": str(job.device), "batch_size": cfg.batch_size, "num_workers": _workers(cfg),
        "inception_weights": str(inception.find_inception_weights(cfg.inception_weights)) if net is not None else None,
        "is_splits": cfg.is_splits, "pr_k": cfg.pr_k, "pr_subset": cfg.pr_subset, "kid_subsets": cfg.kid_subsets,
        "kid_subset_size": cfg.kid_subset_size, "seed": cfg.seed, "fast": cfg.fast, "tf32": cfg.tf32,
        "dinov2": str(cfg.dinov2) if cfg.dinov2 is not None else None, "feature_seconds": round(feature_seconds, 3),
    }
    result = FidResult(results, {label: _describe(s) for label, s in summaries.items()}, settings, saved,
                       warnings=warnings)
    if cfg.json is not None:
        result.json = str(inputs.write_json(cfg.json, result.to_dict()))
    return result


def _workers(cfg: FidConfig) -> int:
    return inputs.default_num_workers() if cfg.num_workers is None else cfg.num_workers


def _features(cfg: FidConfig, sources: dict, needs: dict, device: torch.device, progress: ProgressFn | None):
    """Each input's summary (statistics, pool features, Inception Score), the Inception network if it ran, and
    the seconds it took."""
    summaries: dict[str, Summary] = {}
    net = None
    started = time.perf_counter()
    encoder: dict = {}  # the DINOv2 encoder, loaded at its first use
    workers = _workers(cfg)
    for label, source in sources.items():
        if source.kind == "stats_npz" or not needs[label] - {"dinov2"}:
            summaries[label] = Summary(label, source, stats=dict(source.stats))
        else:
            if net is None:
                net = inception.load_inception(cfg.inception_weights, device)
                if cfg.fast:
                    inception.optimize_for_inference(net)
            summaries[label] = _summarise(
                source, label, net, device, gaussian="gaussian" in needs[label], spatial="spatial" in needs[label],
                keep_pool="pool" in needs[label], is_splits=cfg.is_splits if "is" in needs[label] else None,
                batch_size=cfg.batch_size, num_workers=workers, progress=progress, tf32=cfg.tf32,
            )
        _add_dinov2(summaries[label], needs[label], cfg.dinov2, encoder, device, cfg.batch_size, workers, progress)
    return summaries, net, time.perf_counter() - started


def _metrics(cfg: FidConfig, summaries: dict[str, Summary], samples: str, device) -> tuple[dict, list[str]]:
    """The metrics asked for, from the inputs' summaries, and the warnings they call for."""
    results: dict[str, float] = {}
    warnings: list[str] = []
    wanted = cfg.metrics
    if cfg.b is not None:
        sa, sb = summaries["A"], summaries["B"]
        pairs = (("fid", "mu", "sigma"), ("sfid", "mu_s", "sigma_s"), ("fd_dinov2", "mu_d", "sigma_d"))
        for metric, mu, sigma in pairs:
            if metric not in wanted:
                continue
            da = sa.stats[mu].shape[0]
            if sb.stats[mu].shape[0] != da:
                raise InputError(
                    f"{metric}: A has {da}-d statistics but B has {sb.stats[mu].shape[0]}-d; "
                    f"compute both with the same network"
                )
            results[metric] = M.frechet_distance(sa.stats[mu], sa.stats[sigma], sb.stats[mu], sb.stats[sigma])
            few = [f"{s.label} has {s.count}" for s in (sa, sb) if s.count is not None and s.count <= da]
            if few:
                warnings.append(
                    f"{metric}: {' and '.join(few)} images for {da}-d features, so covariances are singular "
                    f"and the value is biased; use more than {da} images (50,000 is standard)"
                )
        rng = np.random.default_rng(cfg.seed)
        if "pr" in wanted:
            ref, fake = sa.pool, sb.pool
            if cfg.pr_subset is not None:
                ref = ref[np.sort(rng.choice(len(ref), min(cfg.pr_subset, len(ref)), replace=False))]
                fake = fake[np.sort(rng.choice(len(fake), min(cfg.pr_subset, len(fake)), replace=False))]
            results["precision"], results["recall"] = M.precision_recall(ref, fake, cfg.pr_k, device=device)
        if "kid" in wanted:
            results["kid"], results["kid_std"], used = M.kernel_inception_distance(
                sa.pool, sb.pool, cfg.kid_subsets, cfg.kid_subset_size, seed=cfg.seed, device=device
            )
            if used < cfg.kid_subset_size:
                warnings.append(f"kid: subsets of {used} images (the smaller input), not {cfg.kid_subset_size}")
    if "is" in wanted:
        results["is"], results["is_std"] = summaries[samples].inception_score
    return results, warnings


def _add_dinov2(
    summary: Summary,
    needs: set[str],
    path,
    cache: dict,
    device,
    batch_size: int,
    workers: int,
    progress: ProgressFn | None,
) -> None:
    """FD-DINOv2 statistics of an image input (the encoder loaded once, kept in ``cache``)."""
    if "dinov2" not in needs or summary.source.kind == "stats_npz":
        return
    from sitcli.encoders import load_encoder
    from sitcli.evaluate.dinov2 import dinov2_stats

    if "encoder" not in cache:
        cache["encoder"] = load_encoder(path).to(device)
    summary.stats.update(dinov2_stats(summary.source, cache["encoder"], summary.label, batch_size, workers, progress))
