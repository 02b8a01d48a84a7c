"""The settings of a training run as data: ``TrainConfig`` is a run's ``config.json`` (``sample_config`` holds
``SampleConfig``, a sample folder's ``sample.json``).

A config is a schema: it validates values and builds the model and transport it describes, and
touches no disk. Defaults that depend on the data (the digits quickstart versus the paper's
ImageNet settings) are not applied here but by ``sitcli.training.presets.apply_presets``, so a
config built for a foreign checkpoint never inherits a preset it did not ask for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch

from sitcli.data import DIGITS
from sitcli.domains import (COUNT, COUNT_OR_ZERO, EPS, FINITE, NON_NEGATIVE, POSITIVE, SEED,
                            Domain, check_domains)
from sitcli.errors import InputError
from sitcli.ddt import DDT_models
from sitcli.latent_space import AutoencoderSpec
from sitcli.models import SiT_models, model_shape
from sitcli.runtime import check_precision, check_workers
from sitcli.seeds import LABEL_SAMPLINGS
from sitcli.transport import ODE_METHODS, Transport
from sitcli.transport.samplers import ode_time_grid
from sitcli.transport.time_grids import NAMED_SHIFTS, resolve_time_shift
from sitcli.transport.time_sampling import DENSITY_PARAMS

# The data a converted checkpoint says it was trained on: none that sit can open.
EXTERNAL = "external"


@dataclass
class TrainConfig:
    """Every training setting; ``config.json`` of a run is ``asdict`` of this.

    None means "not chosen": ``apply_presets`` fills it from the preset of the data before training.
    """

    data: str = DIGITS  # "digits", an image folder (one sub-folder per class), or a latent cache
    out: str | None = None  # run folder; default runs/<data name>
    model: str | None = None  # a key of models.SiT_models or ddt.DDT_models
    image_size: int | None = None
    vae: str | None = None  # local diffusers AutoencoderKL folder: train in its latent space
    class_dropout_prob: float = 0.1
    learn_sigma: bool = True  # keep the official layout (extra output channels, unused)
    interpolant: str = "linear"
    prediction: str = "velocity"
    loss_weight: str | None = None
    train_eps: float | None = None
    sample_eps: float | None = None
    num_timesteps: int | None = None
    time_density: str = "uniform"  # training times: a name in transport.time_sampling.TIME_DENSITIES
    logit_mean: float | None = None  # logit-normal's parameters (None: 0 and 1, recorded once chosen), sit's time
    logit_std: float | None = None
    mode_scale: float | None = None  # the mode density's (None: 1.29)
    # Mean flows (transport.meanflow): the model learns the average velocity u(z, t, r) and samples in few jumps.
    objective: str = "flow"  # "flow" (the interpolant's regression), "meanflow", "dmf", "imf" or "alphaflow"
    meanflow_share: float = 0.25  # share of (t, r) pairs with r != t
    meanflow_p: float = 1.0  # adaptive weight 1 / (mse + c)^p
    meanflow_c: float = 1e-3
    meanflow_omega: float = 1.0  # classifier-free guidance scale folded into the target (1: none)
    # Few-step objectives fine-tuning a flow SiT (training.fewstep_losses); they share the four settings above.
    init_from: str | None = None  # a flow checkpoint the run starts from (any that `sit sample` reads); any objective
    dmf_depth: int | None = None  # DMF's form: the first dmf_depth blocks see t, the rest and the final layer r
    dmf_guidance_interval: tuple[float, float] = (0.0, 1.0)  # dmf: guide where lo <= t <= hi (sit's time)
    imf_omega_max: float = 1.0  # imf: omega drawn on [1, imf_omega_max] and fed to the model (1: no guidance)
    imf_omega_beta: float = 1.0  # imf: omega's density is proportional to omega^-beta
    velocity_head_depth: int | None = None  # imf: blocks of the auxiliary velocity head (None: depth // 4)
    omega_input: bool = False  # the model takes omega: set by check(), for imf with imf_omega_max > 1
    alphaflow_start: int = 0  # alphaflow: the step where alpha starts down from 1 (flow matching) ...
    alphaflow_end: int | None = None  # ... and the step where it reaches 0 (mean flows); None: the run's steps
    alphaflow_gamma: float = 25.0  # the steepness of alpha's sigmoid
    init_from_sha256: str | None = None  # filled when the run starts: the source's weights file, its format
    init_from_format: str | None = None
    init_from_step: int | None = None  # ... and its training step, where it records one
    lr: float | None = None
    weight_decay: float = 0.0
    ema_decay: float | None = None
    batch_size: int | None = None  # global, over all ranks
    steps: int | None = None
    epochs: int | None = None  # instead of steps: passes over the data
    grad_clip: float | None = None
    precision: str = "fp32"
    compile: bool = False
    fused_adamw: bool = False  # one fused kernel for the optimiser step: faster, not bit-identical (~3e-8)
    tf32: bool = True  # TF32 float32 matmuls/convolutions on CUDA (runtime.tf32); no effect on CPU
    grad_checkpointing: bool = False  # recompute each block's activations in backward: less memory, ~1/3 more compute
    seed: int = 0
    num_workers: int | None = None
    threads: int | None = None  # torch intra-op threads per rank; 0: torch's default
    log_every: int | None = None
    ckpt_every: int | None = None
    sample_every: int | None = None  # 0: no sample grids
    # Representation alignment (REPA): tokens of block repa_depth, projected, vs frozen encoders' patch tokens.
    repa_encoder: list[str] = field(default_factory=list)  # local encoder files/folders (sitcli.encoders); []: off
    repa_depth: int | None = None  # 1-based SiT block; default from the model's depth (8 of 28, 4 of 12)
    repa_weight: float = 0.5  # lambda
    repa_projector_dim: int = 2048  # hidden width of the projectors
    log: str = "csv"  # comma list of training.loggers.BACKENDS; log.csv is always written
    # FID during training (training.evaluation): eval_num EMA samples every eval_every steps (0: never)
    eval_every: int = 0
    eval_num: int = 5000
    eval_ref: str | None = None  # reference statistics .npz from `sit fid --save-stats`
    eval_method: str = "adams"  # ODE method of the evaluation samples (unguided)
    eval_steps: int = 50
    eval_metrics: str = "fid"  # comma list: fid (always), is, sfid (training.evaluation.EVAL_METRICS)
    inception_weights: str | None = None  # pytorch-fid's Inception weights (default: the torch hub cache)
    eval_labels: str = "random"  # the evaluation samples' labels: random, or balanced (eval_num / classes of each)
    # Post-hoc EMA (training.posthoc_ema, EDM2): power-function EMAs of these relative widths, kept beside the
    # ema_decay EMA and saved under ema_snapshots/ every ema_snapshots_every steps (0: off); `sit ema` rebuilds any
    # width from them.
    ema_snapshots_every: int = 0
    ema_sigma_rels: list[float] = field(default_factory=lambda: [0.05, 0.10])  # EDM2's two
    # Other latent spaces (sitcli.latent_space) and the wide DiT^DH head (sitcli.ddt):
    rae_encoder: str | None = None  # an RAE's DINOv2 (instead of vae): train in its latent space
    rae_decoder: str | None = None  # its decoder (previews, --eval-every, sampling)
    rae_patch: int | None = None  # the RAE decoder's patch in pixels, when no decoder tells (16)
    latent_stats: str | None = None  # statistics normalising the raw latents (a cache's own by default)
    time_shift: float | str = 1.0  # training times t -> t / (s + (1 - s) t); "dimension": sqrt(C H W / 4096)
    head_width: int | None = None  # DiTDH-*: width of the DDT head (2048)
    head_depth: int | None = None  # DiTDH-*: its blocks (2)
    # Filled from the data when the run starts (what a sampler needs to rebuild the model):
    in_channels: int | None = None
    input_size: int | None = None
    num_classes: int | None = None
    latent_scale: float | None = None
    autoencoder: dict | None = None  # the latent space's identity (latent_space.identity, statistics)

    def __post_init__(self):
        if self.loss_weight == "none":
            self.loss_weight = None
        # One path per entry, as given: a comma may be part of a path (several encoders: several entries).
        if isinstance(self.repa_encoder, str):
            self.repa_encoder = [self.repa_encoder]
        self.repa_encoder = [str(p) for p in self.repa_encoder or []]
        if any(not p.strip() for p in self.repa_encoder):  # an empty path must not quietly turn alignment off
            raise InputError("--repa-encoder '': pass the path of an encoder, or drop the flag to train without REPA")
        if isinstance(self.dmf_guidance_interval, list):  # read back from config.json
            self.dmf_guidance_interval = tuple(self.dmf_guidance_interval)
        self.time_shift = parse_time_shift(self.time_shift)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "TrainConfig":
        unknown = sorted(set(values) - field_names(cls))
        if unknown or "data" not in values:
            raise InputError(
                f"{source} is not a sit training config (unknown keys: {', '.join(unknown) or 'none'}; needs 'data')"
            )
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self, resumed: bool = False) -> None:
        """Refuse settings that cannot train (call once the presets are applied); ``resumed``: the config of a run
        being resumed, whose fixed settings were accepted when it started."""
        if self.model not in SiT_models and self.model not in DDT_models:
            raise InputError(f"unknown model {self.model!r}; choose one of {', '.join([*SiT_models, *DDT_models])}")
        check_precision(self.precision)
        check_domains({**asdict(self), "time_shift": None if isinstance(self.time_shift, str) else self.time_shift},
                      TRAIN_DOMAINS)
        check_workers(self.num_workers)
        self._check_latent_space()
        if self.repa_encoder:
            depth = model_shape(self.model)[0]
            if not 1 <= self.repa_depth <= depth:
                raise InputError(f"--repa-depth {self.repa_depth} must name a block of {self.model}: 1..{depth}")
            if self.repa_weight < 0 or self.repa_projector_dim < 1:
                raise InputError("--repa-weight must be >= 0 and --repa-projector-dim >= 1")
        self._check_objective()
        if self.eval_method not in ODE_METHODS:
            raise InputError(
                f"--eval-method {self.eval_method!r} is not an ODE method; choose one of {', '.join(ODE_METHODS)}"
            )
        if ODE_METHODS[self.eval_method].kind == "searched":
            raise InputError("--eval-method searched needs a solver searched for fixed weights, and training changes "
                             "them: pick another method (dpm++2m, unipc, adams)")
        if self.eval_labels not in LABEL_SAMPLINGS:
            raise InputError(f"unknown --eval-labels {self.eval_labels!r}; choose one of {', '.join(LABEL_SAMPLINGS)}")
        self._check_without_effect(RESUMABLE if resumed else None)
        # The transport raises InputError for an invalid interpolant / prediction / loss-weight / density.
        transport = self.transport()
        for name, value in transport.time_density_params.items():  # config.json records the values used, not "default"
            setattr(self, name, value)
        if (
            self.eval_every < 0
            or self.eval_every
            and (self.eval_ref is None or self.eval_num < 2 or self.eval_steps < 1)
        ):
            raise InputError(
                "--eval-every N needs --eval-ref STATS.npz (from `sit fid REF --save-stats STATS.npz`), "
                "--eval-num of at least 2 and --eval-steps of at least 1"
            )
        if self.eval_every:  # the evaluations' time grid, built now: it cannot fail at the first evaluation
            try:
                ode_time_grid(transport, self.eval_method, self.eval_steps)
            except InputError as err:
                raise InputError(
                    f"--eval-steps {self.eval_steps} with --eval-method {self.eval_method}: {err}"
                ) from None
        self._check_snapshots()

    def _check_snapshots(self) -> None:
        widths = list(self.ema_sigma_rels)
        if not self.ema_snapshots_every:
            if widths != _FIELD_DEFAULTS["ema_sigma_rels"]:
                raise InputError("--ema-sigma-rels is a setting of post-hoc EMA: add --ema-snapshots-every K, or drop "
                                 "it")
        elif not widths or len(set(widths)) != len(widths):
            raise InputError(f"--ema-sigma-rels {widths}: pass one or more different widths (EDM2: 0.05 and 0.1)")

    def _check_without_effect(self, among: set[str] | None = None) -> None:
        """Refuse a setting that does nothing given the others: REPA's without an encoder, the evaluations' without
        --eval-every (as the mean-flow settings without --objective meanflow); only those ``among`` when given."""
        for fields_, needed, missing in (
            (REPA_FIELDS, "--repa-encoder PATH", not self.repa_encoder),
            (EVAL_FIELDS, "--eval-every N", not self.eval_every),
        ):
            changed = [n for n in fields_ if getattr(self, n) != _FIELD_DEFAULTS[n] and (among is None or n in among)]
            changed = changed if missing else []
            if changed:
                raise InputError(f"--{changed[0].replace('_', '-')} has no effect without {needed}: add it or drop "
                                 f"--{changed[0].replace('_', '-')}")

    def _check_latent_space(self) -> None:
        """The autoencoder flags, RAE's time shift and the DiT^DH head (see sitcli.latent_space, sitcli.ddt)."""
        self.autoencoder_spec().check()
        ddt = self.model in DDT_models
        if ddt:
            self.learn_sigma = False  # DiT^DH predicts the velocity alone (no sigma channels)
        if not ddt and (self.head_width is not None or self.head_depth is not None):
            raise InputError(f"--head-width / --head-depth shape the DDT head of a DiT^DH: pass --model "
                             f"{' or '.join(DDT_models)}, or drop them")
        if ddt and self.repa_encoder:
            raise InputError("--repa-encoder is not combined with DiT^DH models yet: drop it or use a SiT model")
        if ddt and self.objective != "flow":
            raise InputError("--objective meanflow needs a SiT model (DiT^DH has no second time): use --model SiT-*")
        if self.time_shift != 1.0:
            if self.num_timesteps is not None:
                raise InputError("--time-shift shifts continuous training times: drop --num-timesteps or the shift")
            if self.objective != "flow":
                raise InputError("--time-shift is not combined with --objective meanflow yet: drop it")

    def autoencoder_spec(self) -> AutoencoderSpec:
        """The autoencoder the flags name (``vae`` or ``rae_*``), with ``latent_stats``."""
        return AutoencoderSpec(vae=self.vae, rae_encoder=self.rae_encoder, rae_decoder=self.rae_decoder,
                               rae_patch=self.rae_patch, latent_stats=self.latent_stats)

    def latent_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) of the model's input, once the data filled it."""
        if self.in_channels is None or self.input_size is None:
            return None
        return (self.in_channels, self.input_size, self.input_size)

    def resolved_time_shift(self) -> float:
        """The training shift s as a number ("dimension": RAE's sqrt(C H W / 4096) once the data gave C, H, W;
        1 before)."""
        if self.time_shift == "dimension" and self.latent_shape() is None:
            return 1.0
        return resolve_time_shift(self.time_shift, self.latent_shape())

    def _check_objective(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InputError(f"unknown --objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        # the fields' domains are checked with every other field's; here: whose setting each one is
        owned = OBJECTIVE_FIELDS.get(self.objective, ())
        for name in (n for n in FEWSTEP_FIELDS if n not in owned and getattr(self, n) != _FIELD_DEFAULTS[n]):
            owners = [o for o, names in OBJECTIVE_FIELDS.items() if name in names]
            raise InputError(
                f"--{name.replace('_', '-')} is a setting of {_OBJECTIVE_NAMES[owners[0]]} (--objective "
                f"{', '.join(owners)}): add --objective {owners[0]} or drop it"
            )
        if self.omega_input and not (self.objective == "imf" and self.imf_omega_max > 1):
            raise InputError("omega_input is set for --objective imf with --imf-omega-max > 1 only: drop it")
        self.omega_input = self.objective == "imf" and self.imf_omega_max > 1
        if self.objective == "flow":
            return
        depth = model_shape(self.model)[0]
        lo, hi = self.dmf_guidance_interval
        for bad, message in (
            (self.dmf_depth is not None and self.dmf_depth > depth,
             f"--dmf-depth {self.dmf_depth}: {self.model} has {depth} blocks; pass 0..{depth}"),
            ((self.velocity_head_depth or 0) > depth,
             f"--velocity-head-depth {self.velocity_head_depth}: {self.model} has {depth} blocks; pass 0..{depth}"),
            (lo > hi, f"--dmf-guidance-interval {lo:g} {hi:g}: pass LO <= HI"),
            ((lo, hi) != (0.0, 1.0) and self.meanflow_omega == 1,
             "--dmf-guidance-interval says where DMF guides: pass --meanflow-omega > 1 with it"),
            (self.alphaflow_end is not None and self.alphaflow_start >= self.alphaflow_end,
             f"--alphaflow-start {self.alphaflow_start} must be below --alphaflow-end {self.alphaflow_end}"),
        ):
            if bad:
                raise InputError(message)
        why = {
            "prediction": (self.prediction != "velocity", "the model predicts the average velocity: drop --prediction"),
            "interpolant": (
                self.interpolant not in ("linear", "gvp"),
                "jumps reach t = 1, where VP's sigma'_t is infinite: use --interpolant linear or gvp",
            ),
            "num_timesteps": (self.num_timesteps is not None, "the jumps need continuous time: drop --num-timesteps"),
            "loss_weight": (
                self.loss_weight is not None,
                "the adaptive weight (--meanflow-p, --meanflow-c) replaces it: drop --loss-weight",
            ),
            "repa_encoder": (
                bool(self.repa_encoder),
                "the alignment term is not combined with it yet: drop --repa-encoder",
            ),
        }
        for name, (bad, message) in why.items():
            if bad:
                raise InputError(f"--objective {self.objective}: {message}")

    def model_form(self) -> dict:
        """The ``SiT`` options of this config's model: the form of its second time, its omega input, its velocity
        head (``model_form`` of the fields)."""
        return model_form(self.objective, self.dmf_depth, self.omega_input, self.velocity_head_depth)

    def transport(self) -> Transport:
        params = {k: getattr(self, k) for k in DENSITY_PARAMS if getattr(self, k) is not None}
        return Transport(
            self.interpolant,
            self.prediction,
            self.loss_weight,
            self.train_eps,
            self.sample_eps,
            self.num_timesteps,
            self.time_density,
            params,
            time_shift=self.resolved_time_shift(),
        )

    def new_model(self, projector_dims: tuple[int, ...] = ()) -> torch.nn.Module:
        """A freshly initialised model of this config's architecture and data shape, with a
        ``repa_projector_dim``-wide projector to each of ``projector_dims`` (the encoders' widths)."""
        if self.model in DDT_models:
            head = {k: v for k, v in (("head_width", self.head_width), ("head_depth", self.head_depth)) if v}
            return DDT_models[self.model](input_size=self.input_size, in_channels=self.in_channels,
                                          num_classes=self.num_classes, class_dropout_prob=self.class_dropout_prob,
                                          **head)
        return SiT_models[self.model](
            input_size=self.input_size,
            in_channels=self.in_channels,
            num_classes=self.num_classes,
            class_dropout_prob=self.class_dropout_prob,
            learn_sigma=self.learn_sigma,
            projector_dims=projector_dims,
            projector_hidden=self.repa_projector_dim,
            **self.model_form(),
        )


def model_form(objective: str, dmf_depth: int | None = None, omega_input: bool = False,
               velocity_head_depth: int | None = None) -> dict:
    """The ``models.SiT`` options a run's settings give its model: ``dmf_depth`` (DMF's form of the second time),
    else ``mean_flow`` (an r embedder) for every objective but flow; ``omega_input``; ``velocity_head_depth``.
    ``dmf_depth`` is not in the weights: a run records it, and a reader of the weights takes it from there."""
    form: dict = {}
    if dmf_depth is not None:
        form["dmf_depth"] = dmf_depth
    elif objective != "flow":
        form["mean_flow"] = True
    if omega_input:
        form["omega_input"] = True
    if velocity_head_depth:
        form["velocity_head_depth"] = velocity_head_depth
    return form


# The domain of every numeric TrainConfig field (tests/test_domains.py checks that none is missing and
# builds its bad values from this table). Fields filled from the data are declared too: they are
# checked when a config.json is read back.
TRAIN_DOMAINS: dict[str, Domain] = dict(
    image_size=COUNT,
    class_dropout_prob=Domain(0, 1, hi_open=True),
    train_eps=EPS,
    sample_eps=EPS,
    num_timesteps=Domain(2, integer=True),
    logit_mean=FINITE,
    logit_std=POSITIVE,
    mode_scale=Domain(-1, 1.75),
    lr=POSITIVE,
    weight_decay=NON_NEGATIVE,
    ema_decay=Domain(0, 1, hi_open=True),
    batch_size=COUNT,
    steps=COUNT,
    epochs=COUNT,
    grad_clip=POSITIVE,
    seed=SEED,
    num_workers=COUNT_OR_ZERO,
    threads=COUNT_OR_ZERO,
    log_every=COUNT,
    ckpt_every=COUNT,
    sample_every=COUNT_OR_ZERO,
    repa_depth=COUNT,
    repa_weight=NON_NEGATIVE,
    repa_projector_dim=COUNT,
    eval_every=COUNT_OR_ZERO,
    eval_num=Domain(2, integer=True),
    eval_steps=COUNT,
    in_channels=COUNT,
    input_size=COUNT,
    num_classes=COUNT_OR_ZERO,
    latent_scale=POSITIVE,
    meanflow_share=Domain(0, 1),
    meanflow_p=NON_NEGATIVE,
    meanflow_c=POSITIVE,
    meanflow_omega=Domain(1),
    ema_snapshots_every=COUNT_OR_ZERO,
    ema_sigma_rels=Domain(0, math.sqrt(1 / 12), lo_open=True, hi_open=True),  # training.posthoc_ema.MAX_SIGMA_REL
    dmf_depth=COUNT_OR_ZERO,
    dmf_guidance_interval=Domain(0, 1),
    imf_omega_max=Domain(1),
    imf_omega_beta=FINITE,
    velocity_head_depth=COUNT_OR_ZERO,
    alphaflow_start=COUNT_OR_ZERO,
    alphaflow_end=COUNT,
    alphaflow_gamma=POSITIVE,
    init_from_step=COUNT_OR_ZERO,
    rae_patch=COUNT,
    time_shift=POSITIVE,
    head_width=COUNT,
    head_depth=COUNT,
)
MEANFLOW_FIELDS = ("meanflow_share", "meanflow_p", "meanflow_c", "meanflow_omega")
REPA_FIELDS = ("repa_depth", "repa_weight", "repa_projector_dim")  # nothing without repa_encoder
EVAL_FIELDS = ("eval_ref", "eval_num", "eval_method", "eval_steps", "eval_metrics", "eval_labels",
               "inception_weights")  # eval_every
OBJECTIVES = ("flow", "meanflow", "dmf", "imf", "alphaflow")
# The settings each objective reads (besides the transport's); any other objective refuses them when given.
OBJECTIVE_FIELDS = {
    "meanflow": MEANFLOW_FIELDS,
    "dmf": (*MEANFLOW_FIELDS, "dmf_depth", "dmf_guidance_interval"),
    "imf": (*MEANFLOW_FIELDS[:3], "dmf_depth", "imf_omega_max", "imf_omega_beta", "velocity_head_depth"),
    "alphaflow": (*MEANFLOW_FIELDS, "dmf_depth", "alphaflow_start", "alphaflow_end", "alphaflow_gamma"),
}
FEWSTEP_FIELDS = tuple(dict.fromkeys(n for names in OBJECTIVE_FIELDS.values() for n in names))
_OBJECTIVE_NAMES = {"meanflow": "mean flows", "dmf": "Decoupled MeanFlow", "imf": "improved MeanFlow",
                    "alphaflow": "AlphaFlow"}
_FIELD_DEFAULTS = {f.name: f.default_factory() if callable(f.default_factory) else f.default
                   for f in fields(TrainConfig)}

# Settings that may change when a run is resumed; every other one is fixed by the run's config.json.
# (lr and grad_clip so that a diverged run can go on from its last good checkpoint more gently.)
RESUMABLE = {
    "steps",
    "epochs",
    "lr",
    "grad_clip",
    "log_every",
    "ckpt_every",
    "sample_every",
    "num_workers",
    "threads",
    "precision",
    "compile",
    "fused_adamw",
    "tf32",
    "grad_checkpointing",
    "log",
    "inception_weights",
    "rae_decoder",  # decodes previews and evaluations only; the training is the same
}


def parse_time_shift(value: float | str | None) -> float | str | None:
    """A time shift as given: a number (a numeric string becomes one) or a name of ``NAMED_SHIFTS``."""
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if value is None else float(value)
    if str(value) in NAMED_SHIFTS:
        return str(value)
    try:
        return float(value)
    except ValueError:
        raise InputError(f"--time-shift {value!r}: pass a number > 0 (1: none) or one of "
                         f"{', '.join(NAMED_SHIFTS)}") from None


def field_names(cls) -> set[str]:
    return {f.name for f in fields(cls)}
