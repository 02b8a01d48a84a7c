"""`sit fid` against pytorch-fid with the same random Inception weights, and its errors via the CLI.

Inception at 299x299 costs 0.3-2 s per image on a small shared CPU, so the real network sees only
two folders of 3 images, once through pytorch-fid and once through `sit fid` (module fixtures),
plus 2 images for the per-image feature comparison. Precision/recall, which needs more than
k=3 images per set, is checked in test_fid_math.py and test_fid_inputs.py.
"""

import json
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from helpers import random_inception_state
from sitcli.cli import app
from sitcli.evaluate import inception, inputs
from sitcli.evaluate.metrics import frechet_distance, kernel_inception_distance

pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception")
pytorch_fid_score = pytest.importorskip("pytorch_fid.fid_score")

runner = CliRunner()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    state = random_inception_state()
    path = tmp_path_factory.mktemp("weights") / inception.PYTORCH_FID_FILE
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A: noisy mid-grey images in png/jpg/webp; B: brighter, smoother png images. 3 each, 40x56."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (root / "a").mkdir()
    (root / "b").mkdir()
    for i, ext in enumerate(["png", "jpg", "webp"]):
        img = np.clip(rng.normal(128, 60, (40, 56, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "a" / f"{i:03d}.{ext}", **({"lossless": True} if ext == "webp" else {}))
    for i in range(3):
        base = np.linspace(0, 1, 56)[None, :, None] * rng.uniform(100, 255, (1, 1, 3))
        img = np.clip(base + 60 + rng.normal(0, 15, (40, 56, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "b" / f"{i:03d}.png")
    return root / "a", root / "b"


@pytest.fixture(scope="module")
def reference(weights, folders):
    """pytorch-fid's own pipeline on both folders, with hooks recording its per-image features."""
    _, state = weights
    with mock.patch.object(pytorch_fid_inception, "load_state_dict_from_url", return_value=state):
        model = pytorch_fid_inception.InceptionV3([3])
    recorded = {"pool": [], "spatial": []}
    model.register_forward_hook(lambda m, i, out: recorded["pool"].append(out[0].flatten(1).clone()))
    mixed_6d = model.blocks[2][6]  # block 2 runs Mixed_5b, 5c, 5d, 6a, 6b, 6c, 6d, 6e
    mixed_6d.branch1x1.register_forward_hook(lambda m, i, out: recorded["spatial"].append(out.clone()))
    out = {}
    for label, folder in zip("AB", folders):
        recorded["pool"].clear()
        recorded["spatial"].clear()
        mu, sigma = pytorch_fid_score.compute_statistics_of_path(str(folder), model, 2, 2048, "cpu", 0)
        out[label] = {
            "mu": mu,
            "sigma": sigma,
            "pool": torch.cat(recorded["pool"]).double().numpy(),
            "spatial": torch.cat(recorded["spatial"])[:, :7].permute(0, 2, 3, 1).flatten(1).double().numpy(),
        }
    a, b = out["A"], out["B"]
    out["fid"] = pytorch_fid_score.calculate_frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"])
    return out


@pytest.fixture(scope="module")
def cli_run(weights, folders, tmp_path_factory):
    """`sit fid A B` with every metric but precision/recall; batches of 2 and 1 exercise the streaming."""
    out = tmp_path_factory.mktemp("out")
    args = [
        "fid",
        str(folders[0]),
        str(folders[1]),
        "--metrics",
        "fid,sfid,is,kid",
        "--is-splits",
        "1",
        "--kid-subsets",
        "3",
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--inception-weights",
        str(weights[0]),
        "--save-stats",
        str(out / "a.npz"),
        "--json",
        str(out / "r.json"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result, json.loads((out / "r.json").read_text()), out / "a.npz"


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# ----------------------------------------------------------------------------- agreement with pytorch-fid


@pytest.mark.slow
def test_features_match_pytorch_fid(weights, folders, reference):
    net = inception.load_inception(weights[0])
    source = inputs.open_source(folders[0])
    first_two = next(iter(inputs.image_batches(source, 2, num_workers=0))).images  # png and jpg
    with torch.inference_mode():
        ours = {k: v.double().numpy() for k, v in net(first_two.float() / 255, ("pool", "spatial", "logits")).items()}
    pool, spatial, logits = ours["pool"], ours["spatial"], ours["logits"]
    theirs = {k: v[:2] for k, v in reference["A"].items() if k in ("pool", "spatial")}
    assert pool.shape == (2, 2048) and spatial.shape == (2, 2023)
    assert theirs["pool"].std() > 0.05 and theirs["spatial"].std() > 0.05  # not a degenerate network
    np.testing.assert_allclose(pool, theirs["pool"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(spatial, theirs["spatial"], rtol=0, atol=1e-4)
    # IS logits are the classifier without its bias (see FIDInceptionV3).
    fc = weights[1]["fc.weight"].double().numpy()
    np.testing.assert_allclose(logits, theirs["pool"] @ fc.T, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_fast_network_is_folded_channels_last_and_matches_pytorch_fid(weights, folders, reference):
    net = inception.optimize_for_inference(inception.load_inception(weights[0]))
    convs = [m for m in net.modules() if isinstance(m, inception.BasicConv2d)]
    assert all(isinstance(m.bn, torch.nn.Identity) and m.conv.bias is not None for m in convs)
    assert net.Conv2d_1a_3x3.conv.weight.is_contiguous(memory_format=torch.channels_last)
    source = inputs.open_source(folders[0])
    first_two = next(iter(inputs.image_batches(source, 2, num_workers=0))).images
    with torch.inference_mode():
        ours = {k: v.double().numpy() for k, v in net(first_two.float() / 255, ("pool", "spatial")).items()}
    np.testing.assert_allclose(ours["pool"], reference["A"]["pool"][:2], rtol=0, atol=1e-4)
    np.testing.assert_allclose(ours["spatial"], reference["A"]["spatial"][:2], rtol=0, atol=1e-4)


@pytest.mark.slow
def test_fast_cli_fid_matches_pytorch_fid(weights, folders, reference, tmp_path, monkeypatch):
    # With --tf32 as well: Inception then runs under TF32 (on CUDA; the same numbers on a CPU).
    seen, load = [], inception.load_inception

    def load_and_watch(*a, **kw):
        net = load(*a, **kw)
        net.register_forward_pre_hook(lambda *_: seen.append(torch.backends.cudnn.conv.fp32_precision))
        return net

    monkeypatch.setattr(inception, "load_inception", load_and_watch)
    args = [
        "fid",
        str(folders[0]),
        str(folders[1]),
        "--fast",
        "--tf32",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--inception-weights",
        str(weights[0]),
        "--json",
        str(tmp_path / "r.json"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["settings"]["fast"] is True and report["settings"]["tf32"] is True
    assert seen and set(seen) == {"tf32"}
    assert report["metrics"]["fid"] == pytest.approx(reference["fid"], abs=1e-3)


@pytest.mark.slow
def test_fid_matches_pytorch_fid(cli_run, reference):
    _, result, _ = cli_run
    assert reference["fid"] > 1.0  # the two folders differ, so a wrong answer would show
    assert result["metrics"]["fid"] == pytest.approx(reference["fid"], abs=1e-3)


@pytest.mark.slow
def test_saved_statistics_match_pytorch_fid(cli_run, reference):
    _, _, stats = cli_run
    with np.load(stats) as f:
        np.testing.assert_allclose(f["mu"], reference["A"]["mu"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(f["sigma"], reference["A"]["sigma"], rtol=0, atol=1e-5)
        spatial = reference["A"]["spatial"]
        np.testing.assert_allclose(f["mu_s"], spatial.mean(0), rtol=0, atol=1e-5)
        np.testing.assert_allclose(f["sigma_s"], np.cov(spatial, rowvar=False), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_other_metrics_equal_their_formulas_on_pytorch_fid_features(cli_run, reference, weights):
    _, result, _ = cli_run
    m, a, b = result["metrics"], reference["A"], reference["B"]
    sfid = frechet_distance(
        a["spatial"].mean(0),
        np.cov(a["spatial"], rowvar=False),
        b["spatial"].mean(0),
        np.cov(b["spatial"], rowvar=False),
    )
    assert m["sfid"] == pytest.approx(sfid, rel=1e-5)
    # Inception Score of B in one split, written out: exp(mean KL(p(y|x) || p(y))).
    logits = b["pool"] @ weights[1]["fc.weight"].double().numpy().T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    score = np.exp(np.sum(p * (np.log(p) - np.log(p.mean(0))), 1).mean())
    assert score > 1.01  # the three images are told apart, so a wrong formula would show
    assert m["is"] == pytest.approx(score, rel=1e-4) and m["is_std"] == 0
    kid, kid_std, _ = kernel_inception_distance(a["pool"], b["pool"], subsets=3, subset_size=1000, seed=2020)
    assert m["kid"] == pytest.approx(kid, rel=1e-4) and m["kid_std"] == pytest.approx(kid_std, rel=1e-3, abs=1e-7)


@pytest.mark.slow
def test_cli_prints_table_and_writes_json(cli_run, folders):
    result, data, stats = cli_run
    for row in ("FID", "sFID", "Inception Score", "KID"):
        assert row in result.output
    assert "singular" in result.output  # 3 images cannot give a full-rank 2048-d covariance
    assert data["inputs"]["A"] == {"path": str(folders[0]), "kind": "folder", "num_images": 3}
    assert data["saved_stats"] == str(stats) and data["settings"]["batch_size"] == 2
    assert data["settings"]["tf32"] is False  # true float32 convolutions unless asked (pytorch-fid's numbers)


@pytest.mark.slow
def test_statistics_files_as_inputs(cli_run, reference, tmp_path):
    _, result, stats = cli_run
    theirs_b = tmp_path / "b_pytorch_fid.npz"
    np.savez_compressed(theirs_b, mu=reference["B"]["mu"], sigma=reference["B"]["sigma"])  # as pytorch-fid writes
    res = runner.invoke(app, ["fid", str(stats), str(theirs_b), "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    fid = json.loads((tmp_path / "r.json").read_text())["metrics"]["fid"]
    assert fid == pytest.approx(reference["fid"], abs=1e-3)
    res = runner.invoke(app, ["fid", str(stats), str(stats), "-m", "fid,sfid", "--json", str(tmp_path / "same.json")])
    same = json.loads((tmp_path / "same.json").read_text())["metrics"]
    assert abs(same["fid"]) < 1e-6 and abs(same["sfid"]) < 1e-6


# ----------------------------------------------------------------------------- weights


def test_weights_are_found_in_the_torch_hub_cache(monkeypatch, tmp_path, weights):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(weights[1], cache / inception.PYTORCH_FID_FILE)
    assert inception.find_inception_weights() == cache / inception.PYTORCH_FID_FILE
    net = inception.load_inception()
    assert torch.equal(net.Mixed_7c.branch_pool.conv.weight, weights[1]["Mixed_7c.branch_pool.conv.weight"])


@pytest.mark.slow
def test_torch_fidelity_weight_file_is_accepted(monkeypatch, tmp_path, weights):
    # torch-fidelity stores the same tensors without batch-norm counters, under its own file name.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    fidelity = {k: v for k, v in weights[1].items() if not k.endswith("num_batches_tracked")}
    torch.save(fidelity, cache / inception.TORCH_FIDELITY_FILE)
    assert inception.find_inception_weights().name == inception.TORCH_FIDELITY_FILE
    for variant in (fidelity, {"state_dict": {"module." + k: v for k, v in fidelity.items()}}):
        torch.save(variant, tmp_path / "w.pth")
        loaded = inception.load_inception(tmp_path / "w.pth").state_dict()
        assert all(torch.equal(loaded[k], fidelity[k]) for k in fidelity) and len(loaded) == len(weights[1])


def test_missing_weights_error_names_file_url_and_folder(monkeypatch, tmp_path, folders):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    line = _one_line_error(runner.invoke(app, ["fid", str(folders[0]), str(folders[1])]))
    assert inception.PYTORCH_FID_FILE in line and inception.PYTORCH_FID_URL in line
    assert str(tmp_path / "hub" / "checkpoints") in line


def test_wrong_weights_file_is_refused(tmp_path, folders):
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "w.pth")
    args = ["fid", str(folders[0]), str(folders[1]), "--inception-weights", str(tmp_path / "w.pth")]
    assert "is not FID Inception-v3 weights" in _one_line_error(runner.invoke(app, args))


# ----------------------------------------------------------------------------- bad inputs through the CLI


def test_empty_folder(tmp_path, folders):
    (tmp_path / "empty").mkdir()
    assert "no images found" in _one_line_error(runner.invoke(app, ["fid", str(tmp_path / "empty"), str(folders[1])]))


@pytest.mark.slow
def test_unreadable_image(tmp_path, weights, folders):
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bad / "ok.png")
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    args = ["fid", str(bad), str(folders[1]), "--inception-weights", str(weights[0]), "--num-workers", "0"]
    line = _one_line_error(runner.invoke(app, args))
    assert "broken.png" in line and "cannot read image" in line


@pytest.mark.slow
def test_mismatched_statistics_dimensions(tmp_path):
    np.savez(tmp_path / "a.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    np.savez(tmp_path / "b.npz", mu=np.zeros(64), sigma=np.eye(64))
    line = _one_line_error(runner.invoke(app, ["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]))
    assert "2048-d" in line and "64-d" in line


def test_mismatched_dimensions_are_refused_before_any_image_is_decoded(monkeypatch, tmp_path, folders):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no weights: loading the network would fail differently
    np.savez(tmp_path / "b.npz", mu=np.zeros(768), sigma=np.eye(768))
    line = _one_line_error(runner.invoke(app, ["fid", str(folders[0]), str(tmp_path / "b.npz")]))
    assert "A has 2048-d statistics but B has 768-d" in line


def test_too_few_images_for_a_covariance(tmp_path, folders):
    (tmp_path / "one").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "one" / "x.png")
    line = _one_line_error(runner.invoke(app, ["fid", str(tmp_path / "one"), str(folders[1])]))
    assert "covariance needs at least 2" in line


@pytest.mark.slow
def test_metric_that_needs_images_with_statistics_input(tmp_path, folders):
    np.savez(tmp_path / "s.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    line = _one_line_error(runner.invoke(app, ["fid", str(folders[0]), str(tmp_path / "s.npz"), "-m", "fid,kid"]))
    assert "kid need images" in line


def test_unknown_metric(folders):
    result = runner.invoke(app, ["fid", str(folders[0]), str(folders[1]), "-m", "fdi"])
    assert "unknown metric" in _one_line_error(result)
