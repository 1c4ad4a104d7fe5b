"""Data for the mixture models: synthetic mixtures with known parameters, CSV/NPY files, and
scikit-learn's digits reduced by PCA. Every source gives train and held-out test points."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from pyro_vi.errors import ConfigError, DataError, DataNotFoundError
from pyro_vi.mixture.model import MixtureParams


__all__ = ["MixtureData", "synthetic_params", "sample_mixture", "synthetic", "load_file", "digits_pca"]


class MixtureData(NamedTuple):
    """Points to cluster, split into train and test rows, with labels and true parameters when known."""

    name: str
    train: Tensor  # (num_train, dim)
    test: Tensor  # (num_test, dim)
    train_labels: Tensor | None  # true component / class, when known
    test_labels: Tensor | None
    true_params: MixtureParams | None  # synthetic data only


def synthetic_params(
    num_components: int, dim: int, separation: float, covariance: str, generator: torch.Generator, dtype=torch.float64
) -> MixtureParams:
    """Random true parameters: component standard deviations in [0.5, 1] along random axes
    (axis-aligned for ``diag``), weights ~ Dirichlet(5), and locations at least ``separation``
    apart (so ``separation`` is in units of the largest component standard deviation)."""
    # Dirichlet(5) as normalized Gamma(5, 1) draws, each a sum of five Exp(1) = -log U.
    gammas = -torch.rand(num_components, 5, generator=generator, dtype=dtype).log().sum(-1)
    weights = gammas / gammas.sum()
    side = 2.0 * separation * num_components ** (1.0 / dim)
    for _ in range(1000):  # rejection: redraw until every pair is far enough apart
        loc = side * (torch.rand(num_components, dim, generator=generator, dtype=dtype) - 0.5)
        distances = torch.cdist(loc, loc).masked_fill(torch.eye(num_components, dtype=torch.bool), math.inf)
        if num_components == 1 or distances.min() >= separation:
            break
        side *= 1.01
    standard_deviations = 0.5 + 0.5 * torch.rand(num_components, dim, generator=generator, dtype=dtype)
    if covariance == "diag":
        return MixtureParams.from_covariance(weights, loc, standard_deviations.square(), "diag")
    rotation, _ = torch.linalg.qr(torch.randn(num_components, dim, dim, generator=generator, dtype=dtype))
    covariance_matrix = rotation @ torch.diag_embed(standard_deviations.square()) @ rotation.transpose(-1, -2)
    return MixtureParams.from_covariance(weights, loc, covariance_matrix, "full")


def sample_mixture(params: MixtureParams, num_data: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Draw z_n ~ Cat(pi), x_n = loc_z + L_z eps_n; returns ``(x, z)``."""
    z = torch.multinomial(params.weights, num_data, replacement=True, generator=generator)
    noise = torch.randn(num_data, params.loc.shape[-1], generator=generator, dtype=params.loc.dtype)
    return params.loc[z] + (params.scale_tril[z] @ noise.unsqueeze(-1)).squeeze(-1), z


def synthetic(
    num_components: int = 3,
    dim: int = 2,
    num_data: int = 1000,
    separation: float = 4.0,
    seed: int = 0,
    covariance: str = "full",
    num_test: int | None = None,
    dtype=torch.float64,
) -> MixtureData:
    """A random mixture (``synthetic_params``) and ``num_data`` train + ``num_test`` test draws."""
    if not 0 < separation < math.inf:
        raise ConfigError(f"--separation must be positive and finite, got {separation}")
    generator = torch.Generator().manual_seed(seed)
    params = synthetic_params(num_components, dim, separation, covariance, generator, dtype)
    train, train_labels = sample_mixture(params, num_data, generator)
    test, test_labels = sample_mixture(params, num_test if num_test is not None else max(1, num_data // 4), generator)
    return MixtureData("synthetic", train, test, train_labels, test_labels, params)


def load_file(
    path: str | os.PathLike, label_column: int | None = None, test_fraction: float = 0.2, seed: int = 0, dtype=torch.float64
) -> MixtureData:
    """Rows of a numeric CSV (an optional header line is skipped) or a 2-D ``.npy`` array, split at
    random into train and test; ``label_column`` (if given) holds true labels and is removed.

    Raises:
        DataNotFoundError: no such file.  DataError: not a finite numeric 2-D table.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"data file {str(path)!r} does not exist; pass --data synthetic, digits or a CSV/NPY path")
    try:
        if path.suffix == ".npy":
            table = np.load(path, allow_pickle=False)
        else:
            with open(path) as file:  # read once: the header check and the parse share the lines
                lines = file.read().splitlines()
            skip = 0 if _is_numeric_row(lines[0] if lines else "") else 1
            with warnings.catch_warnings():  # an empty file: our one line below, not NumPy's warning
                warnings.simplefilter("ignore")
                table = np.loadtxt(lines, delimiter=",", skiprows=skip, ndmin=2)
    except (ValueError, OSError, UnicodeDecodeError, EOFError) as error:
        raise DataError(f"cannot read {str(path)!r} as a numeric table ({_first_line(error)}); use a comma-separated CSV or .npy") from None
    if not isinstance(table, np.ndarray) or table.dtype.kind not in "biuf":
        kind = "complex numbers" if isinstance(table, np.ndarray) and table.dtype.kind == "c" else f"values of dtype {getattr(table, 'dtype', type(table).__name__)}"
        raise DataError(f"{str(path)!r} holds {kind}, not real numbers; save a real-valued (num_data, dim) table")
    if table.size == 0:
        raise DataError(f"{str(path)!r} holds no data rows; need a (num_data, dim) table with at least 2 rows")
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] < 2 or table.shape[1] < 1:
        raise DataError(f"{str(path)!r} has shape {table.shape}; need a (num_data, dim) table with at least 2 rows")
    if not np.isfinite(table).all():
        raise DataError(f"{str(path)!r} contains NaN/inf values; remove or impute them")
    labels = None
    if label_column is not None:
        if not -table.shape[1] <= label_column < table.shape[1] or table.shape[1] < 2:
            raise ConfigError(f"--label-column {label_column} is outside the {table.shape[1]} columns of {str(path)!r}")
        labels = torch.as_tensor(table[:, label_column]).round().long()
        table = np.delete(table, label_column, axis=1)
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    order = torch.randperm(table.shape[0], generator=torch.Generator().manual_seed(seed))
    num_test = max(1, int(round(test_fraction * table.shape[0]))) if test_fraction > 0 else 0
    test_rows, train_rows = order[:num_test], order[num_test:]
    x = torch.as_tensor(table, dtype=dtype)
    return MixtureData(
        path.stem,
        x[train_rows],
        x[test_rows],
        None if labels is None else labels[train_rows],
        None if labels is None else labels[test_rows],
        None,
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _is_numeric_row(line: str) -> bool:
    try:
        [float(cell) for cell in line.strip().split(",")]
        return True
    except ValueError:
        return False


def digits_pca(dim: int = 2, dtype=torch.float64) -> MixtureData:
    """scikit-learn's 8x8 digits (``pyro_vi.vae.data``'s split) projected on their first ``dim``
    principal components (fitted on the training images); labels are the digit classes."""
    from sklearn.decomposition import PCA

    from pyro_vi.vae.data import load_dataset

    if not 1 <= dim <= 64:
        raise ConfigError(f"--pca-dim must be between 1 and 64 for digits, got {dim}")
    digits = load_dataset("digits")
    pca = PCA(n_components=dim, random_state=0).fit(digits.train_images.double().numpy())
    train = torch.as_tensor(pca.transform(digits.train_images.double().numpy()), dtype=dtype)
    test = torch.as_tensor(pca.transform(digits.test_images.double().numpy()), dtype=dtype)
    return MixtureData(f"digits-pca{dim}", train, test, digits.train_labels, digits.test_labels, None)
