"""The `sit` entry point: its commands, and how bad input is reported."""

import typer
from typer.testing import CliRunner

from sitcli import cli
from sitcli.cli.errors import user_errors
from sitcli.errors import InputError

runner = CliRunner()


def test_help_lists_the_four_jobs():
    result = runner.invoke(cli.app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "sample", "fid", "convert"):
        assert command in result.output


def test_input_errors_print_one_line_verbatim_and_exit_2():
    app = typer.Typer()

    @app.command()
    @user_errors
    def fail() -> None:
        raise InputError("folder [data]/x has no images: pass a folder of PNGs")

    result = runner.invoke(app, [])
    assert result.exit_code == 2
    assert "folder [data]/x has no images: pass a folder of PNGs" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_python_m_entry_point_is_the_same_app():
    import sitcli.__main__ as main

    assert main.app is cli.app


def test_method_choices_and_the_methods_table_come_from_the_registry():
    from sitcli.transport import ODE_METHODS, SDE_METHODS

    listed = runner.invoke(cli.app, ["methods"])
    assert listed.exit_code == 0
    for m in [*ODE_METHODS.values(), *SDE_METHODS.values()]:
        assert m.name in listed.output
    wide = CliRunner(env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    shown = " ".join(wide.invoke(cli.app, ["sample", "--help"]).output.split())
    assert all(name in shown for name in ODE_METHODS)


def test_each_option_has_one_line_of_help():
    """Long explanations live in the command's docstring and the README; an option's help is one short line."""
    group = typer.main.get_command(cli.app)
    for name, command in group.commands.items():
        for param in command.params:
            text = getattr(param, "help", None) or ""
            assert "\n" not in text and len(text) <= 100, f"sit {name} {param.opts}: {text!r}"
    assert set(group.commands) >= {"train", "sample", "nll", "fid", "convert", "cache-latents", "methods",
                                   "search-solver"}


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    from typer.testing import CliRunner

    from sitcli.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"sit {version('sit')}"


def test_help_lists_every_choice_from_the_registries_and_a_typo_exits_2_naming_them():
    from typer.testing import CliRunner

    from sitcli.cli import app
    from sitcli.runtime import PRECISIONS
    from sitcli.transport import DIFFUSION_COEFFICIENTS, INTERPOLANTS, LAST_STEPS, LIKELIHOOD_METHODS, ODE_METHODS, \
        PREDICTIONS, SDE_METHODS

    wide = CliRunner(env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    shown = {
        command: " ".join(wide.invoke(app, [command, "--help"]).output.split())
        for command in ("train", "sample", "nll")
    }
    expected = {
        "train": [*INTERPOLANTS, *PREDICTIONS, *PRECISIONS, *ODE_METHODS],
        "sample": [*ODE_METHODS, *SDE_METHODS, *DIFFUSION_COEFFICIENTS, *LAST_STEPS, *INTERPOLANTS, *PRECISIONS],
        "nll": [*LIKELIHOOD_METHODS, "fp32", "bf16"],
    }
    for command, names in expected.items():
        missing = [n for n in names if n.lower() not in shown[command].lower()]
        assert not missing, f"sit {command} --help does not list {missing}"
    # Listed from the registry itself, as the option's choices:
    assert "|".join(INTERPOLANTS) in shown["train"] and "|".join(LAST_STEPS) in shown["sample"]
    result = wide.invoke(app, ["train", "--interpolant", "linaer"])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "'linaer' is not one of" in said and all(f"'{n}'" in said for n in INTERPOLANTS), (
        said
    )


def test_options_are_grouped_into_panels_and_readable_at_80_columns(monkeypatch):
    import os

    # typer reads TERMINAL_WIDTH once, when rich_utils is first imported: maybe under another test's wide runner.
    monkeypatch.setattr("typer.rich_utils.MAX_WIDTH", 80)
    for command, panels in (
        ("train", ("Transport", "Optimisation", "Speed")),
        ("sample", ("Sampler", "Guidance", "Output")),
    ):
        result = runner.invoke(cli.app, [command, "--help"], env={**os.environ, "COLUMNS": "80"})
        assert result.exit_code == 0
        for panel in panels:
            assert f"─ {panel} " in result.output
        assert max(len(line) for line in result.output.splitlines()) <= 80
    assert "--install-completion" in runner.invoke(cli.app, ["--help"]).output
