"""Named datasets as tensors on the training device, binarization, and input validation.

The whole dataset lives on the device as one tensor; training draws index batches from it (no
per-batch DataLoader). Images are flattened to ``(num_data, pixels)`` with values in [0, 1].

Datasets:
    ``digits``         scikit-learn's 8x8 digits (embedded, no network), 1,497 train / 300 test.
    ``mnist``          MNIST through ``torchvision.datasets.MNIST``, 60,000 / 10,000.
    ``fashion-mnist``  Fashion-MNIST through ``torchvision.datasets.FashionMNIST``.

For MNIST-style data the IDX files may sit in ``--data-dir`` in torchvision's layout
(``<dir>/MNIST/raw/``) or flat, gzipped or not (as in ``shared/data/mnist`` or Debian's
``/usr/share/datasets/fashion-mnist``); without local files torchvision's download is tried.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from pyro_vi.errors import ConfigError, DataError, DataNotFoundError, OutputError

__all__ = ["DATASETS", "BINARIZATIONS", "Dataset", "load_dataset", "binarize", "validate_images"]

DATASETS = ("digits", "mnist", "fashion-mnist")
BINARIZATIONS = ("dynamic", "threshold", "none")

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_TORCHVISION_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_SYSTEM_DIRS = {"mnist": (), "fashion-mnist": ("/usr/share/datasets/fashion-mnist",)}
_HOW_TO_PROVIDE = {
    "mnist": "pass --data-dir pointing at the four MNIST IDX files (e.g. shared/data/mnist)",
    "fashion-mnist": (
        "install them with 'apt-get install -y dataset-fashion-mnist' "
        "or pass --data-dir pointing at the four Fashion-MNIST IDX files"
    ),
}


class Dataset(NamedTuple):
    """Images in [0, 1] flattened to ``(num_data, pixels)``, with integer labels."""

    name: str
    train_images: Tensor  # (num_train, pixels)
    train_labels: Tensor  # (num_train,)
    test_images: Tensor  # (num_test, pixels)
    test_labels: Tensor  # (num_test,)
    image_shape: tuple[int, int]

    @property
    def pixels(self) -> int:
        """Pixels per image (the VAE's ``x_dim``)."""
        return self.train_images.shape[-1]

    def to(self, device: torch.device | str) -> Dataset:
        """The same dataset with every tensor on ``device``."""
        return self._replace(**{k: getattr(self, k).to(device) for k in _TENSOR_FIELDS})


_TENSOR_FIELDS = ("train_images", "train_labels", "test_images", "test_labels")


def load_dataset(
    name: str = "digits",
    data_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    download: bool = True,
) -> Dataset:
    """Load a dataset by name onto ``device`` (grey levels in [0, 1], not binarized).

    Raises:
        ConfigError: unknown dataset name.
        DataNotFoundError: MNIST-style files are neither local nor downloadable.
        DeviceError: ``device`` is CUDA and CUDA is not available.
        OutputError: ``$PYRO_VI_CACHE`` cannot hold the staged files.
    """
    from pyro_vi.device import resolve_device

    device = resolve_device(device)  # before any loading: an unavailable device is one line
    if name == "digits":
        dataset = _load_digits()
    elif name in _TORCHVISION_CLASS:
        dataset = _load_idx_dataset(name, data_dir, download)
    else:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return dataset.to(device)


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.data, dtype=torch.float32) / 16.0  # (1797, 64), in [0, 1]
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    # A fixed split: the same 300 test images on every machine.
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    test, train = order[:300], order[300:]
    return Dataset("digits", images[train], labels[train], images[test], labels[test], (8, 8))


def _find_idx_dir(data_dir: Path) -> Path | None:
    """The folder under ``data_dir`` holding the four IDX files (flat, gzipped or not)."""
    for candidate in (data_dir, data_dir / "raw"):
        if all((candidate / f).exists() or (candidate / f"{f}.gz").exists() for f in _IDX_FILES):
            return candidate
    return None


def _empty_idx_files(directory: Path) -> list[str]:
    """The IDX files in ``directory`` that hold no items: 0 bytes, or a header counting 0.

    An IDX header is a 4-byte magic number, then the item count as a big-endian uint32."""
    empty = []
    for file in _IDX_FILES:
        path = directory / file if (directory / file).exists() else directory / f"{file}.gz"
        try:
            with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as stream:
                header = stream.read(8)
        except (OSError, EOFError):
            continue  # unreadable: reported as corrupt when torchvision reads it
        if len(header) == 0 or (len(header) == 8 and int.from_bytes(header[4:], "big") == 0):
            empty.append(file)
    return empty


def _stage_for_torchvision(name: str, source: Path) -> Path:
    """Lay the IDX files out as torchvision expects (``<root>/<Class>/raw/``, uncompressed).

    A source already in that layout is used as is; otherwise the files are decompressed once
    into a cache (``$PYRO_VI_CACHE`` or ``~/.cache/pyro_vi``), keyed by the source's path.
    """
    class_name = _TORCHVISION_CLASS[name]
    if source.name == "raw" and source.parent.name == class_name and all((source / f).exists() for f in _IDX_FILES):
        return source.parent.parent
    cache = Path(os.environ.get("PYRO_VI_CACHE", Path.home() / ".cache" / "pyro_vi"))
    key = str(source.resolve()).strip("/").replace("/", "_")
    root = cache / key
    raw = root / class_name / "raw"
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # e.g. PYRO_VI_CACHE names a regular file: not the IDX files' fault
        raise OutputError(
            f"cannot use the cache directory {str(cache)!r} for {name} ({error.strerror or error}); "
            "set PYRO_VI_CACHE to a writable directory, or unset it"
        ) from None
    for file in _IDX_FILES:
        target = raw / file
        if target.exists():
            continue
        temporary = raw / f".{file}.{os.getpid()}.tmp"  # per process: torchrun ranks may stage at once
        try:
            if (source / file).exists():
                shutil.copyfile(source / file, temporary)
            else:
                with gzip.open(source / f"{file}.gz", "rb") as compressed, open(temporary, "wb") as out:
                    shutil.copyfileobj(compressed, out)
            os.replace(temporary, target)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            if isinstance(error, (gzip.BadGzipFile, EOFError)) or error.errno is None:
                raise
            raise OutputError(
                f"cannot stage {file} in the cache {str(raw)!r} ({error.strerror or error}); "
                "free some space, or set PYRO_VI_CACHE to another writable directory"
            ) from None
    return root


def _load_idx_dataset(name: str, data_dir, download: bool) -> Dataset:
    import torchvision

    dataset_class = getattr(torchvision.datasets, _TORCHVISION_CLASS[name])
    looked = []
    search = [Path(data_dir)] if data_dir is not None else []
    search += [Path(d) for d in _SYSTEM_DIRS[name]]
    if data_dir is not None and Path(data_dir).is_file():
        raise DataNotFoundError(f"--data-dir {str(data_dir)!r} is a file, not a directory; {_HOW_TO_PROVIDE[name]}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataNotFoundError(f"--data-dir {str(data_dir)!r} does not exist; {_HOW_TO_PROVIDE[name]}")
    for directory in search:
        looked.append(str(directory))
        for candidate in (directory, directory / _TORCHVISION_CLASS[name]):
            found = _find_idx_dir(candidate) if candidate.is_dir() else None
            if found is not None:
                empty = _empty_idx_files(found)
                if empty:
                    raise DataError(
                        f"the {name} IDX files in {str(found)!r} are empty ({', '.join(empty)} hold no items); "
                        f"replace them with the original files, or {_HOW_TO_PROVIDE[name]}"
                    )
                root = None
                try:
                    root = _stage_for_torchvision(name, found)
                    train = dataset_class(root, train=True, download=False)
                    test = dataset_class(root, train=False, download=False)
                    return _from_torchvision(name, train, test)
                except OutputError:  # the cache, not the files
                    raise
                except (ValueError, RuntimeError, OSError, IndexError, EOFError) as error:
                    if root is not None and root != found.parent.parent:  # drop the cached copies so a fixed source is re-read
                        shutil.rmtree(root, ignore_errors=True)
                    raise DataError(
                        f"the {name} IDX files in {str(found)!r} are truncated or corrupt ({type(error).__name__}); "
                        f"replace them with the original files, or {_HOW_TO_PROVIDE[name]}"
                    ) from None
    if download:
        root = Path(data_dir) if data_dir is not None else Path.home() / ".cache" / "pyro_vi" / "download"
        created = not (root / _TORCHVISION_CLASS[name]).exists()
        try:
            train = dataset_class(root, train=True, download=True)
            test = dataset_class(root, train=False, download=True)
            return _from_torchvision(name, train, test)
        except (RuntimeError, OSError, ValueError):
            # No network: leave nothing behind, then fall through to the one-line error.
            if created:
                shutil.rmtree(root / _TORCHVISION_CLASS[name], ignore_errors=True)
    where = "; ".join(looked) if looked else "no local directory given"
    tried = "torchvision's download failed (no network?)" if download else "download disabled"
    raise DataNotFoundError(f"{name} data not found (looked in: {where}; {tried}); {_HOW_TO_PROVIDE[name]}")


def _from_torchvision(name: str, train, test) -> Dataset:
    def flat(split):
        images = split.data.reshape(len(split.data), -1).to(torch.float32) / 255.0
        return images, split.targets.to(torch.long)

    train_images, train_labels = flat(train)
    test_images, test_labels = flat(test)
    return Dataset(name, train_images, train_labels, test_images, test_labels, tuple(train.data.shape[1:]))


def binarize(images: Tensor, method: str, generator: torch.Generator | None = None) -> Tensor:
    """Binarize grey levels: ``dynamic`` draws x ~ Bernoulli(images) (call again each epoch),
    ``threshold`` gives x > 0.5, ``none`` returns the images unchanged."""
    if method == "dynamic":
        uniform = torch.rand(images.shape, generator=generator, device=images.device)
        return (uniform < images).to(images.dtype)
    if method == "threshold":
        return (images > 0.5).to(images.dtype)
    if method == "none":
        return images
    raise ConfigError(f"unknown binarization {method!r}; choose one of {', '.join(BINARIZATIONS)}")


def validate_images(images: Tensor, likelihood: str | None = None, name: str = "data") -> Tensor:
    """Check a ``(num_data, pixels)`` float tensor: non-empty, finite, and inside the likelihood's
    support ([0, 1] for ``bernoulli`` and ``continuous-bernoulli``).

    Raises:
        DataError: with a one-line description of the problem and the fix.
    """
    if not isinstance(images, Tensor):
        raise DataError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 2:
        raise DataError(
            f"{name} must have shape (num_data, pixels), got {tuple(images.shape)}; flatten each image to one row"
        )
    if images.shape[0] == 0 or images.shape[1] == 0:
        raise DataError(f"{name} is empty (shape {tuple(images.shape)}); provide at least one datapoint")
    if not torch.is_floating_point(images):
        raise DataError(f"{name} must be floating point, got {images.dtype}; convert with .float()")
    # One pass without a temporary: a NaN/inf anywhere makes the sum non-finite (the exact count
    # runs only then, as an overflowing sum of finite values would also get here).
    if not torch.isfinite(images.sum()):
        bad = int((~torch.isfinite(images)).sum())
        if bad:
            raise DataError(f"{name} contains {bad} NaN/inf values; remove or impute them")
    if likelihood in ("bernoulli", "continuous-bernoulli"):
        low, high = (float(v) for v in torch.aminmax(images))
        if low < 0 or high > 1:
            raise DataError(
                f"{name} has values in [{low:g}, {high:g}] but a {likelihood} likelihood needs [0, 1]; "
                "rescale the data or use the gaussian likelihood (--likelihood gaussian)"
            )
    return images
