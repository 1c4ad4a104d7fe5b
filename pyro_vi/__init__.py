"""pyro_vi: variational inference on Pyro.

Write a model and a guide, fit them with SVI, see what the fit did, and measure how good the
gradient estimator is. The subpackages, one per job (see ARCHITECTURE.md):

* :mod:`pyro_vi.engine`      ``fit`` for any Pyro model/guide pair; checkpoints, compile, distributed
* :mod:`pyro_vi.estimators`  gradient estimators by name, and the variance/SNR/bias lab
* :mod:`pyro_vi.mixture`     Gaussian mixtures: the model, EM, SVI
* :mod:`pyro_vi.vae`         the amortized VAE, its data and metrics
* :mod:`pyro_vi.local`       per-datapoint q_n and semi-amortized refinement
* :mod:`pyro_vi.diagnostics` did VI work? PSIS k-hat, ELBO and IW bound, q against reference draws
* :mod:`pyro_vi.posteriordb` posteriordb's reference posteriors: its files, Pyro ports of thirteen
* :mod:`pyro_vi.plots`       figures
* :mod:`pyro_vi.commands`    the ``pyro-vi`` command's subcommands
"""

from pyro_vi import _interrupt

_interrupt.exit_quietly_during_import()  # the pyro-vi command: Ctrl-C while torch loads exits 130, quietly

from pyro_vi import conjugate, device, diagnostics, engine, errors, estimators, io, local, mixture, plots, posteriordb, vae

# Fitting any model and guide.
from pyro_vi.engine import EpochSubsample, FitResult, PerStep, fit
from pyro_vi.engine.many import ManyResult, fit_many

# Gradient estimators and the variance lab.
from pyro_vi.estimators import ESTIMATORS, get_estimator
from pyro_vi.estimators.variance import gradient_variance, variance_over_training

# Gaussian mixtures.
from pyro_vi.mixture import MixtureParams, Prior, fit_em, fit_svi

# The VAE on images.
from pyro_vi.vae import VAE, Dataset, TrainConfig, binarize, load_dataset, validate_images
from pyro_vi.vae.train import ImageFitResult
from pyro_vi.vae.train import fit as fit_images

# Did VI work? (PSIS diagnostics, q against reference draws)
from pyro_vi.diagnostics import CheckResult, check

# Per-datapoint and semi-amortized inference.
from pyro_vi.local import LocalGuide, LocalTrainConfig, fit_local, refine

# Devices and errors.
from pyro_vi.device import resolve_device
from pyro_vi.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DataNotFoundError,
    DeviceError,
    OutputError,
    PyroVIError,
    TrainingDivergedError,
)

__version__ = "0.1.0"

__all__ = [
    # subpackages and shared modules
    "engine", "estimators", "mixture", "vae", "local", "diagnostics", "posteriordb", "plots", "conjugate", "device", "errors", "io",
    # fitting any model and guide
    "fit", "FitResult", "PerStep", "EpochSubsample", "fit_many", "ManyResult",
    # gradient estimators and the variance lab
    "ESTIMATORS", "get_estimator", "gradient_variance", "variance_over_training",
    # Gaussian mixtures
    "MixtureParams", "Prior", "fit_em", "fit_svi",
    # the VAE on images
    "VAE", "TrainConfig", "fit_images", "ImageFitResult", "Dataset", "load_dataset", "binarize", "validate_images",
    # did VI work?
    "check", "CheckResult",
    # per-datapoint and semi-amortized inference
    "LocalGuide", "LocalTrainConfig", "fit_local", "refine",
    # devices and errors
    "resolve_device", "PyroVIError", "ConfigError", "DataError", "DataNotFoundError", "DeviceError",
    "OutputError", "CheckpointError", "TrainingDivergedError",
]
