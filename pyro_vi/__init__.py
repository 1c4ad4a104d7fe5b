"""pyro_vi: variational inference on Pyro.

Write a model and a guide, fit them with SVI, see what the fit did, and measure how good the
gradient estimator is.
"""

from pyro_vi import _interrupt

_interrupt.exit_quietly_during_import()  # the pyro-vi command: Ctrl-C while torch loads exits 130, quietly

from pyro_vi import checkpoint, data, device, errors, evaluate, io, optim, plots, train
from pyro_vi.models import vae
from pyro_vi import mixture_data, mixture_em, mixture_eval, mixture_svi
from pyro_vi.models import gmm
from pyro_vi.models.gmm import MixtureParams, Prior
from pyro_vi.mixture_em import fit_em
from pyro_vi.mixture_svi import fit_svi
from pyro_vi.models.vae import VAE
from pyro_vi import engine
from pyro_vi.engine import EpochSubsample, PerStep, fit
from pyro_vi.train import FitResult, TrainConfig
from pyro_vi.train import fit as fit_images
from pyro_vi import importance, local_training
from pyro_vi.models import conjugate, local
from pyro_vi.models.local import LocalGuide, refine
from pyro_vi.local_training import LocalTrainConfig, fit_local
from pyro_vi import estimators, gradient_toys, variance, variance_models
from pyro_vi.estimators import ESTIMATORS, get_estimator
from pyro_vi.variance import gradient_variance, variance_over_training
from pyro_vi.data import Dataset, binarize, load_dataset, validate_images
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
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "Dataset",
    "FitResult",
    "TrainConfig",
    "VAE",
    "checkpoint",
    "evaluate",
    "fit",
    "fit_images",
    "engine",
    "EpochSubsample",
    "PerStep",
    "plots",
    "train",
    "vae",
    "DeviceError",
    "OutputError",
    "PyroVIError",
    "TrainingDivergedError",
    "binarize",
    "data",
    "device",
    "errors",
    "io",
    "optim",
    "load_dataset",
    "resolve_device",
    "validate_images",
    "MixtureParams",
    "Prior",
    "fit_em",
    "fit_svi",
    "gmm",
    "mixture_data",
    "mixture_em",
    "mixture_eval",
    "mixture_svi",
    "LocalGuide",
    "LocalTrainConfig",
    "conjugate",
    "fit_local",
    "importance",
    "local",
    "local_training",
    "refine",
    "ESTIMATORS",
    "estimators",
    "get_estimator",
    "gradient_variance",
    "variance",
    "variance_models",
    "gradient_toys",
    "variance_over_training",
]
