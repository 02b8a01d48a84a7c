"""`python -m sitcli ...` runs the same app as the `sit` script (useful under torchrun)."""

from sitcli.cli import app

if __name__ == "__main__":
    app()
