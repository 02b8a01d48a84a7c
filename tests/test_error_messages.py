"""Messages that send the user the right way: an unsafe pickle is refused as unsafe,
naming what it tried to import; weights holding NaN or inf convert with a warning naming the tensors."""

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from sitcli.cli import app
from sitcli.errors import InputError
from sitcli.formats.official import pickle_globals, safe_load
from helpers import random_sit

runner = CliRunner()


class Payload:
    """Unpickling this runs ``os.system`` (if anything ever unpickled it unrestricted)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("how", ["torch.save", "pickle protocol 4"])
def test_a_pickle_that_calls_os_system_is_refused_as_unsafe_naming_it(tmp_path, how):
    path, marker = tmp_path / "SiT-evil.pt", tmp_path / "ran"
    if how == "torch.save":
        torch.save({"model": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"model": Payload(marker)}, protocol=4))
    assert f"{os.system.__module__}.system" in pickle_globals(path)
    with pytest.raises(InputError, match=rf"refused as unsafe: its pickle imports {os.system.__module__}\.system"):
        safe_load(path)
    for args in (["convert", str(path), str(tmp_path / "out"), "--to", "sit"], ["sample", "--ckpt", str(path)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "refused as unsafe" in result.output and "check the path" not in result.output
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_file_that_is_no_pickle_at_all_still_says_check_the_path(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00not a pickle at all")
    with pytest.raises(InputError, match="is not a PyTorch checkpoint"):
        safe_load(tmp_path / "junk.pt")


def test_weights_holding_nan_or_inf_convert_with_a_warning_naming_the_tensors(tmp_path):
    state = random_sit().state_dict()
    state["final_layer.linear.bias"][0] = float("nan")
    state["x_embedder.proj.weight"][0, 0, 0, 0] = float("inf")
    save_file(state, tmp_path / "w.safetensors")
    result = runner.invoke(
        app, ["convert", str(tmp_path / "w.safetensors"), str(tmp_path / "SiT-w.pt"), "--num-heads", "2"]
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "warning: the" in text and "NaN or inf in 2 of" in text
    assert "final_layer.linear.bias" in text and "x_embedder.proj.weight" in text
    assert (tmp_path / "SiT-w.pt").is_file()
    clean = runner.invoke(
        app, ["convert", str(tmp_path / "SiT-w.pt"), str(tmp_path / "SiT-again.pt"), "--num-heads", "2"]
    )
    assert "NaN" in clean.output  # still warned: the weights were copied unchanged
