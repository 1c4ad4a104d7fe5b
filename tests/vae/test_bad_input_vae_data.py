"""Bad data directories for ``pyro-vi vae --data-dir`` and ``load_dataset`` (offline): missing,
a file, empty, partial or corrupt IDX files. One line, exit 2, the directory left as it was.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from bad_input_helpers import TINY, assert_one_line, run_cli, snapshot
from pyro_vi.errors import DataError, DataNotFoundError
from pyro_vi.vae.data import load_dataset

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails at once, as on an offline machine."""

    def refuse(self, address):
        raise OSError(101, "Network is unreachable (blocked by the test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


# --------------------------------------------------------------------------------------------
# CLI: data directories (offline).


def _write_corrupt_idx(directory: Path) -> None:
    for name in IDX_FILES:  # a plausible magic number, then nothing
        (directory / name).write_bytes(b"\x00\x00\x08\x03garbage")


DATA_CASES = [
    pytest.param("missing", "does not exist", id="data-dir-missing"),
    pytest.param("file", "is a file, not a directory", id="data-dir-is-a-file"),
    pytest.param("empty-files", "are empty", id="data-dir-empty-files"),
    pytest.param("empty", "mnist data not found", id="data-dir-empty"),
    pytest.param("partial", "mnist data not found", id="data-dir-lacks-files"),
    pytest.param("corrupt", "truncated or corrupt", id="data-dir-corrupt-files"),
]


def _make_data_dir(kind: str, root: Path) -> Path:
    directory = root / "data"
    if kind == "missing":
        return directory
    if kind == "file":
        directory.write_bytes(b"not a folder")
        return directory
    directory.mkdir()
    if kind == "empty-files":
        for name in IDX_FILES:
            (directory / name).write_bytes(b"")
    if kind == "partial":
        (directory / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03")
    if kind == "corrupt":
        _write_corrupt_idx(directory)
    return directory


@pytest.mark.parametrize("kind, fragment", DATA_CASES)
def test_cli_bad_data_dir(kind, fragment, tmp_path, capsys, no_network, monkeypatch):
    monkeypatch.setenv("PYRO_VI_CACHE", str(tmp_path / "cache"))
    data_dir = _make_data_dir(kind, tmp_path)
    before = snapshot(data_dir)
    out = tmp_path / "run"
    status, stderr = run_cli(["vae", *TINY, "--dataset", "mnist", "--data-dir", str(data_dir), "--out", str(out)], capsys)
    assert status == 2
    assert_one_line(stderr, fragment)
    assert "--data-dir" in stderr  # says what to do
    assert not out.exists()
    assert snapshot(data_dir) == before
    if kind == "file":
        assert data_dir.read_bytes() == b"not a folder"


@pytest.mark.parametrize("kind, fragment", DATA_CASES)
def test_api_bad_data_dir(kind, fragment, tmp_path, no_network, monkeypatch):
    monkeypatch.setenv("PYRO_VI_CACHE", str(tmp_path / "cache"))
    data_dir = _make_data_dir(kind, tmp_path)
    expected = DataError if kind in ("corrupt", "empty-files") else DataNotFoundError
    with pytest.raises(expected, match=fragment) as caught:
        load_dataset("mnist", data_dir)
    assert type(caught.value) is expected
    assert "\n" not in str(caught.value)


def test_corrupt_idx_cache_is_not_kept(tmp_path, monkeypatch):
    """After a corrupt source is replaced by good files, the next load reads the good files."""
    if not MNIST_DIR.is_dir():
        pytest.skip("shared/data/mnist is not present")
    monkeypatch.setenv("PYRO_VI_CACHE", str(tmp_path / "cache"))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _write_corrupt_idx(data_dir)
    with pytest.raises(DataError):
        load_dataset("mnist", data_dir, download=False)
    for name in IDX_FILES:
        (data_dir / name).unlink()
        os.symlink(MNIST_DIR / f"{name}.gz", data_dir / f"{name}.gz")
    dataset = load_dataset("mnist", data_dir, download=False)
    assert dataset.train_images.shape == (60000, 784)
