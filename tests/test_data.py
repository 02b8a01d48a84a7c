"""sitcli/data/: the embedded digits, image folders, and the (index, flip) batch order."""


import numpy as np
import pytest
import torch
from PIL import Image

from sitcli.data import DigitsDataset, EpochBatches, ImageFolderDataset, center_crop_arr, open_dataset, to_uint8
from sitcli.errors import InputError


def test_digits_are_the_sklearn_digits_on_the_8bit_grid():
    from sklearn.datasets import load_digits

    data = DigitsDataset()
    assert len(data) == 1797 and data.info.channels == 1 and data.info.size == 8 and data.num_classes == 10
    x, y = data.__getitems__([(0, False), (5, False)])
    assert x.shape == (2, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    ref = load_digits()
    u8 = to_uint8(x)[..., 0].numpy()
    assert np.array_equal(u8, np.round(ref.images[[0, 5]] * 255 / 16).astype(np.uint8))
    assert y.tolist() == ref.target[[0, 5]].tolist()


def test_digits_can_be_resized():
    assert DigitsDataset(16).__getitems__([(0, False)])[0].shape == (1, 1, 16, 16)


def _folder(tmp_path, sizes=((40, 30), (20, 50)), corrupt=True):
    root = tmp_path / "imgs"
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for k, size in enumerate(sizes):
            arr = np.full((size[1], size[0], 3), 40 * c + 10 * k, dtype=np.uint8)
            arr[:, : size[0] // 2] = 200  # left half bright: shows flips
            Image.fromarray(arr).save(root / name / f"{k}.png")
    if corrupt:
        (root / "dog" / "broken.png").write_bytes(b"not a png")
    return root


def test_image_folder_crops_labels_and_flips(tmp_path):
    data = ImageFolderDataset(_folder(tmp_path, corrupt=False), image_size=16)
    assert data.classes == ["cat", "dog"] and len(data) == 4
    x, y = data[(2, False)]
    assert x.shape == (3, 16, 16) and y == 1
    flipped, _ = data[(2, True)]
    assert torch.equal(flipped, x.flip(-1))
    assert x[:, :, 0].mean() > x[:, :, -1].mean()  # bright half stays on the left unflipped


def test_center_crop_is_adm_style():
    image = Image.fromarray(np.zeros((100, 300, 3), dtype=np.uint8))
    assert center_crop_arr(image, 32).shape == (32, 32, 3)


def test_unreadable_image_is_reported_by_path_and_skipped(tmp_path, capsys):
    data = ImageFolderDataset(_folder(tmp_path), image_size=8)
    broken = [i for i, (p, _) in enumerate(data.files) if p.name == "broken.png"][0]
    x, y = data.__getitems__([(broken, False)])
    assert x.shape == (1, 3, 8, 8)
    assert "broken.png" in capsys.readouterr().err


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "no class sub-folders"),
    (lambda root: (root / "a").mkdir(parents=True), "no images"),
])
def test_bad_folders_are_clear_errors(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(InputError, match=message):
        open_dataset(str(root), 32)


def test_batch_order_is_a_function_of_seed_and_step():
    straight = EpochBatches(10, 4, seed=3, flip=True)
    it = iter(straight)
    first = [next(it) for _ in range(5)]  # 2 batches per epoch: crosses two epoch boundaries
    resumed = iter(EpochBatches(10, 4, seed=3, flip=True, start_step=3))
    assert [next(resumed) for _ in range(2)] == first[3:]
    assert len({i for i, _ in first[0] + first[1]}) == 8  # one epoch: no item twice


def test_ranks_split_each_global_batch():
    one = next(iter(EpochBatches(20, 8, seed=0, flip=True)))
    two = [next(iter(EpochBatches(20, 8, seed=0, flip=True, rank=r, world_size=2))) for r in range(2)]
    assert two[0] + two[1] == one


def test_batch_size_must_fit():
    with pytest.raises(InputError, match="divisible"):
        EpochBatches(20, 7, seed=0, flip=False, world_size=2)
    with pytest.raises(InputError, match="fewer than"):
        EpochBatches(5, 8, seed=0, flip=False)
