"""sitcli/evaluate/inputs.py and the evaluate() pipeline around it, with a stand-in network (fast)."""

import os
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import sitcli.evaluate.inception as inception
from sitcli.errors import InputError
from sitcli.evaluate import FidConfig, evaluate, parse_metrics
from sitcli.evaluate import inputs
from sitcli.evaluate.statistics import GaussianStats


def _images(rng, n, size=(12, 10), shift=0):
    return [np.clip(rng.normal(120 + shift, 40, (*size, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


def _write_folder(folder, arrays, ext="png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{i:03d}.{ext}")
    return folder


def _batches(source, batch_size=3):
    return list(inputs.image_batches(inputs.open_source(source), batch_size, num_workers=0))


# ----------------------------------------------------------------------------- recognising inputs


def test_folder_is_recursive_case_insensitive_and_sorted(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    Image.fromarray(_images(rng, 1)[0]).save(tmp_path / "sub" / "B.PNG")
    Image.fromarray(_images(rng, 1)[0]).save(tmp_path / "a.jpg")
    Image.fromarray(_images(rng, 1)[0]).save(tmp_path / "c.webp")
    (tmp_path / "notes.txt").write_text("not an image")
    source = inputs.open_source(tmp_path)
    assert source.kind == "folder" and source.num_images == 3
    assert [p.relative_to(tmp_path).as_posix() for p in source.files] == ["a.jpg", "c.webp", "sub/B.PNG"]


def test_uncompressed_npz_is_memory_mapped_and_equals_np_load(tmp_path):
    arr = np.stack(_images(np.random.default_rng(1), 5))
    np.savez(tmp_path / "s.npz", arr_0=arr, arr_1=np.arange(5))
    source = inputs.open_source(tmp_path / "s.npz")
    assert source.kind == "images_npz" and source.num_images == 5
    assert source.npz.offset is not None
    mapped = source.npz.array()
    assert isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(mapped, arr)


def test_compressed_npz_falls_back_to_loading(tmp_path):
    arr = np.stack(_images(np.random.default_rng(2), 4))
    np.savez_compressed(tmp_path / "s.npz", arr_0=arr)
    source = inputs.open_source(tmp_path / "s.npz")
    assert source.npz.offset is None
    np.testing.assert_array_equal(source.npz.array(), arr)


def test_folder_and_npz_of_the_same_images_decode_identically(tmp_path):
    arrays = _images(np.random.default_rng(3), 7)
    _write_folder(tmp_path / "f", arrays)
    np.savez(tmp_path / "s.npz", arr_0=np.stack(arrays))
    from_folder = torch.cat([b.images for b in _batches(tmp_path / "f")])
    from_npz = torch.cat([b.images for b in _batches(tmp_path / "s.npz")])
    assert from_folder.dtype == torch.uint8 and from_folder.shape == (7, 3, 12, 10)
    assert torch.equal(from_folder, from_npz)
    assert torch.equal(from_folder[2], torch.from_numpy(arrays[2]).permute(2, 0, 1))


def test_decoding_converts_to_rgb_like_pytorch_fid(tmp_path):
    gray = np.arange(120, dtype=np.uint8).reshape(12, 10)
    Image.fromarray(gray, mode="L").save(tmp_path / "a.png")
    rgba = np.dstack([_images(np.random.default_rng(4), 1)[0], np.zeros((12, 10), np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "b.png")
    (batch,) = _batches(tmp_path)
    assert torch.equal(batch.images[0], torch.from_numpy(gray)[None].expand(3, -1, -1))
    assert torch.equal(batch.images[1], torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))  # alpha dropped


def test_mixed_sizes_come_as_a_list(tmp_path):
    rng = np.random.default_rng(5)
    _write_folder(tmp_path, _images(rng, 2) + _images(rng, 1, size=(20, 8)))
    (batch,) = _batches(tmp_path)
    assert isinstance(batch.images, list) and [tuple(i.shape) for i in batch.images] == [(3, 12, 10)] * 2 + [(3, 20, 8)]


def test_unreadable_image_is_reported_in_one_line(tmp_path):
    _write_folder(tmp_path, _images(np.random.default_rng(6), 2))
    (tmp_path / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (batch,) = _batches(tmp_path)
    assert "001.png" in batch.error and "\n" not in batch.error


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p.mkdir(), "no images found"),
        (lambda p: p.write_text("hello"), "neither a folder nor an .npz"),
        (lambda p: np.savez(p, x=np.zeros(3)), r"expected arr_0 .* or mu and sigma"),
        (lambda p: np.savez(p, arr_0=np.zeros((2, 4, 4, 3), np.float32)), "expected uint8 images"),
        (lambda p: np.savez(p, arr_0=np.zeros((2, 4, 4), np.uint8)), "expected uint8 images"),
        (lambda p: np.savez(p, mu=np.zeros(4), sigma=np.eye(3)), "expected \\(d,\\) and \\(d, d\\)"),
        (lambda p: np.savez(p, mu=np.full(2, np.nan), sigma=np.eye(2)), "NaN"),
    ],
)
def test_bad_inputs_raise_one_line_input_errors(tmp_path, make, match):
    path = tmp_path / "input.npz"
    make(path)
    with pytest.raises(InputError, match=match) as err:
        inputs.open_source(path)
    assert "\n" not in str(err.value)


def test_missing_input_names_the_path(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        inputs.open_source(tmp_path / "nope")


def test_stats_npz_as_pytorch_fid_writes_it(tmp_path):
    np.savez_compressed(tmp_path / "s.npz", mu=np.ones(3), sigma=np.eye(3))
    source = inputs.open_source(tmp_path / "s.npz")
    assert source.kind == "stats_npz" and set(source.stats) == {"mu", "sigma"}


# ----------------------------------------------------------------------------- atomic writes


def test_save_stats_is_atomic_and_readable(tmp_path):
    target = tmp_path / "stats.npz"
    inputs.save_stats(target, {"mu": np.ones(2), "sigma": np.eye(2)})
    with np.load(target) as f:
        np.testing.assert_array_equal(f["sigma"], np.eye(2))
    assert os.listdir(tmp_path) == ["stats.npz"]


# ----------------------------------------------------------------------------- evaluate() with a stand-in network


def test_evaluate_streams_the_same_statistics_as_all_at_once(tmp_path, stand_in):
    rng = np.random.default_rng(7)
    arrays = _images(rng, 5) + _images(rng, 2, size=(16, 9))  # mixed sizes go through one by one
    _write_folder(tmp_path / "a", arrays)
    result = evaluate(FidConfig(tmp_path / "a", save_stats=tmp_path / "a.npz", batch_size=3, num_workers=0))
    with torch.no_grad():
        feats = torch.cat([stand_in(torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255, ["pool"])["pool"]
                           for a in arrays]).double().numpy()
    # Features are float32 (batched and single-image matmuls round differently): compare at that level.
    with np.load(tmp_path / "a.npz") as f:
        np.testing.assert_allclose(f["mu"], feats.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(f["sigma"], np.cov(feats, rowvar=False), rtol=1e-5, atol=1e-5)
        assert f["mu_s"].shape == (inception.SPATIAL_DIM,)
    assert result.inputs["A"]["num_images"] == 7 and result.saved_stats == str(tmp_path / "a.npz")


@pytest.mark.slow
def test_evaluate_all_metrics_with_workers(tmp_path, stand_in):
    rng = np.random.default_rng(8)
    _write_folder(tmp_path / "a", _images(rng, 12))
    _write_folder(tmp_path / "b", _images(rng, 10, shift=40))
    result = evaluate(FidConfig(tmp_path / "a", tmp_path / "b", "all", batch_size=4, num_workers=2, kid_subsets=3))
    m = result.metrics
    assert set(m) == {"fid", "sfid", "is", "is_std", "precision", "recall", "kid", "kid_std"}
    assert m["fid"] > 0 and m["sfid"] > 0 and m["kid"] > 0
    assert 1 <= m["is"] <= inception.NUM_CLASSES and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
    assert any("covariances are singular" in w for w in result.warnings)


def test_evaluate_identical_inputs_give_zero_fid(tmp_path, stand_in):
    _write_folder(tmp_path / "a", _images(np.random.default_rng(9), 6))
    m = evaluate(FidConfig(tmp_path / "a", tmp_path / "a", "fid,sfid,pr", num_workers=0)).metrics
    assert abs(m["fid"]) < 1e-8 and abs(m["sfid"]) < 1e-8
    assert m["precision"] == 1.0 and m["recall"] == 1.0


@pytest.mark.slow
def test_evaluate_refuses_what_an_input_cannot_provide(tmp_path, stand_in):
    _write_folder(tmp_path / "a", _images(np.random.default_rng(10), 3))
    np.savez(tmp_path / "s.npz", mu=np.zeros(inception.POOL_DIM), sigma=np.eye(inception.POOL_DIM))
    with pytest.raises(InputError, match="need images"):
        evaluate(FidConfig(tmp_path / "a", tmp_path / "s.npz", "kid"))
    with pytest.raises(InputError, match="no sFID statistics"):
        evaluate(FidConfig(tmp_path / "a", tmp_path / "s.npz", "sfid"))
    with pytest.raises(InputError, match="needs at least 10 images"):
        evaluate(FidConfig(tmp_path / "a", metrics="is"))
    with pytest.raises(InputError, match="give a second input"):
        evaluate(FidConfig(tmp_path / "a", metrics="fid"))
    with pytest.raises(InputError, match="unknown metric fdi"):
        parse_metrics("fid,fdi")


def test_parse_metrics():
    assert parse_metrics("kid, FID") == ("fid", "kid")
    assert parse_metrics("all") == ("fid", "is", "sfid", "pr", "kid")
    assert parse_metrics(["is"]) == ("is",)


def test_gaussian_stats_on_device_argument():
    acc = GaussianStats(3, device="cpu")
    acc.update(torch.eye(3))
    assert acc.covariance().dtype == np.float64


def test_zip_detection_does_not_trust_the_suffix(tmp_path):
    arr = np.stack(_images(np.random.default_rng(11), 2))
    np.savez(tmp_path / "images.npz", arr_0=arr)
    os.rename(tmp_path / "images.npz", tmp_path / "images.bin")
    assert zipfile.is_zipfile(tmp_path / "images.bin")
    assert inputs.open_source(tmp_path / "images.bin").kind == "images_npz"
