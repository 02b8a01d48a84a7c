"""`sit sample --grid`: the file is checked before anything is drawn (``SampleConfig`` refuses a suffix outside
``atomic.IMAGE_FORMATS``, ``sample.prepare`` a folder or a path under a file), and every suffix it accepts is
written in its own format.

Cases: .txt, .svg, .npz (refused by suffix, naming the image formats), a folder, a path under a file (refused
before the model is loaded or the folder made), .tif, .jpg and an upper-case .PNG (written)."""

import pytest
from PIL import Image
from typer.testing import CliRunner

from sitcli.cli import app

runner = CliRunner()


def sample(tiny_run, tmp_path, grid):
    return runner.invoke(app, ["sample", "--ckpt", str(tiny_run), "--out", str(tmp_path / "s"), "--num", "2",
                               "--steps", "2", "--grid", str(tmp_path / grid)])


@pytest.mark.parametrize("grid", ["x.txt", "x.svg", "x.npz", "folder", "afile/grid.png"])
def test_a_grid_that_cannot_be_written_is_refused_before_anything_is_drawn(tiny_run, tmp_path, grid):
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    result = sample(tiny_run, tmp_path, grid)
    assert result.exit_code == 2 and "--grid" in result.output and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder"]  # nothing drawn, no folder made
    if "." in grid and "/" not in grid:
        assert ".png" in result.output and ".jpg" in result.output


@pytest.mark.parametrize("grid, fmt", [("grid.tif", "TIFF"), ("grid.jpg", "JPEG"), ("GRID.PNG", "PNG")])
def test_every_accepted_suffix_is_written_in_its_format(tiny_run, tmp_path, grid, fmt):
    result = sample(tiny_run, tmp_path, grid)
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / grid) as image:
        assert image.format == fmt
