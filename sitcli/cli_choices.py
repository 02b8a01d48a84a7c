"""The CLI's choice types, help phrases and help panels, built from the library's registries.

A flag that takes one of a set is typed by an Enum made here from the registry that holds the set
(interpolants, predictions, sampler methods, diffusion coefficients, ...), so --help lists the
choices, a typo exits 2 naming them, and neither can drift from the code.
"""

from __future__ import annotations

import enum
import inspect
from typing import Callable

from sitcli.runtime import PRECISIONS
from sitcli.transport import (DIFFUSION_COEFFICIENTS, INTERPOLANTS, LAST_STEPS, LIKELIHOOD_METHODS, LOSS_WEIGHTS,
                              MEANFLOW_METHODS, ODE_METHODS, PREDICTIONS, SDE_METHODS)
from sitcli.transport.time_conventions import CONVENTIONS
from sitcli.transport.time_grids import SPACINGS
from sitcli.transport.time_sampling import TIME_DENSITIES


def choices(name: str, *registries) -> type[enum.Enum]:
    """The names of the library's registries as a choice type: --help lists them, a typo exits 2 naming them."""
    names = dict.fromkeys("none" if n is None else str(n) for registry in registries for n in registry)
    return enum.Enum(name, {n: n for n in names}, type=str)


Interpolant, Prediction, LossWeight = (choices(n, r) for n, r in (
    ("Interpolant", INTERPOLANTS), ("Prediction", PREDICTIONS), ("LossWeight", LOSS_WEIGHTS)))
Precision, Sampler, OdeMethod = choices("Precision", PRECISIONS), choices("Sampler", ("ode", "sde", "meanflow")), choices("OdeMethod", ODE_METHODS)
Method, LikelihoodMethod = choices("Method", ODE_METHODS, SDE_METHODS, MEANFLOW_METHODS), choices("LikelihoodMethod", LIKELIHOOD_METHODS)
Objective = choices("Objective", ("flow", "meanflow"))
DiffusionCoefficient, LastStep = choices("DiffusionCoefficient", DIFFUSION_COEFFICIENTS), choices("LastStep", LAST_STEPS)


TimeDensity, Spacing, Convention = (choices(n, r) for n, r in (
    ("TimeDensity", TIME_DENSITIES), ("Spacing", SPACINGS), ("Convention", CONVENTIONS)))


CHOICE_TYPES = {t.__name__ for t in (Interpolant, Prediction, LossWeight, Precision, Sampler, OdeMethod, Method, Objective,
                                     LikelihoodMethod, DiffusionCoefficient, LastStep, TimeDensity, Spacing, Convention)}


def listed(registry) -> str:
    """A registry's names for a help text: "linear | gvp | vp"."""
    return " | ".join("none" if n is None else str(n) for n in registry)


def plain(flags: dict) -> dict:
    """Choice members back to the plain strings the library takes."""
    return {k: v.value if isinstance(v, enum.Enum) else v for k, v in flags.items()}


def methods_by_kind(names) -> str:
    """"euler|heun|midpoint|rk4 (fixed grid), adams (multistep) or dopri5|... (adaptive)" from the registry."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(ODE_METHODS[name].kind, []).append(name)
    label = {"fixed": "fixed grid", "multistep": "multistep, one NFE per step", "adaptive": "adaptive"}
    parts = [f"{'|'.join(v)} ({label[k]})" for k, v in groups.items()]
    return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0]


METHOD_HELP = (f"ODE: {methods_by_kind(ODE_METHODS)}, default adams; SDE: {'|'.join(SDE_METHODS)}, default euler; "
               f"meanflow: {'|'.join(MEANFLOW_METHODS)}. "
               "`sit methods` lists each with its order and NFE per step.")
W_HELP = (f"The SDE's diffusion coefficient w(t) in dX = \\[v + w s] dt + sqrt(2 w) dW: {listed(DIFFUSION_COEFFICIENTS)}. "
          "The official code's --diffusion-form; the SiT paper's w_t is 2 w(t).")


def panels(**groups: tuple[str, ...]) -> Callable:
    """Group a command's options into help panels, ``panels(Panel_name=("param", ...))``, and give its choice
    options their name as metavar (the help text lists the choices)."""

    def apply(fn: Callable) -> Callable:
        panel_of = {name: title.replace("_", " ") for title, names in groups.items() for name in names}
        for name, param in inspect.signature(fn).parameters.items():
            if name in panel_of and hasattr(param.default, "rich_help_panel"):
                param.default.rich_help_panel = panel_of[name]
            if str(param.annotation).split(" |")[0] in CHOICE_TYPES and param.default.metavar is None:
                param.default.metavar = name.upper()  # the help text lists the choices; keeps 80 columns readable
        return fn

    return apply


TRAIN_PANELS = dict(
    Data_and_run=("data", "out", "resume", "image_size", "vae", "seed", "device"),
    Model=("model", "class_dropout_prob", "grad_checkpointing"),
    Transport=("interpolant", "prediction", "loss_weight", "train_eps", "sample_eps", "num_timesteps", "time_density",
               "logit_mean", "logit_std", "mode_scale"),
    Mean_flows=("objective", "meanflow_share", "meanflow_p", "meanflow_c", "meanflow_omega"),
    Optimisation=("lr", "weight_decay", "ema_decay", "batch_size", "steps", "epochs", "grad_clip", "fused_adamw"),
    Representation_alignment=("repa_encoder", "repa_depth", "repa_weight", "repa_projector_dim"),
    Logs_checkpoints_and_evaluation=("log", "log_every", "ckpt_every", "sample_every", "eval_every", "eval_num", "eval_ref",
                                     "eval_method", "eval_steps", "eval_metrics", "inception_weights"),
    Speed=("precision", "compile", "tf32", "num_workers", "threads"),
)
SAMPLE_PANELS = dict(
    Checkpoint=("ckpt", "model", "src_format", "ema", "vae", "interpolant", "prediction", "sample_eps"),
    Sampler=("sampler", "method", "steps", "atol", "rtol", "w", "w_norm", "last_step", "last_step_size", "spacing",
             "time_shift", "edm_rho"),
    Guidance=("cfg_scale", "cfg_interval", "cfg_channels", "cfg_interval_in", "guidance_model", "guidance_scale",
              "class_labels"),
    Output=("out", "num", "batch_size", "seed", "npz", "grid"),
    Speed=("precision", "compile", "tf32", "threads", "device"),
)
