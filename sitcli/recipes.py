"""Named sampling recipes: the sampler settings behind published numbers, as sit settings.

"Which exact sampler gave the paper's FID?" is the question users of every SiT-family repository ask
(SiT #18 and #31, REPA-E #3, RAE #50, LightningDiT #22). A recipe answers it once: the ``SampleConfig``
settings (field name -> value) that redo a published sampler in sit, the file and lines (or paper
table) each value was read from, the checkpoint it belongs to, and what the reference does that sit
cannot set today. ``expand`` fills a recipe in and lets any given setting override it.

Conventions the values translate (each checked in tests/test_recipes.py against the reference code):
- Steps count model evaluations the way sit does. The official SiT code, LightningDiT and RAE lay
  ``num_steps`` *points* on their grids (``torch.linspace(t0, t1, num_steps)``), so a fixed-grid ODE of
  their ``num_steps`` N takes N - 1 steps: sit's ``steps`` is N - 1. Their SDE takes N - 1 steps and
  the last step, which sit's ``steps`` = N counts the same way.
- Guidance channels: the official SiT and LightningDiT ``forward_with_cfg`` guide the first 3 output
  channels only (``cfg_channels="3"``); REPA and RAE guide all of them.
- Time: REPA's time is 1 - t (``cfg_interval_in="repa"``); LightningDiT's is sit's own t. A time
  shift is written in sit's (SD3's) convention: ``lightningdit_time_shift`` and ``rae_time_shift``
  convert the references' own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from sitcli.errors import InputError


def lightningdit_time_shift(timestep_shift: float) -> float:
    """sit's ``time_shift`` for LightningDiT's ``timestep_shift`` s_L.

    LightningDiT shifts its grid in sit's own time (t = 0 noise) by t' = s_L t / (1 + (s_L - 1) t)
    (``transport/integrators.py`` lines 96-101 of hustvl/LightningDiT). Dividing through by s_L gives
    t' = t / (1 / s_L + (1 - 1 / s_L) t), which is sit's phi_s with s = 1 / s_L; its 0.3 is sit's 10 / 3.
    """
    if not timestep_shift > 0:
        raise InputError(f"LightningDiT's timestep_shift must be > 0, got {timestep_shift}")
    return 1 / timestep_shift


def rae_time_shift(latent_dims: int, base_dims: int = 4096) -> float:
    """sit's ``time_shift`` for RAE's dimension-dependent shift, sqrt(latent_dims / base_dims).

    RAE (``src/sample_ddp.py`` lines 135-137 of bytetriper/RAE) takes k = sqrt(C H W / 4096) and shifts
    its time s (s = 1 noise) by s' = k s / (1 + (k - 1) s) (``src/stage2/transport/integrators.py``
    lines 100-101): SD3's shift in SD3's own convention, which is sit's ``time_shift`` = k.
    """
    if latent_dims < 1 or base_dims < 1:
        raise InputError(f"latent_dims and base_dims must be >= 1, got {latent_dims} and {base_dims}")
    return math.sqrt(latent_dims / base_dims)


@dataclass(frozen=True)
class Recipe:
    """One published sampler.

    Attributes:
        name: what ``--recipe`` takes.
        summary: one line for ``sit recipes``.
        result: the published number it reproduces, and where it is printed.
        checkpoint: the checkpoint it belongs to (a recipe is tuned for one model).
        source: the files and lines (or paper table) each value was read from.
        settings: ``SampleConfig`` field -> value.
        requires: ``SampleConfig`` fields the user must add (e.g. the autoguidance model's path).
        lacks: what the reference does that sit cannot set today ("" when nothing).
    """

    name: str
    summary: str
    result: str
    checkpoint: str
    source: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    lacks: str = ""

    def __post_init__(self):
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))


_SIT_CFG = dict(cfg_scale=1.5, cfg_channels="3", cfg_interval=(0.0, 1.0), cfg_interval_in="t")

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe(
        name="sit-sde",
        summary="SiT paper's SDE: Euler-Maruyama, 250 steps (249 + the mean last step of 0.04), w = sigma_t, "
                "cfg 1.5 on 3 channels",
        result="FID-50K 2.06 on ImageNet 256 with cfg 1.5 (README.md line 55, the paper's best); 8.3 unguided with "
               "--cfg-scale 1 (the authors in willisma/SiT#31: the 8.3 is the SDE's, not the ODE's)",
        checkpoint="the official SiT-XL/2 256x256 (SiT-XL-2-256.pt, 7M steps, linear interpolant, velocity)",
        source="willisma/SiT: train_utils.py lines 22-32 (--sampling-method Euler, --diffusion-form sigma, "
               "--diffusion-norm 1, --last-step Mean, --last-step-size 0.04), sample_ddp.py line 217 "
               "(--num-sampling-steps 250), transport/integrators.py lines 22-23 and 70 (num_steps points: 249 "
               "steps, then the last step), models.py lines 249-265 (forward_with_cfg guides channels [:3])",
        settings=dict(sampler="sde", method="euler", steps=250, w="sigma", w_norm=1.0, last_step="mean",
                      last_step_size=0.04, spacing="uniform", time_shift=1.0, **_SIT_CFG),
    ),
    Recipe(
        name="sit-ode-heun",
        summary="SiT paper's ODE as its authors ran it: Heun, 125 steps (250 NFE), cfg 1.5 on 3 channels",
        result="the ODE setting the authors name for the released SiT-XL/2 with cfg 1.5 (willisma/SiT#18; the "
               "paper's headline 2.06 is the SDE's, see sit-sde)",
        checkpoint="the official SiT-XL/2 256x256 (SiT-XL-2-256.pt)",
        source="willisma/SiT#18 (the authors: second-order Heun ODE solver with 125 steps, 250 NFE, cfg 1.5); "
               "models.py lines 249-265 (channels [:3])",
        settings=dict(sampler="ode", method="heun", steps=125, spacing="uniform", time_shift=1.0, **_SIT_CFG),
    ),
    Recipe(
        name="sit-ode-dopri5",
        summary="SiT repo's default ODE: dopri5, atol 1e-6, rtol 1e-3, cfg 1.5 on 3 channels",
        result="FID-50K 2.08 measured by a user with sample_ddp.py ODE --cfg-scale 1.5 (willisma/SiT#31); 9.5 "
               "unguided there",
        checkpoint="the official SiT-XL/2 256x256 (SiT-XL-2-256.pt)",
        source="willisma/SiT: train_utils.py lines 14-18 (--sampling-method dopri5, --atol 1e-6, --rtol 1e-3), "
               "README.md line 135 (sample_ddp.py ODE), models.py lines 249-265 (channels [:3])",
        settings=dict(sampler="ode", method="dopri5", atol=1e-6, rtol=1e-3, **_SIT_CFG),
    ),
    Recipe(
        name="repa",
        summary="REPA's SDE: Euler-Maruyama, 250 steps (249 + the mean last step of 0.04), w = 1 - t, cfg 1.8 "
                "guided where REPA's time s <= 0.7 (t >= 0.3)",
        result="FID-50K 1.42 on ImageNet 256 (README.md line 22)",
        checkpoint="REPA's SiT-XL/2 (4M iterations, linear path, encoder depth 8, DINOv2-B; README.md line 138)",
        source="sihyun-yu/REPA: README.md lines 124-135 (generate.py --mode sde --num-steps 250 --cfg-scale 1.8 "
               "--guidance-high 0.7), samplers.py lines 105-183 (linspace(1, 0.04, num_steps) then a drift step to "
               "0 without noise; diffusion 2 s, i.e. sit's w = s = 1 - t on both REPA paths; guidance where "
               "guidance_low <= s <= guidance_high, on all channels)",
        settings=dict(sampler="sde", method="euler", steps=250, w="linear", w_norm=1.0, last_step="mean",
                      last_step_size=0.04, spacing="uniform", time_shift=1.0, cfg_scale=1.8, cfg_channels="all",
                      cfg_interval=(0.0, 0.7), cfg_interval_in="repa"),
    ),
    Recipe(
        name="lightningdit",
        summary="LightningDiT's ODE: Euler, 250 grid points (249 steps), shifted by its timestep_shift 0.3 "
                "(sit's 10/3), cfg 6.7 for t >= 0.125 on 3 channels",
        result="FID-50K 1.35 on ImageNet 256 (configs/reproductions/lightningdit_xl_vavae_f16d32_800ep_cfg.yaml "
               "line 66; README.md line 90)",
        checkpoint="LightningDiT-XL/1 on VA-VAE f16d32, 800 epochs (lightningdit-xl-imagenet256-800ep.pt)",
        source="hustvl/LightningDiT: configs/reproductions/lightningdit_xl_vavae_f16d32_800ep_cfg.yaml lines 58-76 "
               "(mode ODE, euler, num_sampling_steps 250, cfg_scale 6.7, cfg_interval_start 0.125, timestep_shift "
               "0.3), transport/integrators.py lines 94-101 (linspace(t0, t1, num_steps), then the shift), "
               "models/lightningdit.py lines 420-442 (guides channels [:3] where t >= cfg_interval_start)",
        settings=dict(sampler="ode", method="euler", steps=249, spacing="uniform",
                      time_shift=lightningdit_time_shift(0.3), cfg_scale=6.7, cfg_channels="3",
                      cfg_interval=(0.125, 1.0), cfg_interval_in="t"),
        lacks="LightningDiT normalises its latents by a per-channel mean and std (latent_norm: true), which sit's "
              "single latent_scale cannot express; a model of its architecture is not loadable by sit today",
    ),
    Recipe(
        name="rae",
        summary="RAE's ODE: Euler, 50 grid points (49 steps), shifted by sqrt(16*16*768 / 4096), autoguidance 1.42",
        result="FID-50K 1.13 on ImageNet 256 with guidance (the RAE paper's abstract)",
        checkpoint="RAE's DiT^DH-XL on DINOv2-B (ImageNet 256), guided by its DiT^DH-S trained 14 epochs",
        source="bytetriper/RAE: configs/stage2/sampling/ImageNet256/DiTDHXL-DINOv2-B_AG.yaml lines 40-78 (ODE, euler, "
               "num_steps 50, autoguidance scale 1.42 over t 0..1, latent 768x16x16), src/sample_ddp.py lines 135-137 "
               "(shift sqrt(dim / 4096)), src/stage2/transport/integrators.py lines 100-101 (grid), "
               "src/stage2/models/DDT.py lines 391-408 (autoguidance on all channels), src/sample_ddp.py line 308 "
               "(--label-sampling equal: exactly 50 per class)",
        settings=dict(sampler="ode", method="euler", steps=49, spacing="uniform",
                      time_shift=rae_time_shift(16 * 16 * 768), cfg_scale=1.0, guidance_scale=1.42,
                      cfg_interval=(0.0, 1.0), cfg_interval_in="t", labels="balanced"),
        requires=("guidance_model",),
        lacks="RAE's grid ends at its time 1/1000 before the shift (src/stage2/transport/transport.py line 137), "
              "t = 0.99311 in sit's time after it, where sit's grid ends at t = 1; a DiT^DH is not loadable by sit "
              "today",
    ),
    Recipe(
        name="meanflow",
        summary="MeanFlow's one step: a single jump from noise to data (1 NFE), no guidance at sampling",
        result="FID-50K 11.4 for the released MF-B/4 checkpoint (README.md line 53 of Gsunshine/meanflow); the paper "
               "reports 1-NFE 3.43 for MF-XL/2",
        checkpoint="a mean-flow model (sit train --objective meanflow; MeanFlow's own MF-B/4 is a JAX checkpoint)",
        source="Gsunshine/meanflow: configs/run_b4.yml lines 28-29 (sampling num_steps 1), meanflow.py lines 121-124 "
               "(default schedule [1.0, 0.0]: one jump), lines 111-113 (z - (t - r) u)",
        settings=dict(sampler="meanflow", method="jump", steps=1, cfg_scale=1.0),
    ),
)}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; an unknown name is refused with the list of known ones."""
    if name not in RECIPES:
        raise InputError(f"unknown --recipe {name!r}; choose one of {', '.join(RECIPES)} (sit recipes lists them)")
    return RECIPES[name]


def _same(a: Any, b: Any) -> bool:
    # A flag gives cfg_interval as a list or tuple of numbers; compare it as a tuple.
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return tuple(a) == tuple(b)
    return a == b


def expand(recipe_name: str, overrides: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """The settings of a recipe with ``overrides`` (settings the user gave) on top.

    Returns ``(settings, overridden)``: every recipe setting, replaced by the given value where one was
    given, plus the given settings the recipe does not fix; and the names of recipe settings that a
    given value changed, in the recipe's order (an override equal to the recipe's value is not one).
    """
    recipe = get_recipe(recipe_name)
    overrides = dict(overrides or {})
    overridden = [k for k, v in recipe.settings.items() if k in overrides and not _same(overrides[k], v)]
    return {**recipe.settings, **overrides}, overridden


def as_flags(settings: Mapping[str, Any]) -> str:
    """``settings`` as ``sit sample`` flags, e.g. ``--sampler sde --steps 250 --cfg-interval 0 0.7``."""
    parts = []
    for name, value in settings.items():
        flag = "--num-samples" if name == "num" else "--" + name.replace("_", "-")
        if isinstance(value, (list, tuple)):
            parts.append(f"{flag} {' '.join(f'{v:g}' for v in value)}")
        elif isinstance(value, float):
            parts.append(f"{flag} {value:.10g}")
        elif value is not None:
            parts.append(f"{flag} {value}")
    return " ".join(parts)
