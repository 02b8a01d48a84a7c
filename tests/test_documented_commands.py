"""Every `sit ...` and `torchrun ... -m sitcli ...` command of README.md and examples/*.md, run on tiny stand-ins.

Commands come from the ```bash blocks (continuation lines joined, comments dropped, `&&` chains split)
and from inline code that holds a whole command. They run in order, one folder per document, with
absolute paths made relative to it and the stand-ins put where the documents expect data: the
flags are the documents' own; only sizes change (steps, images, image size, model size, loader
workers, sampler steps where none are given) and a `torchrun` on one node runs as one process.
Commands that need a GPU, several nodes or real data are not run; ``documents.NOT_RUN`` names them
with the reason, and a command that is neither run nor named there fails the test.
"""

import pytest
import time

from typer.testing import CliRunner

from documents import DOCUMENTS, build_world, documented_commands, not_run, shrunk
from sitcli.cli import app

pytestmark = pytest.mark.slow


def test_every_documented_command_runs_on_tiny_stand_ins(tmp_path, monkeypatch, one_thread, fresh_wandb):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    runner, failed, skipped, ran = CliRunner(), [], [], 0
    for number, document in enumerate(DOCUMENTS):
        world = tmp_path / f"{number}-{document.stem}"
        world.mkdir()
        build_world(world)
        monkeypatch.setenv("TORCH_HOME", str(world / "torch-home"))
        monkeypatch.chdir(world)
        for command in documented_commands(document):
            why = not_run(command)
            if why:
                skipped.append(f"{document.name}: {command}  ({why})")
                continue
            args = shrunk(command, world)
            started = time.perf_counter()
            result = runner.invoke(app, args)
            print(f"{time.perf_counter() - started:6.1f} s  sit {' '.join(args)}")
            ran += 1
            if result.exit_code != 0:
                failed.append(
                    f"{document.name}: {command}\n  ran as: sit {' '.join(args)}\n  exit {result.exit_code}: "
                    f"{(result.output.strip().splitlines() or [repr(result.exception)])[-1]}"
                )
    print(f"{ran} documented commands ran; not run:\n" + "\n".join(skipped))
    assert ran >= 15 and len(skipped) >= 5
    assert not failed, "\n".join(failed)
