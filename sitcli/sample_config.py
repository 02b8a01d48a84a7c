"""The settings of ``sit sample`` as data: ``SampleConfig`` is a sample folder's ``sample.json``.

Like ``TrainConfig`` it is a schema: it validates each value once, where the setting is defined, expands a named
recipe, and touches no disk.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from sitcli.atomic import IMAGE_FORMATS
from sitcli.config import parse_time_shift
from sitcli.domains import (COUNT, COUNT_OR_ZERO, EPS, NON_NEGATIVE_SCALE, POSITIVE, SCALE, SEED,
                            Domain, check_domains)
from sitcli.errors import InputError
from sitcli.recipes import expand, get_recipe
from sitcli.runtime import check_precision
from sitcli.seeds import LABEL_SAMPLINGS
from sitcli.transport import LAST_STEPS, MEANFLOW_METHODS, ODE_METHODS, SDE_METHODS
from sitcli.transport.diffusion import check_diffusion_coefficient
from sitcli.transport.time_conventions import CONVENTIONS
from sitcli.transport.time_grids import SPACINGS


@dataclass
class SampleConfig:
    """Every sampling setting (``sample.json`` in the output folder records the image-changing ones)."""

    ckpt: str
    out: str | None = None  # default: <run>/samples, or <name>-samples/ beside a checkpoint file
    model: str | None = None  # checked against the architecture of ckpt when given
    src_format: str | None = None  # format of ckpt (sit convert's --from); None: detected
    ema: bool = True
    sampler: str | None = "ode"
    method: str | None = None  # ode: adams; sde: euler; meanflow: jump
    steps: int | None = None  # ode: 50; sde: 250; meanflow: 1
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
    time_shift: float | str | None = None  # SD3's shift s of the time grid (1 = none; None: the run's training shift)
    edm_rho: float = 7.0  # rho of the edm spacing
    solver: str | None = None  # --method searched: the solver file from `sit search-solver`
    num: int = 64
    batch_size: int = 64
    seed: int = 0
    precision: str = "fp32"
    compile: bool = False  # torch.compile the model (fused kernels; float round-off differences)
    tf32: bool = True  # TF32 float32 matmuls/convolutions on CUDA (runtime.tf32); no effect on CPU
    class_labels: str | None = None  # "3", "1,4,7" (cycled), or None for uniform random labels
    labels: str = "random"  # random (each index its own draw) or balanced: exactly num / classes of each class
    # The named recipe (recipes.RECIPES) the sampler settings came from, and its settings given other values: recorded
    # in sample.json, built by ``SampleConfig.from_recipe``.
    recipe: str | None = None
    recipe_overrides: dict = field(default_factory=dict)
    npz: bool = False
    grid: str | None = None
    vae: str | None = None
    rae_encoder: str | None = None  # an RAE's parts, for a model that does not record them (or another decoder)
    rae_decoder: str | None = None
    latent_stats: str | None = None  # statistics, for a model that does not record them
    threads: int | None = None  # torch intra-op threads; None: the run's setting, 0: torch's default
    # Only for a checkpoint that does not record its transport (a run's config.json fixes them):
    interpolant: str | None = None
    prediction: str | None = None
    sample_eps: float | None = None
    dmf_depth: int | None = None  # a Decoupled MeanFlow file's blocks that see t, where it does not record them
    omega: float | None = None  # the guidance scale fed to a model with an omega input (iMF); None: 1

    def __post_init__(self):
        self.cfg_interval = tuple(float(v) for v in self.cfg_interval)
        self.time_shift = parse_time_shift(self.time_shift)
        named = isinstance(self.time_shift, str)
        check_domains({**asdict(self), "time_shift": None if named else self.time_shift}, SAMPLE_DOMAINS, SAMPLE_FLAGS)
        check_precision(self.precision)
        if self.cfg_channels != "all" and not (str(self.cfg_channels).isdigit() and int(self.cfg_channels) > 0):
            raise InputError(f"--cfg-channels {self.cfg_channels!r}: pass 'all' or a number of channels such as 3")
        if self.grid is not None and Path(self.grid).suffix.lower() not in IMAGE_FORMATS:
            raise InputError(f"--grid {self.grid}: name an image file ({', '.join(IMAGE_FORMATS)})")
        self._check_guidance()
        self._check_labels_and_recipe()
        if self.sampler is not None:  # None: chosen by the model (``for_model``)
            self._check_sampler()

    @classmethod
    def from_recipe(cls, recipe: str, given: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
                    ) -> "SampleConfig":
        """The settings of ``recipe`` (``recipes.RECIPES``) with the ``given`` ones (the user's) on top, over
        ``defaults`` (e.g. every flag of the command line, set or not); records the recipe and which of its settings
        ``given`` changed (``recipe_overrides``).

            SampleConfig.from_recipe("repa", {"ckpt": "SiT-XL-2-repa.pt", "steps": 100})
        """
        settings, overridden = expand(recipe, given)
        missing = [name for name in get_recipe(recipe).requires if settings.get(name) is None]
        if missing:
            flags = " ".join(f"--{n.replace('_', '-')}" for n in missing)
            raise InputError(f"--recipe {recipe} needs {flags} too (sit recipes says which checkpoint)")
        return cls(**{**(defaults or {}), **settings, "recipe": recipe,
                      "recipe_overrides": {name: _plain(given[name]) for name in overridden}})

    def _check_labels_and_recipe(self) -> None:
        if self.labels not in LABEL_SAMPLINGS:
            raise InputError(f"unknown --labels {self.labels!r}; choose one of {', '.join(LABEL_SAMPLINGS)}")
        if self.labels == "balanced" and self.class_labels not in (None, ""):
            raise InputError("--class-labels fixes every label: drop it, or drop --labels balanced")
        if self.recipe is None:
            if self.recipe_overrides:
                raise InputError("recipe_overrides without a recipe: build the config with SampleConfig.from_recipe")
            return
        # A config that names a recipe holds its settings (those overridden apart): sample.json must not say otherwise.
        for name, value in get_recipe(self.recipe).settings.items():
            want = self.recipe_overrides.get(name, value)
            if _plain(getattr(self, name)) != _plain(want):
                raise InputError(f"--recipe {self.recipe} sets {name} to {want!r}, this config to "
                                 f"{getattr(self, name)!r}: build it with SampleConfig.from_recipe")

    def for_model(self, mean_flow: bool, omega_input: bool = False) -> "SampleConfig":
        """Choose the sampler the model calls for when none was given: the mean-flow jumps for a
        mean-flow model (any form of the second time: ``mean_flow`` or ``dmf_depth``), the ODE otherwise;
        refuse the jumps for a model without a second time, and ``omega`` for one without an omega input."""
        if self.omega is not None and not omega_input:
            raise InputError(
                f"--omega {self.omega:g} is the guidance scale of a model that takes omega as an input (sit train "
                "--objective imf --imf-omega-max W); this one does not: drop --omega, or use --cfg-scale"
            )
        if self.sampler is None:
            self.sampler = "meanflow" if mean_flow else "ode"
            self._check_sampler()
        elif self.sampler == "meanflow" and not mean_flow:
            raise InputError(
                "--sampler meanflow needs a mean-flow model (sit train --objective meanflow); "
                "this one predicts instantaneous velocities: use --sampler ode or sde"
            )
        return self

    def _check_sampler(self) -> None:
        if self.sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        self.method = self.method or {"ode": "adams", "sde": "euler", "meanflow": "jump"}[self.sampler]
        methods = list({"ode": ODE_METHODS, "sde": SDE_METHODS, "meanflow": MEANFLOW_METHODS}[self.sampler])
        if self.method not in methods:
            raise InputError(
                f"unknown {self.sampler.upper()} method {self.method!r}; choose one of {', '.join(methods)}"
            )
        searched = self.sampler == "ode" and ODE_METHODS[self.method].kind == "searched"
        if searched and self.solver is None:
            raise InputError("--method searched needs --solver FILE, a solver made for the model by sit search-solver")
        if self.solver is not None and not searched:
            raise InputError("--solver is read by --sampler ode --method searched only: drop it, or pass that method")
        # None, not 0, is "unset": --steps 0 is refused by its domain instead of becoming the default. A searched
        # solver's steps come from its file (``sample.prepare`` refuses --steps that differ).
        if self.steps is None and not searched:
            self.steps = {"ode": 50, "sde": 250, "meanflow": 1}[self.sampler]
        if self.sampler == "sde":
            self.w = check_diffusion_coefficient(self.w)
            if self.last_step not in LAST_STEPS:
                raise InputError(f"unknown --last-step {self.last_step!r}; choose one of {', '.join(LAST_STEPS)}")
        if self.sampler == "meanflow":
            defaults = {f.name: f.default for f in fields(SampleConfig)}
            given = [n for n in MEANFLOW_UNUSED if getattr(self, n) != defaults[n]]
            if given:
                raise InputError(
                    f"--{given[0].replace('_', '-')} does not apply to the mean-flow sampler (uniform "
                    "jumps, --steps of them): drop it, or pass --sampler ode or sde"
                )
            return
        self._check_time_grid()

    def _check_time_grid(self) -> None:
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise InputError(f"unknown --spacing {self.spacing!r}; choose one of {', '.join(SPACINGS)}")
        if self.edm_rho != 7.0 and self.spacing != "edm":
            raise InputError(f"--edm-rho {self.edm_rho}: pass it together with --spacing edm")
        if self.sampler == "ode" and ODE_METHODS[self.method].kind == "searched" and (
            self.time_shift not in (None, 1.0) or self.spacing is not None
        ):
            raise InputError(
                "--method searched steps on the times in its --solver file: drop --time-shift and --spacing"
            )
        if (
            self.sampler == "ode"
            and ODE_METHODS[self.method].kind == "adaptive"
            and (self.time_shift not in (None, 1.0) or self.spacing is not None)
        ):
            raise InputError(
                f"--method {self.method} is adaptive and chooses its own steps: --time-shift and "
                "--spacing apply to fixed-grid methods, adams and the SDE; drop them or pick such a method"
            )

    def _check_guidance(self) -> None:
        if self.cfg_interval_in not in CONVENTIONS:
            raise InputError(
                f"unknown --cfg-interval-in {self.cfg_interval_in!r}; choose one of {', '.join(CONVENTIONS)}"
            )
        if self.guidance_model is None:
            if self.guidance_scale != 1.0:
                raise InputError(
                    "--guidance-scale is autoguidance's scale: pass --guidance-model CKPT with it, or use --cfg-scale"
                )
            return
        if self.cfg_scale != 1.0:
            raise InputError(
                "--guidance-model (autoguidance) and --cfg-scale (classifier-free guidance) do not combine: pick one"
            )
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


# The domain of every numeric SampleConfig field (see TRAIN_DOMAINS). cfg_interval's ends may be inf in
# the sigma and logsnr conventions; time_conventions.interval_in_time checks them against the convention.
SAMPLE_DOMAINS: dict[str, Domain] = dict(
    steps=COUNT,
    atol=POSITIVE,
    rtol=POSITIVE,
    w_norm=NON_NEGATIVE_SCALE,
    last_step_size=Domain(0, 1, lo_open=True),
    cfg_scale=SCALE,
    cfg_interval=Domain(infinite=True),
    guidance_scale=SCALE,
    time_shift=POSITIVE,
    edm_rho=POSITIVE,
    num=COUNT,
    batch_size=COUNT,
    seed=SEED,
    threads=COUNT_OR_ZERO,
    sample_eps=EPS,
    dmf_depth=COUNT_OR_ZERO,
    omega=Domain(1),
)
SAMPLE_FLAGS = {"num": "--num-samples"}

# Settings that do not change any image: they may differ when a folder is filled in several runs.
FREE_SETTINGS = {"out", "num", "batch_size", "npz", "grid", "threads"}
# Recorded in sample.json but not compared when adding to a folder: the settings they expand to are.
PROVENANCE = {"recipe", "recipe_overrides"}

# Settings a sampler never reads: an ODE folder's images do not depend on the SDE's w or last step.
UNUSED_BY = {
    "ode": {"w", "w_norm", "last_step", "last_step_size"},
    "sde": {"atol", "rtol"},
    "meanflow": {"atol", "rtol", "w", "w_norm", "last_step", "last_step_size"},
}
SAMPLERS = ("ode", "sde", "meanflow")
# Settings the mean-flow sampler has no use for: refused when given.
MEANFLOW_UNUSED = ("atol", "rtol", "w", "w_norm", "last_step", "last_step_size", "spacing", "time_shift", "edm_rho")




def _plain(value: Any) -> Any:
    """A tuple as the list JSON makes of it, so that a setting compares equal before and after sample.json."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value
