"""Bad input to ``pyro-vi vae`` and its Python API (options, estimators, data tensors, model
sizes, device): one line that says what was wrong and what to do, exit 2, nothing written.

Each case runs through ``pyro_vi.cli.main`` in-process (one also as a real subprocess) and, where an
API exists, through the Python API, which must raise the precise ``PyroVIError`` subclass.
"""

from __future__ import annotations

import sys

import pytest
import torch

from bad_input_helpers import TINY, assert_one_line, run_cli
from pyro_vi.device import resolve_device
from pyro_vi.errors import ConfigError, DataError, DeviceError, PyroVIError
from pyro_vi.vae.data import load_dataset, validate_images
from pyro_vi.vae.model import VAE
from pyro_vi.vae.train import TrainConfig, fit

import launch  # tests/launch.py: commands in a forked warm interpreter

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
    pytest.param(["--x-scale", "1e30", "--likelihood", "gaussian"], "--x-scale must be from 1e-06 to 1e+06", id="x-scale-1e30"),
    pytest.param(["--iwae-k", str(10**30)], f"--iwae-k {10**30} on 300 test images needs", id="iwae-k-1e30"),
    pytest.param(["--kl-warmup-epochs", "-1"], "warm-up must be >= 0", id="kl-warmup-negative"),
    pytest.param(["--kl-warmup-epochs", "inf"], "warm-up must be >= 0 epochs and finite, got inf", id="kl-warmup-inf"),
    pytest.param(["--kl-warmup-epochs", "nan"], "warm-up must be >= 0 epochs and finite, got nan", id="kl-warmup-nan"),
    pytest.param(["--seed", "-1"], "argument --seed: must be an integer from 0 to 2**32 - 1", id="seed-negative"),
    pytest.param(["--seed", "99999999999"], "argument --seed: must be an integer from 0 to 2**32 - 1", id="seed-above-2-32"),
    pytest.param(["--seed", "4294967296"], "argument --seed: must be an integer from 0 to 2**32 - 1", id="seed-2-32"),
    pytest.param(["--seed", "1.5"], "argument --seed: must be an integer", id="seed-not-integer"),
    pytest.param(["--resume", "--overwrite"], "--overwrite: not allowed with argument --resume", id="resume-and-overwrite"),
    pytest.param(["--checkpoint-every", "-1"], "must be >= 0", id="checkpoint-every-negative"),
    pytest.param(["--dataset", "cifar10"], "invalid choice: 'cifar10'", id="unknown-dataset"),
    pytest.param(["--likelihood", "poisson"], "invalid choice: 'poisson'", id="unknown-likelihood"),
    pytest.param(["--elbo", "magic"], "invalid choice: 'magic'", id="unknown-elbo"),
    pytest.param(["--binarization", "dither"], "invalid choice: 'dither'", id="unknown-binarization"),
    pytest.param(["--on-nan", "ignore"], "invalid choice: 'ignore'", id="unknown-on-nan"),
    pytest.param(["--compile", "--estimator", "score-baseline"], "baselines are state each step rewrites", id="compile-with-estimator"),
    pytest.param(["--compile", "--elbo", "analytic-kl"], "not TraceMeanField_ELBO; drop --compile", id="compile-with-meanfield"),
    pytest.param(["--inductor", "--no-compile"], "--no-compile turns recording off; drop one of them", id="inductor-with-no-compile"),
    pytest.param(["--device", "tpu"], "choose auto, cpu, cuda or cuda:N", id="unknown-device"),
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
    status, stderr = run_cli(["vae", *TINY, "--out", str(out), *extra], capsys)
    assert status == 2
    assert_one_line(stderr, fragment)
    assert not out.exists(), "nothing may be written for a bad option"



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
    status, stderr = run_cli(["vae", *TINY, "--out", str(out), *extra], capsys)
    assert status == 2
    assert_one_line(stderr, fragment)
    assert not out.exists()



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
@pytest.mark.smoke
def test_subprocess_bad_input(extra, fragment, tmp_path):
    out = tmp_path / "run"
    process = launch.run(
        [sys.executable, "-m", "pyro_vi", "vae", *TINY, "--out", str(out), *extra], timeout=120,
    )
    assert process.returncode == 2
    assert_one_line(process.stderr, fragment)
    assert process.stdout == ""
    assert not out.exists()
