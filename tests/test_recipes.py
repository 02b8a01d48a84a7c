"""sitcli/recipes.py: every recipe holds exactly the published values, builds a valid SampleConfig, runs the
sampler with the reference's NFE, and maps the references' time conventions onto the right sit times."""

import math
from dataclasses import fields

import pytest
import torch

from sitcli.sample_config import SampleConfig
from sitcli.errors import InputError
from sitcli.guidance import AutoGuidance, ClassifierFreeGuidance
from sitcli.recipes import RECIPES, as_flags, expand, get_recipe, lightningdit_time_shift, rae_time_shift
from sitcli.transport import GVP, Linear, Transport, sample_ode, sample_sde
from sitcli.transport.mixture import GaussianMixture
from sitcli.transport.time_conventions import interval_in_time
from sitcli.transport.time_grids import time_grid

F64 = torch.float64

# The values as read from each reference (file and lines in the comment), written out independently of the module.
PUBLISHED = {
    # willisma/SiT train_utils.py 22-32 (Euler, sigma, norm 1, Mean, 0.04), sample_ddp.py 217 (250 points:
    # 249 steps + the last step), models.py 249-265 (guidance on channels [:3]); cfg 1.5: README.md 55.
    "sit-sde": dict(sampler="sde", method="euler", steps=250, w="sigma", w_norm=1.0, last_step="mean",
                    last_step_size=0.04, spacing="uniform", time_shift=1.0, cfg_scale=1.5, cfg_channels="3",
                    cfg_interval=(0.0, 1.0), cfg_interval_in="t"),
    # willisma/SiT#18: Heun, 125 steps (250 NFE), cfg 1.5.
    "sit-ode-heun": dict(sampler="ode", method="heun", steps=125, spacing="uniform", time_shift=1.0, cfg_scale=1.5,
                         cfg_channels="3", cfg_interval=(0.0, 1.0), cfg_interval_in="t"),
    # willisma/SiT train_utils.py 14-18: dopri5, atol 1e-6, rtol 1e-3.
    "sit-ode-dopri5": dict(sampler="ode", method="dopri5", atol=1e-6, rtol=1e-3, cfg_scale=1.5, cfg_channels="3",
                           cfg_interval=(0.0, 1.0), cfg_interval_in="t"),
    # sihyun-yu/REPA README.md 124-135 and samplers.py 105-183: diffusion 2 s (w = 1 - t), linspace(1, 0.04, 250)
    # then a noiseless drift step, cfg 1.8 on all channels where s <= 0.7.
    "repa": dict(sampler="sde", method="euler", steps=250, w="linear", w_norm=1.0, last_step="mean",
                 last_step_size=0.04, spacing="uniform", time_shift=1.0, cfg_scale=1.8, cfg_channels="all",
                 cfg_interval=(0.0, 0.7), cfg_interval_in="repa"),
    # hustvl/LightningDiT configs/reproductions/lightningdit_xl_vavae_f16d32_800ep_cfg.yaml 58-76: ODE euler, 250
    # points, cfg 6.7, cfg_interval_start 0.125, timestep_shift 0.3; models/lightningdit.py 420-442: channels [:3].
    "lightningdit": dict(sampler="ode", method="euler", steps=249, spacing="uniform", time_shift=1 / 0.3,
                         cfg_scale=6.7, cfg_channels="3", cfg_interval=(0.125, 1.0), cfg_interval_in="t"),
    # bytetriper/RAE configs/stage2/sampling/ImageNet256/DiTDHXL-DINOv2-B_AG.yaml 40-78: ODE euler, 50 points,
    # autoguidance 1.42 over [0, 1]; src/sample_ddp.py 135-137: shift sqrt(196608 / 4096); line 308: labels equal.
    "rae": dict(sampler="ode", method="euler", steps=49, spacing="uniform", time_shift=math.sqrt(48), cfg_scale=1.0,
                guidance_scale=1.42, cfg_interval=(0.0, 1.0), cfg_interval_in="t", labels="balanced"),
    # Gsunshine/meanflow configs/run_b4.yml 28-29 and meanflow.py 121-124: one jump from 1 to 0.
    "meanflow": dict(sampler="meanflow", method="jump", steps=1, cfg_scale=1.0),
}
# The model evaluations of the reference for one image (a CFG pass counts one, autoguidance two).
REFERENCE_NFE = {"sit-sde": 250, "sit-ode-heun": 250, "repa": 250, "lightningdit": 249, "rae": 2 * 49}


def test_every_recipe_holds_exactly_the_published_values():
    assert set(RECIPES) == set(PUBLISHED)
    for name, want in PUBLISHED.items():
        got = dict(get_recipe(name).settings)
        assert got.keys() == want.keys(), name
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-15) if isinstance(value, float) else got[key] == value, \
                (name, key)


def test_every_recipe_names_its_source_result_and_checkpoint_and_builds_a_sample_config():
    names = {f.name for f in fields(SampleConfig)}
    for recipe in RECIPES.values():
        assert recipe.source and recipe.result and recipe.checkpoint and recipe.summary
        assert set(recipe.settings) <= names and set(recipe.requires) <= names
        extra = {k: "weak-model.pt" for k in recipe.requires}
        cfg = SampleConfig(ckpt="model.pt", **recipe.settings, **extra)
        for key, value in recipe.settings.items():
            assert getattr(cfg, key) == value, (recipe.name, key)  # nothing was silently replaced
    with pytest.raises(InputError, match="--guidance-scale is autoguidance's scale"):
        SampleConfig(ckpt="model.pt", **RECIPES["rae"].settings)  # hence ``requires``
    with pytest.raises(TypeError):
        RECIPES["repa"].settings["steps"] = 10  # recipes are read-only


def test_overrides_win_and_are_listed():
    settings, overridden = expand("repa", {"steps": 100, "cfg_scale": 1.8, "seed": 3, "cfg_interval": [0.0, 0.5]})
    assert settings["steps"] == 100 and settings["seed"] == 3 and settings["cfg_interval"] == [0.0, 0.5]
    assert settings["w"] == "linear" and settings["cfg_interval_in"] == "repa"
    assert overridden == ["steps", "cfg_interval"]  # an equal value and a setting the recipe leaves free are not
    assert expand("repa", {"cfg_interval": [0, 0.7]})[1] == []
    assert expand("meanflow")[0] == dict(PUBLISHED["meanflow"]) and expand("meanflow")[1] == []


def test_an_unknown_recipe_is_refused_with_the_known_ones():
    with pytest.raises(InputError, match="unknown --recipe 'edm2'; choose one of sit-sde, sit-ode-heun, "
                                         "sit-ode-dopri5, repa, lightningdit, rae, meanflow"):
        expand("edm2", {})


def test_settings_print_as_flags():
    assert as_flags(get_recipe("repa").settings) == (
        "--sampler sde --method euler --steps 250 --w linear --w-norm 1 --last-step mean --last-step-size 0.04 "
        "--spacing uniform --time-shift 1 --cfg-scale 1.8 --cfg-channels all --cfg-interval 0 0.7 "
        "--cfg-interval-in repa")
    assert "--time-shift 3.333333333" in as_flags(get_recipe("lightningdit").settings)


# ----------------------------------------------------------------------------- the references' conventions


def test_repa_interval_is_t_from_0_3_on_both_repa_paths():
    recipe = get_recipe("repa").settings
    for path in (Linear(), GVP()):  # REPA's linear and cosine paths
        lo, hi = interval_in_time(path, *recipe["cfg_interval"], recipe["cfg_interval_in"])
        assert lo == pytest.approx(0.3, abs=1e-15) and hi == 1.0


def test_lightningdit_shift_and_interval_are_its_grid_and_times():
    # integrators.py lines 94-101 of hustvl/LightningDiT: t = linspace(0, 1, 250), then s t / (1 + (s - 1) t).
    recipe = get_recipe("lightningdit").settings
    t = torch.linspace(0, 1, 250, dtype=F64)
    theirs = 0.3 * t / (1 + (0.3 - 1) * t)
    ours = time_grid(0.0, 1.0, recipe["steps"], "uniform", time_shift=recipe["time_shift"], dtype=F64)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-15)
    assert lightningdit_time_shift(0.3) == 1 / 0.3
    # Guided where t >= 0.125 in its own time, which is sit's (path.py: alpha = t): 81 of the 249 steps are not.
    lo, hi = interval_in_time(Linear(), *recipe["cfg_interval"], recipe["cfg_interval_in"])
    assert (lo, hi) == (0.125, 1.0) and int((ours[:-1] < lo).sum()) == int((theirs[:-1] < 0.125).sum()) == 81


def test_rae_shift_is_its_grid_up_to_its_end_time():
    # src/stage2/transport/integrators.py lines 100-101 of bytetriper/RAE, with t0, t1 = 0, 1 - 1/1000
    # (transport.py lines 136-137): s = 1 - linspace(0, 0.999, 50), s' = k s / (1 + (k - 1) s), in sit's time 1 - s'.
    k = rae_time_shift(16 * 16 * 768)
    s = 1 - torch.linspace(0, 0.999, 50, dtype=F64)
    theirs = 1 - k * s / (1 + (k - 1) * s)
    assert k == math.sqrt(48) and float(theirs[-1]) == pytest.approx(0.99311, abs=1e-5)
    # sit's shifted grid is theirs exactly when it ends where theirs does; the recipe's ends at t = 1 (``lacks``).
    ours = time_grid(0.0, float(theirs[-1]), 49, "uniform", time_shift=k, dtype=F64)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-14)
    assert "0.99311" in get_recipe("rae").lacks


# ----------------------------------------------------------------------------- each recipe runs at the reference's NFE


def _conditional_model(interpolant):
    means, stds = torch.tensor([[1.0, 0.0, -1.0, 0.5], [-1.0, 0.5, 1.0, 0.0]], dtype=F64), torch.tensor([0.4, 0.6])
    classes = [GaussianMixture(means[k : k + 1], stds[k : k + 1].to(F64)) for k in range(2)]
    both = GaussianMixture(means, stds.to(F64))

    def model(x, t, y=None):
        out = both.velocity(interpolant, x, t)
        for k, mixture in enumerate(classes):
            out = torch.where((y == k)[:, None], mixture.velocity(interpolant, x, t), out)
        return out

    return model


@pytest.mark.parametrize("name", sorted(REFERENCE_NFE))
def test_each_recipe_samples_with_the_reference_nfe(name):
    s = get_recipe(name).settings
    linear = Linear()
    model = _conditional_model(linear)
    interval = interval_in_time(linear, *s["cfg_interval"], s["cfg_interval_in"])
    if s.get("guidance_scale", 1.0) != 1.0:
        weak = lambda x, t, y=None: 0.9 * model(x, t, y=y)  # noqa: E731 - a stand-in weaker model
        guided = AutoGuidance(model, weak, s["guidance_scale"], interval=interval)
    else:
        channels = s["cfg_channels"] if s["cfg_channels"] == "all" else int(s["cfg_channels"])
        guided = ClassifierFreeGuidance(model, s["cfg_scale"], null_class=2, channels=channels, interval=interval)
    x0 = torch.randn(4, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    kwargs = {"y": torch.tensor([0, 1, 0, 1])}
    transport = Transport(linear, "velocity")
    grid = dict(spacing=s["spacing"], time_shift=s["time_shift"])
    if s["sampler"] == "sde":
        x, nfe = sample_sde(transport, guided, x0, s["method"], s["steps"], s["w"], s["w_norm"], s["last_step"],
                            s["last_step_size"], generator=torch.Generator().manual_seed(1), model_kwargs=kwargs,
                            **grid)
    else:
        x, nfe = sample_ode(transport, guided, x0, s["method"], s["steps"], model_kwargs=kwargs, **grid)
    assert nfe == REFERENCE_NFE[name] and bool(torch.isfinite(x).all())
