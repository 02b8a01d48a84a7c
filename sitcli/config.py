"""The settings of a job as data: ``TrainConfig`` is a run's ``config.json``, ``SampleConfig`` a
sample folder's ``sample.json``.

A config is a schema: it validates values and builds the model and transport it describes, and
touches no disk. Defaults that depend on the data (the digits quickstart versus the paper's
ImageNet settings) are not applied here but by ``sitcli.training.presets.apply_presets``, so a
config built for a foreign checkpoint never inherits a preset it did not ask for.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields

import torch

from sitcli.data import DIGITS
from sitcli.errors import InputError
from sitcli.models import SIZES, SiT_models
from sitcli.runtime import PRECISIONS
from sitcli.transport import LAST_STEPS, ODE_METHODS, SDE_METHODS, Transport
from sitcli.transport.diffusion import check_diffusion_coefficient
from sitcli.transport.time_conventions import CONVENTIONS
from sitcli.transport.time_grids import SPACINGS
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
    model: str | None = None  # a key of models.SiT_models
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
    # Filled from the data when the run starts (what a sampler needs to rebuild the model):
    in_channels: int | None = None
    input_size: int | None = None
    num_classes: int | None = None
    latent_scale: float | None = None

    def __post_init__(self):
        if self.loss_weight == "none":
            self.loss_weight = None
        # One path per entry, as given: a comma may be part of a path (several encoders: several entries).
        if isinstance(self.repa_encoder, str):
            self.repa_encoder = [self.repa_encoder]
        self.repa_encoder = [str(p) for p in self.repa_encoder or [] if str(p)]

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "TrainConfig":
        unknown = sorted(set(values) - field_names(cls))
        if unknown or "data" not in values:
            raise InputError(f"{source} is not a sit training config (unknown keys: {', '.join(unknown) or 'none'}; needs 'data')")
        # A run from before TF32 was a setting computed its matmuls in full float32 (torch's default):
        # it goes on that way when resumed, not with the new default.
        return cls(**{"tf32": False, **values})

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        """Refuse settings that cannot train (call once the presets are applied)."""
        if self.model not in SiT_models:
            raise InputError(f"unknown model {self.model!r}; choose one of {', '.join(SiT_models)}")
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}; choose fp32 or bf16 (fp16 on CUDA)")
        if self.steps is not None and self.steps < 1 or self.epochs is not None and self.epochs < 1:
            raise InputError("--steps and --epochs must be at least 1")
        for name in ("lr", "batch_size", "log_every", "ckpt_every"):
            if getattr(self, name) <= 0:
                raise InputError(f"--{name.replace('_', '-')} must be positive")
        if not 0 <= self.ema_decay < 1:
            raise InputError(f"--ema-decay {self.ema_decay} must lie in [0, 1), e.g. 0.9999")
        if self.repa_encoder:
            depth = SIZES[self.model.split("-")[1].split("/")[0]][0]
            if not 1 <= self.repa_depth <= depth:
                raise InputError(f"--repa-depth {self.repa_depth} must name a block of {self.model}: 1..{depth}")
            if self.repa_weight < 0 or self.repa_projector_dim < 1:
                raise InputError("--repa-weight must be >= 0 and --repa-projector-dim >= 1")
        transport = self.transport()  # raises InputError for an invalid interpolant / prediction / loss-weight / density
        for name, value in transport.time_density_params.items():  # config.json records the values used, not "default"
            setattr(self, name, value)
        if self.eval_every < 0 or self.eval_every and (self.eval_ref is None or self.eval_num < 2 or self.eval_steps < 1):
            raise InputError("--eval-every N needs --eval-ref STATS.npz (from `sit fid REF --save-stats STATS.npz`), "
                             "--eval-num of at least 2 and --eval-steps of at least 1")
        if self.eval_method not in ODE_METHODS:
            raise InputError(f"--eval-method {self.eval_method!r} is not an ODE method; choose one of {', '.join(ODE_METHODS)}")

    def transport(self) -> Transport:
        params = {k: getattr(self, k) for k in DENSITY_PARAMS if getattr(self, k) is not None}
        return Transport(self.interpolant, self.prediction, self.loss_weight, self.train_eps, self.sample_eps,
                         self.num_timesteps, self.time_density, params)

    def build_model(self, projector_dims: tuple[int, ...] = ()) -> torch.nn.Module:
        """A freshly initialised model of this config's architecture and data shape, with a
        ``repa_projector_dim``-wide projector to each of ``projector_dims`` (the encoders' widths)."""
        return SiT_models[self.model](
            input_size=self.input_size, in_channels=self.in_channels, num_classes=self.num_classes,
            class_dropout_prob=self.class_dropout_prob, learn_sigma=self.learn_sigma,
            projector_dims=projector_dims, projector_hidden=self.repa_projector_dim,
        )


# Settings that may change when a run is resumed; every other one is fixed by the run's config.json.
# (lr and grad_clip so that a diverged run can go on from its last good checkpoint more gently.)
RESUMABLE = {"steps", "epochs", "lr", "grad_clip", "log_every", "ckpt_every", "sample_every", "num_workers", "threads",
             "precision", "compile", "fused_adamw", "tf32", "grad_checkpointing", "log", "inception_weights"}


@dataclass
class SampleConfig:
    """Every sampling setting (``sample.json`` in the output folder records the image-changing ones)."""

    ckpt: str
    out: str | None = None  # default: <run>/samples, or <name>-samples/ beside a checkpoint file
    model: str | None = None  # checked against the architecture of ckpt when given
    src_format: str | None = None  # format of ckpt (sit convert's --from); None: detected
    ema: bool = True
    sampler: str = "ode"
    method: str | None = None  # ode: adams; sde: euler
    steps: int | None = None  # ode: 50; sde: 250
    atol: float = 1e-6
    rtol: float = 1e-3
    w: str = "sigma"  # the SDE's diffusion coefficient w(t)
    w_norm: float = 1.0
    last_step: str = "euler"  # the official code's default is "mean" (see transport.samplers.sample_sde)
    last_step_size: float = 0.04
    cfg_scale: float = 1.0
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    cfg_channels: str = "all"
    cfg_interval_in: str = "t"  # the convention of cfg_interval (transport.time_conventions.CONVENTIONS)
    guidance_model: str | None = None  # autoguidance: the weak model (any checkpoint load_model reads)
    guidance_scale: float = 1.0  # autoguidance's w (1 = none)
    spacing: str | None = None  # the time grid (transport.time_grids.SPACINGS); None: the method's own
    time_shift: float = 1.0  # SD3's shift s of the time grid (1 = none)
    edm_rho: float = 7.0  # rho of the edm spacing
    num: int = 64
    batch_size: int = 64
    seed: int = 0
    precision: str = "fp32"
    compile: bool = False  # torch.compile the model (fused kernels; float round-off differences)
    tf32: bool = True  # TF32 float32 matmuls/convolutions on CUDA (runtime.tf32); no effect on CPU
    class_labels: str | None = None  # "3", "1,4,7" (cycled), or None for uniform random labels
    npz: bool = False
    grid: str | None = None
    vae: str | None = None
    threads: int | None = None  # torch intra-op threads; None: the run's setting, 0: torch's default
    # Only for a checkpoint that does not record its transport (a run's config.json fixes them):
    interpolant: str | None = None
    prediction: str | None = None
    sample_eps: float | None = None

    def __post_init__(self):
        if self.sampler not in ("ode", "sde"):
            raise InputError(f"unknown sampler {self.sampler!r}; choose ode or sde")
        self.method = self.method or ("adams" if self.sampler == "ode" else "euler")
        self.steps = self.steps or (50 if self.sampler == "ode" else 250)
        self.cfg_interval = tuple(float(v) for v in self.cfg_interval)
        if self.num < 1 or self.batch_size < 1:
            raise InputError("--num and --batch-size must be at least 1")
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}; choose fp32 or bf16 (fp16 on CUDA)")
        methods = list(ODE_METHODS if self.sampler == "ode" else SDE_METHODS)
        if self.method not in methods:
            raise InputError(f"unknown {self.sampler.upper()} method {self.method!r}; choose one of {', '.join(methods)}")
        if self.sampler == "sde":
            self.w = check_diffusion_coefficient(self.w)
            if self.last_step not in LAST_STEPS:
                raise InputError(f"unknown --last-step {self.last_step!r}; choose one of {', '.join(LAST_STEPS)}")
        if self.cfg_channels != "all" and not (str(self.cfg_channels).isdigit() and int(self.cfg_channels) > 0):
            raise InputError(f"--cfg-channels {self.cfg_channels!r}: pass 'all' or a number of channels such as 3")
        self._check_time_grid()
        self._check_guidance()

    def _check_time_grid(self) -> None:
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise InputError(f"unknown --spacing {self.spacing!r}; choose one of {', '.join(SPACINGS)}")
        if not self.time_shift > 0:
            raise InputError(f"--time-shift {self.time_shift}: pass s > 0 (1 is no shift)")
        if not self.edm_rho > 0 or (self.edm_rho != 7.0 and self.spacing != "edm"):
            raise InputError(f"--edm-rho {self.edm_rho}: pass rho > 0, together with --spacing edm")
        if self.sampler == "ode" and ODE_METHODS[self.method].kind == "adaptive" and (
                self.time_shift != 1.0 or self.spacing is not None):
            raise InputError(f"--method {self.method} is adaptive and chooses its own steps: --time-shift and "
                             "--spacing apply to fixed-grid methods, adams and the SDE; drop them or pick such a method")

    def _check_guidance(self) -> None:
        if self.cfg_interval_in not in CONVENTIONS:
            raise InputError(f"unknown --cfg-interval-in {self.cfg_interval_in!r}; choose one of {', '.join(CONVENTIONS)}")
        if self.guidance_model is None:
            if self.guidance_scale != 1.0:
                raise InputError("--guidance-scale is autoguidance's scale: pass --guidance-model CKPT with it, or use --cfg-scale")
            return
        if self.cfg_scale != 1.0:
            raise InputError("--guidance-model (autoguidance) and --cfg-scale (classifier-free guidance) do not combine: pick one")
        if self.cfg_channels != "all":
            raise InputError("--cfg-channels applies to classifier-free guidance only: drop it with --guidance-model")

    def transport_overrides(self) -> dict:
        """The transport settings given for a checkpoint that does not record its own."""
        given = {"interpolant": self.interpolant, "prediction": self.prediction, "sample_eps": self.sample_eps}
        return {k: v for k, v in given.items() if v is not None}

    def record(self) -> dict:
        """The settings that decide the images (what ``sample.json`` must match to add to a folder)."""
        settings = {k: v for k, v in asdict(self).items() if k not in FREE_SETTINGS}
        settings["cfg_interval"] = list(settings["cfg_interval"])
        return settings

    @classmethod
    def recorded_before(cls, saved: dict) -> dict:
        """A ``sample.json`` written by an older sit, completed with what it implies for settings
        that did not exist then: their defaults, except where OLD_SAMPLE_DEFAULTS says otherwise."""
        defaults = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
        defaults["cfg_interval"] = list(defaults["cfg_interval"])
        return {**defaults, **OLD_SAMPLE_DEFAULTS, **saved}


# Settings that do not change any image: they may differ when a folder is filled in several runs.
FREE_SETTINGS = {"out", "num", "batch_size", "npz", "grid", "threads"}

# What a sample.json written before a setting existed implies for it (the images were drawn that way).
OLD_SAMPLE_DEFAULTS = {"tf32": False}
# Settings a sampler never reads: an ODE folder's images do not depend on the SDE's w or last step.
UNUSED_BY = {"ode": {"w", "w_norm", "last_step", "last_step_size"}, "sde": {"atol", "rtol"}}


def field_names(cls) -> set[str]:
    return {f.name for f in fields(cls)}
