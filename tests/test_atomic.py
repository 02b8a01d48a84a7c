"""sitcli/atomic.py: a write replaces the whole file or leaves the old one, and no temporary file behind."""

import pytest

from sitcli import atomic


def test_atomic_write_replaces_whole_files(tmp_path):
    target = tmp_path / "f.json"
    atomic.write_json(target, {"x": 1})
    atomic.write_json(target, {"x": 2})
    assert target.read_text().strip().endswith("}") and '"x": 2' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "grid.png"
    atomic.write_json(target, {"old": 1})

    class Exploding:
        def save(self, path, format=None):
            with open(path, "wb") as f:
                f.write(b"partial")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic.save_image(target, Exploding())
    assert '"old": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]
