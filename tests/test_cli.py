"""The `sit` entry point: its commands, and how bad input is reported."""

import typer
from typer.testing import CliRunner

from sitcli import cli
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
    @cli._user_errors
    def fail() -> None:
        raise InputError("folder [data]/x has no images: pass a folder of PNGs")

    result = runner.invoke(app, [])
    assert result.exit_code == 2
    assert "folder [data]/x has no images: pass a folder of PNGs" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_python_m_entry_point_is_the_same_app():
    import sitcli.__main__ as main

    assert main.app is cli.app
