"""`sit sample --recipe NAME` and `sit recipes`: a recipe fills exactly its settings into sample.json, the flags the
user typed win and are printed as overrides, an unknown name is refused, and the table names every source."""

import json

import pytest
from typer.testing import CliRunner

from sitcli.cli import app
from sitcli.sample_config import SampleConfig
from sitcli.errors import InputError
from sitcli.recipes import RECIPES

runner = CliRunner(env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def recorded(folder) -> dict:
    return json.loads((folder / "sample.json").read_text())


def assert_holds(settings: dict, recipe) -> None:
    for name, value in recipe.settings.items():
        want = list(value) if isinstance(value, tuple) else value
        assert settings[name] == want, (recipe.name, name, settings[name], want)


@pytest.mark.slow
def test_each_recipe_through_the_cli_records_exactly_its_values(tiny_run, tmp_path, one_thread):
    from sitcli.training import train
    from sitcli.config import TrainConfig

    meanflow_run = tmp_path / "meanflow-run"
    train(TrainConfig(data="digits", out=str(meanflow_run), model="SiT-Ti/4", batch_size=16, steps=1,
                      objective="meanflow", sample_every=0), progress=False)
    for name, recipe in RECIPES.items():
        ckpt = meanflow_run if recipe.settings["sampler"] == "meanflow" else tiny_run
        extra = ["--guidance-model", tiny_run] if recipe.requires else []
        num = 10 if recipe.settings.get("labels") == "balanced" else 2  # the digits' 10 classes
        result = invoke("sample", "--ckpt", ckpt, "--recipe", name, "--num-samples", num, "--out", tmp_path / name,
                        *extra)
        assert result.exit_code == 0, (name, result.output)
        settings = recorded(tmp_path / name)
        assert_holds(settings, recipe)
        assert settings["recipe"] == name and settings["recipe_overrides"] == {}
        shown = " ".join(result.output.split())
        assert f"recipe {name}: " in shown and recipe.source[:40] in shown and "override:" not in shown
    assert recorded(tmp_path / "rae")["labels"] == "balanced"


def test_the_flags_typed_win_and_are_printed_as_overrides(tiny_run, tmp_path, one_thread):
    result = invoke("sample", "--ckpt", tiny_run, "--recipe", "repa", "--steps", 3, "--cfg-scale", 1.8,
                    "--cfg-interval", 0, 0.5, "--num-samples", 2, "--seed", 4, "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())
    assert "override: --steps 3 (the recipe's --steps 250)" in shown
    assert "override: --cfg-interval 0 0.5 (the recipe's --cfg-interval 0 0.7)" in shown
    assert "--cfg-scale 1.8 (" not in shown and "--seed" not in shown.split("sample ")[0]  # equal, or not a recipe's
    settings = recorded(tmp_path / "r")
    assert settings["recipe_overrides"] == {"steps": 3, "cfg_interval": [0.0, 0.5]}
    assert (settings["steps"], settings["cfg_interval"], settings["seed"]) == (3, [0.0, 0.5], 4)
    assert (settings["w"], settings["last_step"], settings["cfg_interval_in"]) == ("linear", "mean", "repa")
    # The recipe is recorded, not compared: the same settings given as flags add to the folder.
    flags = ["--sampler", "sde", "--steps", 3, "--w", "linear", "--last-step", "mean", "--spacing", "uniform",
             "--cfg-scale", 1.8, "--cfg-interval", 0, 0.5, "--cfg-interval-in", "repa", "--seed", 4]
    added = invoke("sample", "--ckpt", tiny_run, *flags, "--num-samples", 3, "--out", tmp_path / "r")
    assert added.exit_code == 0 and "1 new images" in added.output, added.output
    assert recorded(tmp_path / "r")["recipe"] is None
    # Other settings than the recipe's (and its overrides) do not.
    again = invoke("sample", "--ckpt", tiny_run, "--recipe", "repa", "--num-samples", 3, "--out", tmp_path / "r")
    assert again.exit_code == 2 and "steps differ" in " ".join(again.output.split())


def test_an_unknown_recipe_or_a_missing_requirement_is_refused_before_writing(tiny_run, tmp_path):
    result = invoke("sample", "--ckpt", tiny_run, "--recipe", "edm2", "--out", tmp_path / "x")
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "'edm2' is not one of" in said and all(f"'{n}'" in said for n in RECIPES)
    result = invoke("sample", "--ckpt", tiny_run, "--recipe", "rae", "--num-samples", 10, "--out", tmp_path / "x")
    assert result.exit_code == 2 and "--recipe rae needs --guidance-model too" in result.output
    assert not (tmp_path / "x").exists()
    with pytest.raises(InputError, match="unknown --recipe 'edm2'"):
        SampleConfig.from_recipe("edm2", {"ckpt": "run"})
    # A config that names a recipe holds its settings: one built by hand with others is refused.
    with pytest.raises(InputError, match="--recipe repa sets sampler to 'sde', this config to 'ode'"):
        SampleConfig(ckpt="run", recipe="repa")
    with pytest.raises(InputError, match="recipe_overrides without a recipe"):
        SampleConfig(ckpt="run", recipe_overrides={"steps": 3})


def test_the_library_call_fills_a_recipe_the_same_way():
    cfg = SampleConfig.from_recipe("lightningdit", {"ckpt": "run", "steps": 100, "num": 10})
    assert (cfg.steps, cfg.num, cfg.cfg_scale, cfg.cfg_channels) == (100, 10, 6.7, "3")
    assert cfg.recipe == "lightningdit" and cfg.recipe_overrides == {"steps": 100}
    assert cfg.time_shift == pytest.approx(1 / 0.3, rel=1e-15)


def test_recipes_lists_every_recipe_with_its_result_checkpoint_source_and_gaps():
    result = invoke("recipes")
    assert result.exit_code == 0
    shown = " ".join(result.output.split())
    for recipe in RECIPES.values():
        block = shown[shown.index(f"{recipe.name} {recipe.summary}"):]
        for label, text in (("result", recipe.result), ("checkpoint", recipe.checkpoint), ("source", recipe.source),
                            ("gaps", recipe.lacks or "none")):
            assert f"{label}: {text}" in block, (recipe.name, label)
    assert "you add: --guidance-model gaps: RAE's grid ends" in shown and "0.99311" in shown
