"""The code passes the project's ruff settings (pyproject.toml: pycodestyle and pyflakes, lines of at most 120)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
    assert ruff is not None, "ruff is part of the test extra: pip install -e '.[test]'"
    done = subprocess.run([ruff, "check", "sitcli", "tests", "examples"], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
