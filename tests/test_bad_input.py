"""Bad input: one line that says what was wrong and what to do, a non-zero exit, no partial output.

Each case runs through the CLI (``pyro_vi.cli.main``, the function behind the ``pyro-vi`` script,
in-process to keep the matrix fast; one case also runs as a real subprocess) and, where an API
exists, through the Python API, which must raise the precise ``PyroVIError`` subclass.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions
import pytest
import torch

from pyro_vi import cli, io
from pyro_vi.engine import checkpoint
from pyro_vi.vae.data import load_dataset, validate_images
from pyro_vi.device import resolve_device
from pyro_vi.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DataNotFoundError,
    DeviceError,
    OutputError,
    PyroVIError,
)
from pyro_vi.vae.model import VAE
from pyro_vi.vae.train import TrainConfig, fit

# The smallest run that trains: 1,497 digits, 14 steps of 100.
TINY = ["--epochs", "1", "--z-dim", "2", "--hidden-dims", "8", "--batch-size", "100", "--no-progress"]
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails at once, as on an offline machine."""

    def refuse(self, address):
        raise OSError(101, "Network is unreachable (blocked by the test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A finished 1-epoch run whose checkpoint the checkpoint cases corrupt or contradict."""
    out = tmp_path_factory.mktemp("good") / "run"
    assert cli.main(["vae", *TINY, "--out", str(out)]) == 0
    return out


def _snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (hidden temporaries included) with its bytes."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        status = cli.main(argv)
    except SystemExit as exit_:  # argparse errors
        status = exit_.code
    return status, capsys.readouterr().err


def _assert_one_line(stderr: str, fragment: str) -> None:
    assert "Traceback" not in stderr
    lines = stderr.strip("\n").split("\n")
    assert len(lines) == 1, f"expected one line, got:\n{stderr}"
    assert lines[0].startswith(("pyro-vi vae: error:", "pyro-vi: error:")), lines[0]
    assert fragment.lower() in lines[0].lower(), lines[0]


# --------------------------------------------------------------------------------------------
# CLI: options. Each must fail before the output directory is created.

OPTION_CASES = [
    pytest.param(["--batch-size", "0"], "batch size must be a positive integer", id="batch-size-0"),
    pytest.param(["--batch-size", "-5"], "batch size must be a positive integer", id="batch-size-negative"),
    pytest.param(["--batch-size", "5000"], "larger than the 1497 training points", id="batch-size-above-data"),
    pytest.param(["--learning-rate", "0"], "learning rate must be positive", id="learning-rate-0"),
    pytest.param(["--learning-rate", "-0.001"], "learning rate must be positive", id="learning-rate-negative"),
    pytest.param(["--learning-rate", "nan"], "learning rate must be positive", id="learning-rate-nan"),
    pytest.param(["--learning-rate", "inf"], "learning rate must be positive", id="learning-rate-inf"),
    pytest.param(["--epochs", "0"], "epochs must be a positive integer", id="epochs-0"),
    pytest.param(["--epochs", "-3"], "epochs must be a positive integer", id="epochs-negative"),
    pytest.param(["--epochs", "1.5"], "invalid int value", id="epochs-not-integer"),
    pytest.param(["--z-dim", "0"], "z_dim must be a positive integer", id="z-dim-0"),
    pytest.param(["--z-dim", "-2"], "z_dim must be a positive integer", id="z-dim-negative"),
    pytest.param(["--hidden-dims", "0"], "hidden sizes must be positive", id="hidden-0"),
    pytest.param(["--hidden-dims", "8,-1"], "hidden sizes must be positive", id="hidden-negative"),
    pytest.param(["--hidden-dims", "8,x"], "comma-separated integers", id="hidden-not-integer"),
    pytest.param(["--x-scale", "-1", "--likelihood", "gaussian"], "x_scale must be positive", id="x-scale-negative"),
    pytest.param(["--kl-warmup-epochs", "-1"], "warm-up must be >= 0", id="kl-warmup-negative"),
    pytest.param(["--kl-warmup-epochs", "inf"], "warm-up must be >= 0 epochs and finite, got inf", id="kl-warmup-inf"),
    pytest.param(["--kl-warmup-epochs", "nan"], "warm-up must be >= 0 epochs and finite, got nan", id="kl-warmup-nan"),
    pytest.param(["--seed", "-1"], "argument --seed: must be an integer from 0 to 2**32 - 1", id="seed-negative"),
    pytest.param(["--seed", "99999999999"], "argument --seed: must be an integer from 0 to 2**32 - 1", id="seed-above-2-32"),
    pytest.param(["--seed", "4294967296"], "argument --seed: must be an integer from 0 to 2**32 - 1", id="seed-2-32"),
    pytest.param(["--seed", "1.5"], "argument --seed: must be an integer", id="seed-not-integer"),
    pytest.param(["--resume", "--overwrite"], "--overwrite: not allowed with argument --resume", id="resume-and-overwrite"),
    pytest.param(["--checkpoint-every-steps", "-1"], "must be >= 0", id="checkpoint-every-negative"),
    pytest.param(["--dataset", "cifar10"], "invalid choice: 'cifar10'", id="unknown-dataset"),
    pytest.param(["--likelihood", "poisson"], "invalid choice: 'poisson'", id="unknown-likelihood"),
    pytest.param(["--elbo", "magic"], "invalid choice: 'magic'", id="unknown-elbo"),
    pytest.param(["--binarization", "dither"], "invalid choice: 'dither'", id="unknown-binarization"),
    pytest.param(["--on-nan", "ignore"], "invalid choice: 'ignore'", id="unknown-on-nan"),
    pytest.param(["--compile", "--estimator", "score"], "--compile records Trace_ELBO", id="compile-with-estimator"),
    pytest.param(["--compile", "--elbo", "meanfield"], "--compile records Trace_ELBO", id="compile-with-meanfield"),
    pytest.param(["--device", "tpu"], "invalid choice: 'tpu'", id="unknown-device"),
    pytest.param(["--frobnicate"], "unrecognized arguments", id="unknown-option"),
    pytest.param(["--particles", "0"], "--particles must be a positive integer", id="particles-0"),
    pytest.param(["--particles", "-2"], "--particles must be a positive integer", id="particles-negative"),
    pytest.param(["--objective", "elbo2"], "invalid choice: 'elbo2'", id="unknown-objective"),
    pytest.param(["--iwae-k", "-1"], "--iwae-k must be >= 0", id="iwae-k-negative"),
    pytest.param(
        ["--device", "cuda"],
        "CUDA is not available here; use --device cpu",
        id="cuda-without-cuda",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present"),
    ),
]


@pytest.mark.parametrize("extra, fragment", OPTION_CASES)
def test_cli_bad_option(extra, fragment, tmp_path, capsys):
    out = tmp_path / "run"
    status, stderr = _run_cli(["vae", *TINY, "--out", str(out), *extra], capsys)
    assert status == 2
    _assert_one_line(stderr, fragment)
    assert not out.exists(), "nothing may be written for a bad option"


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
    before = _snapshot(data_dir)
    out = tmp_path / "run"
    status, stderr = _run_cli(["vae", *TINY, "--dataset", "mnist", "--data-dir", str(data_dir), "--out", str(out)], capsys)
    assert status == 2
    _assert_one_line(stderr, fragment)
    assert "--data-dir" in stderr  # says what to do
    assert not out.exists()
    assert _snapshot(data_dir) == before
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


# --------------------------------------------------------------------------------------------
# CLI: output locations.


def _output_cases():
    cases = [
        pytest.param("file", "is a file, not a directory", id="out-is-a-file"),
        pytest.param("under-file", "cannot create output directory", id="out-under-a-file"),
        pytest.param(
            "sys",
            "cannot create output directory",
            id="out-not-writable-sysfs",
            marks=pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs a read-only /sys"),
        ),
        pytest.param(
            "read-only",
            "is not writable",
            id="out-not-writable-chmod",
            marks=pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits"),
        ),
    ]
    return cases


def _make_out(kind: str, root: Path) -> Path:
    if kind == "file":
        (root / "out").write_text("not a directory")
        return root / "out"
    if kind == "under-file":
        (root / "file").write_text("not a directory")
        return root / "file" / "run"
    if kind == "sys":
        return Path("/sys/pyro_vi_test_out")
    directory = root / "read-only"
    directory.mkdir()
    directory.chmod(0o555)
    return directory


@pytest.mark.parametrize("kind, fragment", _output_cases())
def test_cli_bad_output_dir(kind, fragment, tmp_path, capsys):
    out = _make_out(kind, tmp_path)
    before = _snapshot(tmp_path)
    status, stderr = _run_cli(["vae", *TINY, "--out", str(out)], capsys)
    assert status == 2
    _assert_one_line(stderr, fragment)
    assert "--out" in stderr
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("kind, fragment", _output_cases())
def test_api_bad_output_dir(kind, fragment, tmp_path):
    with pytest.raises(OutputError, match=fragment):
        io.prepare_output_dir(_make_out(kind, tmp_path))


# --------------------------------------------------------------------------------------------
# CLI: checkpoints. The existing file must be left byte for byte as it was, and nothing added.


def _corrupt(kind: str, path: Path) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "bit-flipped":
        path.write_bytes(data[:200] + bytes(b ^ 0xFF for b in data[200:400]) + data[400:])
    elif kind == "newer-format":
        saved = torch.load(path, weights_only=False)
        saved["format_version"] = checkpoint.FORMAT_VERSION + 1
        torch.save(saved, path)
    elif kind == "not-a-checkpoint":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "missing":
        path.unlink()


CHECKPOINT_CASES = [
    pytest.param("truncated", [], "truncated or corrupt", id="checkpoint-truncated"),
    pytest.param("empty", [], "truncated or corrupt", id="checkpoint-empty"),
    pytest.param("garbage", [], "truncated or corrupt", id="checkpoint-garbage"),
    pytest.param("bit-flipped", [], "truncated or corrupt", id="checkpoint-bit-flipped"),
    pytest.param("newer-format", [], "newer than this pyro_vi", id="checkpoint-newer-format"),
    pytest.param("not-a-checkpoint", [], "is not a pyro_vi checkpoint", id="checkpoint-foreign"),
    pytest.param("missing", [], "no checkpoint at", id="checkpoint-missing"),
    pytest.param(None, ["--z-dim", "3"], "z_dim: 2 in the checkpoint, 3 now", id="checkpoint-other-z-dim"),
    pytest.param(None, ["--hidden-dims", "16"], "hidden_dims", id="checkpoint-other-hidden"),
    pytest.param(None, ["--likelihood", "continuous-bernoulli"], "likelihood", id="checkpoint-other-likelihood"),
    pytest.param(None, ["--learning-rate", "0.01"], "learning_rate", id="checkpoint-other-learning-rate"),
    pytest.param(None, ["--seed", "1"], "seed", id="checkpoint-other-seed"),
]


@pytest.mark.parametrize("kind, extra, fragment", CHECKPOINT_CASES)
def test_cli_bad_checkpoint(kind, extra, fragment, good_run, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((good_run / "checkpoint.pt").read_bytes())
    if kind is not None:
        _corrupt(kind, out / "checkpoint.pt")
    before = _snapshot(out)
    argv = ["vae", *TINY, "--out", str(out), *extra, "--epochs", "2", "--resume"]
    status, stderr = _run_cli(argv, capsys)
    assert status == 2
    _assert_one_line(stderr, fragment)
    assert _snapshot(out) == before


def test_cli_fresh_run_refuses_to_replace_a_checkpoint(good_run, tmp_path, capsys):
    """Forgetting --resume must not destroy a run: nothing is written, --resume/--overwrite named."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((good_run / "checkpoint.pt").read_bytes())
    before = _snapshot(out)
    status, stderr = _run_cli(["vae", *TINY, "--out", str(out)], capsys)
    assert status == 2
    _assert_one_line(stderr, "already holds a checkpoint; pass --resume to continue it or --overwrite to start over")
    assert _snapshot(out) == before


def test_api_fresh_fit_refuses_to_replace_a_checkpoint_unless_told(good_run, tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes((good_run / "checkpoint.pt").read_bytes())
    vae = VAE(64, z_dim=2, hidden_dims=(8,))
    config = TrainConfig(epochs=1, batch_size=10)
    with pytest.raises(OutputError, match="already holds a checkpoint; pass resume=True .* or overwrite=True"):
        fit(vae.model, vae.guide, GOOD, config, checkpoint_path=path, progress=False)
    assert path.read_bytes() == (good_run / "checkpoint.pt").read_bytes()
    fit(vae.model, vae.guide, GOOD, config, checkpoint_path=path, overwrite=True, progress=False)
    assert checkpoint.load(path)["config"]["train"]["batch_size"] == 10  # the new run's, not the old one's


@pytest.mark.parametrize("kind, extra, fragment", [c for c in CHECKPOINT_CASES if c.values[0] is not None])
def test_api_bad_checkpoint(kind, extra, fragment, good_run, tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes((good_run / "checkpoint.pt").read_bytes())
    _corrupt(kind, path)
    with pytest.raises(CheckpointError, match=fragment):
        checkpoint.load(path)


def test_api_resume_from_other_configuration(good_run, tmp_path):
    """fit(resume=True) refuses a checkpoint of another model before touching the param store."""
    path = tmp_path / "checkpoint.pt"
    path.write_bytes((good_run / "checkpoint.pt").read_bytes())
    vae = VAE(64, z_dim=3, hidden_dims=(8,))
    images = torch.rand(200, 64)
    config = TrainConfig(epochs=2, batch_size=100)
    with pytest.raises(CheckpointError, match="different configuration"):
        fit(vae.model, vae.guide, images, config, checkpoint_path=path, resume=True, checkpoint_config=vae.config)
    assert path.read_bytes() == (good_run / "checkpoint.pt").read_bytes()


# --------------------------------------------------------------------------------------------
# Python API: data, options, model, device.

GOOD = torch.rand(20, 64, generator=torch.Generator().manual_seed(0))  # grey levels in [0, 1]
API_CASES = [
    # data
    pytest.param(lambda: validate_images(GOOD.index_fill(0, torch.tensor([3]), float("nan"))), DataError, "NaN/inf", id="data-nan"),
    pytest.param(lambda: validate_images(GOOD.index_fill(1, torch.tensor([5]), float("inf"))), DataError, "NaN/inf", id="data-inf"),
    pytest.param(lambda: validate_images(GOOD[0]), DataError, "must have shape (num_data, pixels)", id="data-1d"),
    pytest.param(lambda: validate_images(GOOD.reshape(20, 8, 8)), DataError, "flatten each image", id="data-3d"),
    pytest.param(lambda: validate_images(GOOD[:0]), DataError, "is empty", id="data-no-rows"),
    pytest.param(lambda: validate_images(GOOD[:, :0]), DataError, "is empty", id="data-no-columns"),
    pytest.param(lambda: validate_images((GOOD * 255).long()), DataError, "floating point", id="data-integer"),
    pytest.param(lambda: validate_images(GOOD.tolist()), DataError, "must be a torch.Tensor", id="data-list"),
    pytest.param(lambda: validate_images(GOOD * 255, "bernoulli"), DataError, "needs [0, 1]", id="bernoulli-above-1"),
    pytest.param(lambda: validate_images(GOOD - 0.5, "bernoulli"), DataError, "needs [0, 1]", id="bernoulli-below-0"),
    pytest.param(
        lambda: validate_images(GOOD + 1, "continuous-bernoulli"), DataError, "needs [0, 1]", id="continuous-bernoulli-above-1"
    ),
    pytest.param(lambda: _fit_on(GOOD.index_fill(0, torch.tensor([0]), float("nan"))), DataError, "NaN/inf", id="fit-nan-data"),
    pytest.param(lambda: _fit_on(GOOD[:0]), DataError, "is empty", id="fit-empty-data"),
    pytest.param(lambda: _fit_on(GOOD.reshape(20, 8, 8)), DataError, "must have shape", id="fit-3d-data"),
    # fit(vae.model, ...) runs VAE.validate once: the likelihood's support and the pixel count
    pytest.param(lambda: _fit_on(GOOD * 1.5), DataError, "but a bernoulli likelihood needs [0, 1]", id="fit-bernoulli-above-1"),
    pytest.param(lambda: _fit_on(GOOD * 255), DataError, "bernoulli likelihood needs [0, 1]", id="fit-bernoulli-0-255"),
    pytest.param(lambda: _fit_on(GOOD[:, :49]), DataError, "has 49 pixels per row but the VAE takes x_dim=64", id="fit-wrong-pixel-count"),
    pytest.param(lambda: _fit_on(GOOD * 1.5, wrapped=True), DataError, "needs [0, 1]", id="fit-validate-data-hook"),
    # options
    pytest.param(lambda: _fit_on(GOOD, batch_size=0), ConfigError, "batch size must be a positive", id="batch-size-0"),
    pytest.param(lambda: _fit_on(GOOD, batch_size=21), ConfigError, "larger than the 20", id="batch-size-above-data"),
    pytest.param(lambda: _fit_on(GOOD, learning_rate=0.0), ConfigError, "learning rate", id="learning-rate-0"),
    pytest.param(lambda: _fit_on(GOOD, learning_rate=-1e-3), ConfigError, "learning rate", id="learning-rate-negative"),
    pytest.param(lambda: _fit_on(GOOD, learning_rate=float("nan")), ConfigError, "learning rate", id="learning-rate-nan"),
    pytest.param(lambda: _fit_on(GOOD, epochs=0), ConfigError, "epochs must be", id="epochs-0"),
    pytest.param(lambda: _fit_on(GOOD, epochs=-1), ConfigError, "epochs must be", id="epochs-negative"),
    pytest.param(lambda: _fit_on(GOOD, binarization="dither"), ConfigError, "unknown binarization", id="unknown-binarization"),
    pytest.param(lambda: _fit_on(GOOD, on_nan="ignore"), ConfigError, "on_nan", id="unknown-on-nan"),
    pytest.param(lambda: _fit_on(GOOD, seed=-1), ConfigError, "seed must be an integer from 0 to 2**32 - 1", id="seed-negative"),
    pytest.param(lambda: _fit_on(GOOD, seed=2**32), ConfigError, "seed must be an integer from 0 to 2**32 - 1", id="seed-2-32"),
    pytest.param(lambda: _fit_on(GOOD, kl_warmup_epochs=float("inf")), ConfigError, "finite", id="kl-warmup-inf"),
    # model
    pytest.param(lambda: VAE(64, z_dim=0), ConfigError, "z_dim must be a positive integer", id="z-dim-0"),
    pytest.param(lambda: VAE(64, z_dim=-1), ConfigError, "z_dim must be a positive integer", id="z-dim-negative"),
    pytest.param(lambda: VAE(64, hidden_dims=(0,)), ConfigError, "hidden size must be", id="hidden-0"),
    pytest.param(lambda: VAE(64, hidden_dims=(8, -4)), ConfigError, "hidden size must be", id="hidden-negative"),
    pytest.param(lambda: VAE(0), ConfigError, "x_dim must be", id="x-dim-0"),
    pytest.param(lambda: VAE(64, likelihood="poisson"), ConfigError, "unknown likelihood 'poisson'", id="unknown-likelihood"),
    pytest.param(lambda: VAE(64, likelihood="gaussian", x_scale=0.0), ConfigError, "x_scale", id="x-scale-0"),
    # names, device
    pytest.param(lambda: load_dataset("cifar10"), ConfigError, "unknown dataset 'cifar10'", id="unknown-dataset"),
    pytest.param(lambda: resolve_device("tpu"), ConfigError, "unknown device 'tpu'", id="unknown-device"),
    pytest.param(
        lambda: resolve_device("cuda"),
        DeviceError,
        "CUDA is not available",
        id="cuda-without-cuda",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present"),
    ),
]


def _fit_on(images, wrapped=False, **options):
    vae = VAE(64, z_dim=2, hidden_dims=(8,))
    config = TrainConfig(**{"epochs": 1, "batch_size": 10, **options})
    if wrapped:  # plain functions hide the VAE from fit: the check comes through validate_data

        def model(*args):
            return vae.model(*args)

        def guide(*args):
            return vae.guide(*args)

        return fit(model, guide, images, config, validate_data=vae.validate, progress=False)
    return fit(vae.model, vae.guide, images, config, progress=False)


@pytest.mark.parametrize("call, error_type, fragment", API_CASES)
def test_api_bad_input(call, error_type, fragment):
    with pytest.raises(PyroVIError) as caught:
        call()
    assert isinstance(caught.value, error_type), f"{type(caught.value).__name__} is not a {error_type.__name__}"
    message = str(caught.value)
    assert "\n" not in message
    assert fragment.lower() in message.lower(), message


# --------------------------------------------------------------------------------------------
# The real console entry point: exit status and stderr of a separate process.


@pytest.mark.parametrize(
    "extra, fragment",
    [
        pytest.param(["--resume"], "no checkpoint at", id="resume-without-checkpoint"),
    ],
)
def test_subprocess_bad_input(extra, fragment, tmp_path):
    out = tmp_path / "run"
    process = subprocess.run(
        [sys.executable, "-m", "pyro_vi", "vae", *TINY, "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 2
    _assert_one_line(process.stderr, fragment)
    assert process.stdout == ""
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# pyro-vi gmm: K, method, estimator, data files, output.

GMM = ["gmm", "--num-data", "200", "--max-iter", "5", "--num-steps", "5"]


def _gmm_file(kind: str, root: Path) -> str:
    path = root / f"{kind}.npy"
    if kind == "nan":
        np.save(path, np.array([[1.0, np.nan], [2.0, 3.0], [4.0, 5.0]]))
    elif kind == "one-row":
        np.save(path, np.array([[1.0, 2.0]]))
    elif kind == "3d":
        np.save(path, np.zeros((4, 2, 2)))
    elif kind == "text":
        path = root / "text.csv"
        path.write_text("a,b\n1,x\n")
    elif kind == "missing":
        path = root / "missing.csv"
    return str(path)


GMM_CASES = [
    pytest.param(["-k", "0"], "--num-components must be at least 1", id="gmm-k-0"),
    pytest.param(["-k", "-2"], "--num-components must be at least 1", id="gmm-k-negative"),
    pytest.param(["--num-restarts", "0"], "--num-restarts must be at least 1", id="gmm-restarts-0"),
    pytest.param(["--method", "svi-map", "--num-steps", "0"], "--num-steps must be at least 1", id="gmm-steps-0"),
    pytest.param(["--method", "svi-map", "--learning-rate", "0"], "--learning-rate must be positive", id="gmm-learning-rate-0"),
    pytest.param(["--method", "svi-map", "--learning-rate", "-1"], "--learning-rate must be positive", id="gmm-learning-rate-negative"),
    pytest.param(["--max-iter", "0"], "--max-iter must be at least 1", id="gmm-max-iter-0"),
    pytest.param(["--tol", "-1"], "--tol must be positive", id="gmm-tol-negative"),
    pytest.param(["--reg-covar", "-1"], "--reg-covar must be non-negative", id="gmm-reg-covar-negative"),
    pytest.param(["--num-data", "0"], "--num-data must be at least 1", id="gmm-num-data-0"),
    pytest.param(["--dim", "0"], "--dim must be at least 1", id="gmm-dim-0"),
    pytest.param(["--method", "variational-bayes"], "invalid choice: 'variational-bayes'", id="gmm-unknown-method"),
    pytest.param(["--estimator", "reparam"], "invalid choice: 'reparam'", id="gmm-unknown-estimator"),
    pytest.param(["--data", "missing"], "does not exist", id="gmm-data-missing"),
    pytest.param(["--seed", "-1"], "argument --seed: must be an integer from 0 to 2**32 - 1", id="gmm-seed-negative"),
    pytest.param(["--seed", "4294967296"], "argument --seed: must be an integer from 0 to 2**32 - 1", id="gmm-seed-2-32"),
    pytest.param(["--data", "nan"], "contains NaN/inf", id="gmm-data-nan"),
    pytest.param(["--data", "one-row"], "at least 2 rows", id="gmm-data-one-row"),
    pytest.param(["--data", "3d"], "need a (num_data, dim) table", id="gmm-data-3d"),
    pytest.param(["--data", "text"], "as a numeric table", id="gmm-data-not-numeric"),
    pytest.param(
        ["--device", "cuda"],
        "CUDA is not available here",
        id="gmm-cuda-without-cuda",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present"),
    ),
]


@pytest.mark.parametrize("extra, fragment", GMM_CASES)
def test_cli_gmm_bad_input(extra, fragment, tmp_path, capsys):
    if "--data" in extra:
        extra = [extra[0], _gmm_file(extra[1], tmp_path)]
    out = tmp_path / "run"
    status, stderr = _run_cli([*GMM, "--out", str(out), *extra], capsys)
    assert status == 2
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert stderr.startswith(("pyro-vi gmm: error:", "pyro-vi: error:")) and fragment.lower() in stderr.lower(), stderr
    assert not out.exists()


def test_cli_gmm_output_is_a_file(tmp_path, capsys):
    (tmp_path / "out").write_text("not a directory")
    status, stderr = _run_cli([*GMM, "--out", str(tmp_path / "out")], capsys)
    assert status == 2 and stderr.count("\n") == 1 and "is a file, not a directory" in stderr
    assert (tmp_path / "out").read_text() == "not a directory"


@pytest.mark.parametrize(
    "num_components, covariance, num_restarts, fragment",
    [
        pytest.param(0, "full", 1, "at least 1", id="k-0"),
        pytest.param(-1, "full", 1, "at least 1", id="k-negative"),
        pytest.param(21, "full", 1, "20 data points cannot fit 21 components", id="k-above-data"),
        pytest.param(2, "spherical", 1, "unknown covariance 'spherical'", id="unknown-covariance"),
        pytest.param(2, "full", 0, "--num-restarts must be at least 1", id="restarts-0"),
    ],
)
def test_api_gmm_bad_options(num_components, covariance, num_restarts, fragment):
    from pyro_vi.mixture import em as mixture_em

    with pytest.raises(ConfigError, match=fragment):
        mixture_em.validate_options(GOOD[:, :3].double(), num_components, covariance, num_restarts)


@pytest.mark.parametrize(
    "kind, error_type, fragment",
    [
        pytest.param("missing", DataNotFoundError, "does not exist", id="missing"),
        pytest.param("nan", DataError, "contains NaN/inf", id="nan"),
        pytest.param("one-row", DataError, "at least 2 rows", id="one-row"),
        pytest.param("text", DataError, "as a numeric table", id="not-numeric"),
    ],
)
def test_api_gmm_bad_data_file(kind, error_type, fragment, tmp_path):
    from pyro_vi.mixture import data as mixture_data

    with pytest.raises(error_type, match=fragment):
        mixture_data.load_file(_gmm_file(kind, tmp_path))


# --------------------------------------------------------------------------------------------
# Estimators: a name that does not exist, a count that cannot work, an estimator that does not
# apply to the guide's sites (pathwise on discrete sites, enum or gumbel without discrete sites).

ESTIMATOR_CLI_CASES = [
    pytest.param(["--estimator", "enum"], "'enum' needs discrete latent sites", id="vae-enum-continuous-latents"),
    pytest.param(["--estimator", "gumbel"], "gumbel needs Bernoulli or OneHotCategorical", id="vae-gumbel-continuous-latents"),
    pytest.param(["--estimator", "reinforce"], "invalid choice: 'reinforce'", id="vae-unknown-estimator"),
    pytest.param(["--estimator", "rloo", "--particles", "1"], "rloo needs at least 2 particles", id="vae-rloo-one-particle"),
]


@pytest.mark.parametrize("extra, fragment", ESTIMATOR_CLI_CASES)
def test_cli_estimator_does_not_apply(extra, fragment, tmp_path, capsys):
    out = tmp_path / "run"
    status, stderr = _run_cli(["vae", *TINY, "--out", str(out), *extra], capsys)
    assert status == 2
    _assert_one_line(stderr, fragment)
    assert not out.exists()


def _discrete_model(data):
    c = pyro.sample("c", pyro.distributions.Bernoulli(0.3))
    pyro.sample("x", pyro.distributions.Normal(c, 1.0), obs=data)


def _discrete_guide(data):
    probability = pyro.param("probability", torch.tensor(0.5), constraint=pyro.distributions.constraints.unit_interval)
    pyro.sample("c", pyro.distributions.Bernoulli(probability))


def _continuous_model(data):
    z = pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))
    pyro.sample("x", pyro.distributions.Normal(z, 1.0), obs=data)


def _continuous_guide(data):
    pyro.sample("z", pyro.distributions.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))


def _check(name, model, guide, **options):
    from pyro_vi.estimators import get_estimator

    return get_estimator(name, **options).check(model, guide, torch.tensor(0.4))


ESTIMATOR_API_CASES = [
    pytest.param(lambda: _check("reparam", _discrete_model, _discrete_guide), "is pathwise but the guide samples discrete", id="reparam-discrete-guide"),
    pytest.param(lambda: _check("dreg", _discrete_model, _discrete_guide), "is pathwise but the guide samples discrete", id="dreg-discrete-guide"),
    pytest.param(lambda: _check("enum", _continuous_model, _continuous_guide), "'enum' needs discrete latent sites", id="enum-continuous-latents"),
    pytest.param(lambda: _check("gumbel", _continuous_model, _continuous_guide), "gumbel needs Bernoulli", id="gumbel-continuous-latents"),
    pytest.param(lambda: _check("reinforce", _continuous_model, _continuous_guide), "unknown estimator 'reinforce'", id="unknown-estimator"),
    pytest.param(lambda: _check("score", _continuous_model, _continuous_guide, num_particles=0), "num_particles must be a positive", id="particles-0"),
    pytest.param(lambda: _check("score", _continuous_model, _continuous_guide, num_particles=-3), "num_particles must be a positive", id="particles-negative"),
    pytest.param(lambda: _check("rloo", _continuous_model, _continuous_guide, num_particles=1), "rloo needs at least 2 particles", id="rloo-one-particle"),
]


@pytest.mark.parametrize("call, fragment", ESTIMATOR_API_CASES)
def test_api_estimator_does_not_apply(call, fragment):
    with pytest.raises(ConfigError) as caught:
        call()
    assert "\n" not in str(caught.value) and fragment.lower() in str(caught.value).lower(), str(caught.value)


# pyro-vi variance: replicates, particles, estimator names and applicability, output.
VARIANCE = ["variance", "--model", "gaussian", "--estimators", "reparam,score", "--replicates", "20", "--particles", "1,2"]
VARIANCE_CASES = [
    pytest.param(["--replicates", "0"], "--replicates must be at least 2", id="variance-replicates-0"),
    pytest.param(["--replicates", "-5"], "--replicates must be at least 2", id="variance-replicates-negative"),
    pytest.param(["--particles", "0"], "--particles must be positive integers", id="variance-particles-0"),
    pytest.param(["--particles", "1,-2"], "--particles must be positive integers", id="variance-particles-negative"),
    pytest.param(["--particles", "a"], "expected comma-separated integers", id="variance-particles-not-integer"),
    pytest.param(["--estimators", "reparam,foo"], "unknown estimator(s) foo", id="variance-unknown-estimator"),
    pytest.param(["--model", "resnet"], "invalid choice: 'resnet'", id="variance-unknown-model"),
    pytest.param(["--dim", "0"], "dim must be a positive integer", id="variance-dim-0"),
    pytest.param(["--model", "bernoulli", "--estimators", "reparam"], "is pathwise but the guide samples discrete", id="variance-reparam-discrete"),
    pytest.param(["--model", "gmm", "--estimators", "reparam"], "is pathwise but the guide samples discrete", id="variance-reparam-gmm"),
    pytest.param(["--estimators", "enum"], "'enum' needs discrete latent sites", id="variance-enum-continuous"),
    pytest.param(["--estimators", "gumbel"], "gumbel needs Bernoulli", id="variance-gumbel-continuous"),
    pytest.param(["--estimators", "rloo", "--particles", "1"], "rloo needs at least 2 particles", id="variance-rloo-one-particle"),
    pytest.param(["--seed", "-1"], "argument --seed: must be an integer from 0 to 2**32 - 1", id="variance-seed-negative"),
    pytest.param(["--seed", "99999999999"], "argument --seed: must be an integer from 0 to 2**32 - 1", id="variance-seed-above-2-32"),
]


@pytest.mark.parametrize("extra, fragment", VARIANCE_CASES)
def test_cli_variance_bad_input(extra, fragment, tmp_path, capsys):
    out = tmp_path / "run"
    status, stderr = _run_cli([*VARIANCE, "--out", str(out), *extra], capsys)
    assert status == 2
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert stderr.startswith(("pyro-vi variance: error:", "pyro-vi: error:")) and fragment.lower() in stderr.lower(), stderr
    assert not out.exists()


# pyro-vi gap takes a seed too (it trains when given no checkpoint).
@pytest.mark.parametrize("seed", ["-1", "99999999999"], ids=["gap-seed-negative", "gap-seed-above-2-32"])
def test_cli_gap_bad_seed(seed, tmp_path, capsys):
    out = tmp_path / "run"
    status, stderr = _run_cli(["gap", "--epochs", "1", "--seed", seed, "--out", str(out)], capsys)
    assert status == 2
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert stderr.startswith("pyro-vi gap: error: argument --seed: must be an integer from 0 to 2**32 - 1"), stderr
    assert not out.exists()
