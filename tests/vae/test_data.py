"""Datasets by name, binarization, input validation."""

import gzip
from pathlib import Path

import pytest
import torch

from pyro_vi import ConfigError, DataError, DataNotFoundError, binarize, load_dataset, validate_images

MNIST_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


def test_digits_is_embedded_split_and_scaled():
    digits = load_dataset("digits")
    assert digits.train_images.shape == (1497, 64) and digits.test_images.shape == (300, 64)
    assert digits.image_shape == (8, 8)
    assert 0.0 <= float(digits.train_images.min()) and float(digits.train_images.max()) == 1.0
    assert set(digits.train_labels.unique().tolist()) == set(range(10))
    # The split is fixed: the same on every call.
    assert torch.equal(load_dataset("digits").test_images, digits.test_images)


def test_dynamic_binarization_is_unbiased_and_fresh():
    images = torch.full((2000, 50), 0.3)
    first, second = binarize(images, "dynamic"), binarize(images, "dynamic")
    assert set(first.unique().tolist()) == {0.0, 1.0}
    # Mean of 100,000 Bernoulli(0.3) draws: standard error sqrt(0.3 * 0.7 / 1e5) = 0.00145; 4 SE.
    assert abs(float(first.mean()) - 0.3) < 4 * 0.00145
    assert not torch.equal(first, second)


def test_threshold_and_none_binarization():
    images = torch.tensor([[0.2, 0.5, 0.7]])
    assert binarize(images, "threshold").tolist() == [[0.0, 0.0, 1.0]]
    assert binarize(images, "none") is images
    with pytest.raises(ConfigError, match="binarization"):
        binarize(images, "otsu")


@pytest.mark.parametrize(
    "images, likelihood, message",
    [
        (torch.tensor([[0.1, float("nan")]]), None, "NaN"),
        (torch.tensor([[0.1, float("inf")]]), "gaussian", "NaN/inf"),
        (torch.zeros(3, 4, 5), None, "shape"),
        (torch.zeros(0, 4), None, "empty"),
        (torch.tensor([[0.1, 1.5]]), "bernoulli", r"\[0, 1\]"),
        (torch.tensor([[-0.1, 0.5]]), "continuous-bernoulli", r"\[0, 1\]"),
        (torch.zeros(2, 3, dtype=torch.long), None, "floating point"),
    ],
    ids=["nan", "inf", "3-d", "empty", "above-one", "negative", "integer"],
)
def test_bad_data_gives_one_clear_line(images, likelihood, message):
    with pytest.raises(DataError, match=message) as error:
        validate_images(images, likelihood)
    assert "\n" not in str(error.value)


def test_grey_levels_outside_unit_interval_are_fine_for_a_gaussian():
    validate_images(torch.tensor([[-2.0, 3.0]]), "gaussian")


def test_unknown_dataset_and_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset("cifar")
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset("mnist", tmp_path / "missing")
    with pytest.raises(DataNotFoundError, match="data-dir") as error:
        load_dataset("mnist", tmp_path, download=False)
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def _write_idx(path: Path, array: torch.Tensor, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + bytes(array.flatten().tolist()))


def test_flat_gzipped_idx_files_load_through_torchvision(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_VI_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "idx"
    source.mkdir()
    generator = torch.Generator().manual_seed(0)
    for split, num in (("train", 6), ("t10k", 4)):
        images = torch.randint(0, 256, (num, 28, 28), generator=generator)
        labels = torch.arange(num) % 10
        _write_idx(source / f"{split}-images-idx3-ubyte.gz", images, 2051)
        _write_idx(source / f"{split}-labels-idx1-ubyte.gz", labels, 2049)
    dataset = load_dataset("mnist", source)
    assert dataset.train_images.shape == (6, 784) and dataset.test_images.shape == (4, 784)
    assert dataset.image_shape == (28, 28)
    assert dataset.test_labels.tolist() == [0, 1, 2, 3]
    assert 0 <= float(dataset.train_images.min()) and float(dataset.train_images.max()) <= 1


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="shared MNIST copy not present")
def test_shared_mnist_loads_with_its_documented_class_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_VI_CACHE", str(tmp_path))
    mnist = load_dataset("mnist", MNIST_DIR)
    assert mnist.train_images.shape == (60000, 784) and mnist.test_images.shape == (10000, 784)
    assert torch.bincount(mnist.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _write_idx_dataset(directory: Path, num_train: int = 6, num_test: int = 4) -> None:
    directory.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for split, num in (("train", num_train), ("t10k", num_test)):
        images = torch.randint(0, 256, (num, 28, 28), generator=generator)
        _write_idx(directory / f"{split}-images-idx3-ubyte.gz", images, 2051)
        _write_idx(directory / f"{split}-labels-idx1-ubyte.gz", torch.arange(num) % 10, 2049)


def test_fashion_mnist_is_found_in_the_debian_location(tmp_path, monkeypatch):
    """Without --data-dir, the system folder (Debian's /usr/share/datasets/fashion-mnist) is read."""
    from pyro_vi.vae import data

    monkeypatch.setenv("PYRO_VI_CACHE", str(tmp_path / "cache"))
    system = tmp_path / "usr" / "share" / "datasets" / "fashion-mnist"
    _write_idx_dataset(system, num_train=5, num_test=3)
    monkeypatch.setitem(data._SYSTEM_DIRS, "fashion-mnist", (str(tmp_path / "absent"), str(system)))
    dataset = load_dataset("fashion-mnist", download=False)
    assert dataset.name == "fashion-mnist"
    assert dataset.train_images.shape == (5, 784) and dataset.test_images.shape == (3, 784)
    assert dataset.test_labels.tolist() == [0, 1, 2]
    monkeypatch.setitem(data._SYSTEM_DIRS, "fashion-mnist", (str(tmp_path / "absent"),))
    with pytest.raises(DataNotFoundError, match="looked in: .*absent; download disabled"):
        load_dataset("fashion-mnist", download=False)


def test_data_dir_that_is_a_file_says_so(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"")
    with pytest.raises(DataNotFoundError, match="is a file, not a directory"):
        load_dataset("mnist", tmp_path / "mnist.npz", download=False)


@pytest.mark.parametrize("kind", ["zero-bytes", "no-items"])
def test_empty_idx_files_say_empty(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_VI_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "idx"
    if kind == "zero-bytes":
        source.mkdir()
        for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            (source / name).write_bytes(b"")
    else:  # valid headers counting 0 images
        _write_idx_dataset(source, num_train=0, num_test=0)
    with pytest.raises(DataError, match="are empty .*train-images-idx3-ubyte") as error:
        load_dataset("mnist", source, download=False)
    assert "\n" not in str(error.value)


def test_validate_images_counts_nan_and_inf_but_accepts_large_finite_values():
    images = torch.rand(50, 8)
    images[3, 2], images[7, 0], images[9, 1] = float("nan"), float("inf"), float("-inf")
    with pytest.raises(DataError, match="contains 3 NaN/inf values"):
        validate_images(images)
    huge = torch.full((4, 2), 3e38)  # finite, but their float32 sum overflows to inf
    assert validate_images(huge) is huge
    with pytest.raises(DataError, match=r"values in \[0, 3e\+38\]"):
        validate_images(torch.cat([huge, torch.zeros(1, 2)]), likelihood="bernoulli")
