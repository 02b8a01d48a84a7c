"""sitcli/session.py: every job gives back what it changed (threads, TF32, folder locks), returning or raising."""

import json

import pytest
import torch

from sitcli.errors import InputError
from sitcli.locks import LOCK
from sitcli.nll import NllConfig, nll
from sitcli.session import session


def test_threads_and_locks_are_given_back_when_the_job_raises(tmp_path):
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with session("cpu") as job:
            job.set_threads(threads + 1)
            job.hold(tmp_path / "out", "sit test")
            assert torch.get_num_threads() == threads + 1 and (tmp_path / "out" / LOCK).is_file()
            raise RuntimeError("inside")
    assert torch.get_num_threads() == threads
    assert not (tmp_path / "out").exists()  # the lock made the folder; released, it leaves nothing behind


def test_a_second_holder_of_a_folder_is_refused(tmp_path):
    with session("cpu") as first:
        first.hold(tmp_path / "out", "sit first")
        with pytest.raises(InputError, match="in use by sit first"):
            with session("cpu") as second:
                second.hold(tmp_path / "out", "sit second")


def test_nll_leaves_the_thread_count_as_it_found_it(tiny_run):
    """The run records one thread (the digits preset), which sit nll applies while it scores; two before, two after."""
    threads, wanted = torch.get_num_threads(), 2
    assert json.loads((tiny_run / "config.json").read_text())["threads"] == 1
    torch.set_num_threads(wanted)
    try:
        nll(NllConfig(str(tiny_run), data="digits", num=2, batch_size=2, method="euler", steps=2), progress=False)
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(threads)
