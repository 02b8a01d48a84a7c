"""Statistics that are not statistics: a stats .npz whose sigma is not a covariance,
wrong shapes or dtypes, NaN; an ADM images .npz whose header lies about its size or with a zero-sized axis.
Each is a one-line InputError from ``evaluate.inputs`` (and exit 2 from `sit fid`), before any image is read."""

import io
import zipfile

import numpy as np
import pytest
from typer.testing import CliRunner

from sitcli.cli import app
from sitcli.errors import InputError
from sitcli.evaluate.inputs import check_covariance, open_source, read_stats

runner = CliRunner()
D = 6


def covariance(d: int = D, rank: int | None = None, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rank + 1 if rank else 3 * d, d))
    return np.cov(x, rowvar=False)


def write_stats(path, **arrays):
    np.savez(path, **arrays)
    return path


GOOD = dict(mu=np.zeros(D), sigma=covariance())
BAD_STATS = {
    "-5 I": (
        dict(sigma=-5 * np.eye(D)),
        "sigma is not a covariance matrix (not positive semi-definite: smallest eigenvalue -5",
    ),
    "one negative eigenvalue": (
        dict(sigma=covariance() - 2 * np.outer(np.eye(D)[0], np.eye(D)[0]) * covariance().max()),
        "not positive semi-definite",
    ),
    "not symmetric": (
        dict(sigma=covariance() + np.triu(np.ones((D, D)), 1)),
        "sigma is not a covariance matrix (not symmetric",
    ),
    "sigma NaN": (dict(sigma=np.where(np.eye(D) > 0, np.nan, covariance())), "contain NaN or inf"),
    "mu inf": (dict(mu=np.full(D, np.inf)), "contain NaN or inf"),
    "sigma (d, d+1)": (dict(sigma=np.zeros((D, D + 1))), "expected (d,) and (d, d)"),
    "mu 2-d": (dict(mu=np.zeros((D, 1))), "expected (d,) and (d, d)"),
    "mu empty": (dict(mu=np.zeros(0), sigma=np.zeros((0, 0))), "expected (d,) and (d, d)"),
    "complex": (dict(sigma=covariance().astype(np.complex128)), "sigma is complex128, not real numbers"),
    "strings": (dict(mu=np.array(["a"] * D)), "mu is <U1, not real numbers"),
    "bool": (dict(sigma=np.eye(D, dtype=bool)), "sigma is bool, not real numbers"),
    "sfid sigma_s -I": (dict(mu_s=np.zeros(3), sigma_s=-np.eye(3)), "sigma_s is not a covariance matrix"),
}


@pytest.mark.parametrize("case", BAD_STATS)
def test_bad_statistics_are_one_line_input_errors(tmp_path, case):
    change, message = BAD_STATS[case]
    path = write_stats(tmp_path / "stats.npz", **{**GOOD, **change})
    with pytest.raises(InputError) as err:
        read_stats(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    result = runner.invoke(app, ["fid", str(path), str(write_stats(tmp_path / "good.npz", **GOOD))])
    assert result.exit_code == 2 and message.split(" (")[0] in " ".join(result.output.split()), result.output


@pytest.mark.parametrize(
    "sigma",
    [
        covariance(),
        covariance(rank=3),
        np.zeros((D, D)),
        covariance().astype(np.float32),
        np.diag([1e6, 1, 1e-6, 0, 0, 0]),
    ],
)
def test_real_covariances_pass_including_rank_deficient_and_float32(tmp_path, sigma):
    """Estimates from fewer samples than dimensions are singular: round-off below zero is within the tolerance."""
    assert check_covariance(np.asarray(sigma, dtype=np.float64)) is None
    stats = read_stats(write_stats(tmp_path / "s.npz", mu=np.zeros(D), sigma=sigma))
    assert stats["sigma"].dtype == np.float64


def test_the_tolerance_is_relative_to_the_scale():
    sigma = covariance()
    assert check_covariance(sigma * 1e-12) is None and check_covariance(sigma * 1e12) is None
    low = np.linalg.eigvalsh(sigma)[0]
    shifted = sigma - (low + 1e-3 * np.trace(sigma) / D) * np.eye(D)  # smallest eigenvalue -1e-3 of the mean
    assert "not positive semi-definite" in check_covariance(shifted)
    barely = sigma - (low + 1e-8 * np.trace(sigma) / D) * np.eye(D)  # -1e-8: round-off, accepted
    assert check_covariance(barely) is None


def images_npz(path, shape, data_bytes=None, compress=False):
    """An images .npz whose arr_0 header says ``shape`` and whose data is ``data_bytes`` (default: as many as it
    says)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
    n = int(np.prod(shape)) if data_bytes is None else data_bytes
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        z.writestr("arr_0.npy", header.getvalue() + bytes(n))
    return path


@pytest.mark.parametrize(
    "shape,data,compress,message",
    [
        ((10, 8, 8, 3), 100, False, "header describes shape (10, 8, 8, 3) (1920 bytes) but holds 100 bytes"),
        ((10, 8, 8, 3), 100, True, "header describes shape (10, 8, 8, 3) (1920 bytes) but holds 100 bytes"),
        ((10, 8, 8, 3), 5000, False, "header describes shape (10, 8, 8, 3) (1920 bytes) but holds 5000 bytes"),
        ((4, 0, 0, 3), None, False, "none of them 0"),
        ((0, 8, 8, 3), None, False, "none of them 0"),
        ((4, 8, 8, 1), None, False, "expected uint8 images of shape (N, H, W, 3)"),
    ],
)
def test_images_npz_whose_header_lies_or_with_zero_sized_images(tmp_path, shape, data, compress, message):
    path = images_npz(tmp_path / "images.npz", shape, data, compress)
    with pytest.raises(InputError) as err:
        open_source(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_file_cut_short_after_its_zip_directory_was_read(tmp_path):
    """The zip directory (at the end) intact but the data cut: the memory map would run past the end."""
    path = images_npz(tmp_path / "images.npz", (10, 8, 8, 3))
    assert open_source(path).num_images == 10
    data = path.read_bytes()
    directory = data.rindex(b"PK\x01\x02")
    path.write_bytes(data[:200] + data[directory:])  # entry data cut; the offsets in the directory now lie
    with pytest.raises(InputError):
        open_source(path)
