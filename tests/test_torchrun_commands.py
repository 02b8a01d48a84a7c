"""Commands as torchrun sees them.

torchrun's argparse reads every word after the script too, and refuses any that is an ambiguous prefix of
its own options ("--num could match --numa-binding", "--log could match --log-dir, --logs-specs"), before
sit starts. So every option of every command must pass torchrun's parser; every `torchrun ... -m sitcli`
command that README.md and examples/*.md show must pass it word for word; and the same commands, shrunk
by the stand-ins of tests/documents.py, run on 2 CPU ranks (gloo) through the CLI, in one
launch (tests/ddp_jobs.py cli) because each launch costs two interpreters importing torch.
"""

import os

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer

from sitcli.cli import app
from documents import DOCUMENTS, build_world, documented_commands, shrunk

# Spellings kept for plain `sit` only; each has a torchrun-safe twin on the same option.
PLAIN_ONLY = {"--num": "--num-samples", "--log": "--log-to"}


def torchrun_parser():
    from torch.distributed.run import get_args_parser

    return get_args_parser()


def test_every_option_of_every_command_passes_through_torchruns_parser():
    parser = torchrun_parser()
    checked = 0
    for name, command in typer.main.get_command(app).commands.items():
        for param in command.params:
            for option in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]:
                if option in PLAIN_ONLY:
                    assert PLAIN_ONLY[option] in param.opts, f"sit {name} {option} has no torchrun-safe spelling"
                    continue
                for words in ([option, "1"], [f"{option}=1"]):
                    launched = ["--standalone", "--nproc_per_node=2", "-m", "sitcli", name, *words]
                    try:
                        args = parser.parse_args(launched)
                    except SystemExit:
                        pytest.fail(f"torchrun refuses `sit {name} {' '.join(words)}` before sit starts")
                    assert args.training_script_args[-len(words):] == words
                    checked += 1
    assert checked > 200


def test_the_plain_only_spellings_are_the_ones_torchrun_refuses():
    parser = torchrun_parser()
    for option in PLAIN_ONLY:
        with pytest.raises(SystemExit):
            parser.parse_args(["--standalone", "--nproc_per_node=2", "-m", "sitcli", "sample", option, "1"])


def documented_torchrun_commands() -> list[str]:
    # The recipe first: its cache-latents makes the latents that the README's torchrun train reads.
    documents = sorted(DOCUMENTS, key=lambda d: d.name != "imagenet256.md")
    return [c for d in documents for c in documented_commands(d)
            if c.startswith("torchrun ") and " ... " not in c and not c.endswith("...") and "=K" not in c]


def test_every_documented_torchrun_command_passes_torchruns_parser_as_written():
    commands = documented_torchrun_commands()
    assert {c.split(" -m sitcli ")[1].split()[0] for c in commands} >= {"cache-latents", "train", "sample"}
    parser = torchrun_parser()
    for command in commands:
        # the shell's variables as a launcher would fill them in
        words = shlex.split(re.sub(r"\$(\w+)", lambda m: {"MASTER_ADDR": "node0"}.get(m.group(1), "0"), command))[1:]
        try:
            args = parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"torchrun refuses the documented command: {command}")
        assert args.module and args.training_script == "sitcli"
        assert args.training_script_args == words[words.index("sitcli") + 1:]


def shrunk_for_ranks(command: str, world: Path) -> list[str]:
    """The sit words of a documented torchrun command, shrunk as in documents.shrunk (paths under
    ``world``), on the CPU with no loader processes."""
    sit = shrunk(command, world)
    if "--device" in sit:
        sit[sit.index("--device") + 1] = "cpu"
    if "--num-workers" in sit:
        sit[sit.index("--num-workers") + 1] = "0"
    return sit


@pytest.mark.slow
@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs gloo"
)
def test_every_documented_torchrun_command_runs_on_two_ranks(tmp_path):
    build_world(tmp_path)
    commands = tmp_path / "commands.jsonl"
    commands.write_text(
        "".join(json.dumps(shrunk_for_ranks(c, tmp_path)) + "\n" for c in documented_torchrun_commands())
    )
    here = Path(__file__).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(here.parent), str(here)])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(here / "ddp_jobs.py"),
            "cli",
            str(commands),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, commands.read_text() + proc.stderr[-3000:]
    samples = next(tmp_path.glob("samples/*"))
    assert len(list(samples.glob("*.png"))) == 10 and (samples / "samples.npz").is_file()
    # The README's and the SiT recipe's runs, and the RAE recipe's DiT^DH-XL, DiT^DH-S, decoder and f16c32 runs.
    assert len(list(tmp_path.glob("**/checkpoints/0000002"))) == 6
