"""How good is a fitted mixture: log-likelihood per point, BIC, ARI, Hungarian-matched parameters,
and scikit-learn's GaussianMixture run from the same start for comparison."""

from __future__ import annotations

import math
import time
import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from pyro_vi.errors import DataError
from pyro_vi.mixture import model as gmm
from pyro_vi.mixture.model import MixtureParams


__all__ = [
    "average_log_likelihood", "num_free_parameters", "bic", "adjusted_rand_index", "MatchedComponents",
    "match_components", "SklearnFit", "fit_sklearn",
]


def average_log_likelihood(data: Tensor, params: MixtureParams) -> float:
    """(1/N) sum_n log sum_k pi_k N(x_n | loc_k, Sigma_k), from the model's log joint."""
    return gmm.log_joint_table(data, params).logsumexp(-1).mean().item()


def num_free_parameters(num_components: int, dim: int, covariance: str) -> int:
    """K - 1 weights, K D locations, and K D (diag) or K D (D + 1) / 2 (full) covariance entries."""
    covariance_entries = dim if covariance == "diag" else dim * (dim + 1) // 2
    return num_components - 1 + num_components * dim + num_components * covariance_entries


def bic(data: Tensor, params: MixtureParams) -> float:
    """Bayesian information criterion, -2 log p(x | theta) + (#parameters) log N (lower is better)."""
    num_data, dim = data.shape
    num_parameters = num_free_parameters(params.weights.shape[-1], dim, params.covariance_type)
    return -2.0 * num_data * average_log_likelihood(data, params) + num_parameters * math.log(num_data)


def adjusted_rand_index(true_labels: Tensor, predicted_labels: Tensor) -> float:
    """ARI: 1 for the same partition up to relabelling, about 0 for a random one."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(np.asarray(true_labels.cpu()), np.asarray(predicted_labels.cpu())))


class MatchedComponents(NamedTuple):
    """Fitted components reordered to line up with the true ones."""

    order: list[int]  # fitted component matched to true component k
    loc_errors: list[float]  # ||fitted loc - true loc|| per true component
    weight_errors: list[float]  # |fitted weight - true weight| per true component


def match_components(true: MixtureParams, fitted: MixtureParams) -> MatchedComponents:
    """Hungarian assignment of fitted to true components minimizing the total location distance,
    which makes the comparison immune to label switching."""
    from scipy.optimize import linear_sum_assignment

    distances = torch.cdist(true.loc.double().cpu(), fitted.loc.double().cpu())  # (K_true, K_fitted)
    rows, columns = linear_sum_assignment(distances.numpy())
    order = [int(c) for c in columns[np.argsort(rows)]]
    return MatchedComponents(
        order,
        [float(distances[k, order[k]]) for k in range(len(order))],
        [abs(float(true.weights[k]) - float(fitted.weights[order[k]])) for k in range(len(order))],
    )


class SklearnFit(NamedTuple):
    """scikit-learn's ``GaussianMixture`` fit: the estimator, its parameters as ``MixtureParams``,
    its final average log-likelihood per training point (nats), wall seconds and EM iterations."""

    model: object  # the fitted sklearn.mixture.GaussianMixture
    params: MixtureParams
    train_log_likelihood: float
    seconds: float
    iterations: int


def fit_sklearn(
    data: Tensor, initial: MixtureParams, tol: float = 1e-3, max_iter: int = 100, reg_covar: float = 1e-6
) -> SklearnFit:
    """scikit-learn's GaussianMixture from exactly ``initial`` (weights, means, precisions).

    ``init_params="random_from_data"`` only makes the initialization sklearn computes and then
    overrides cheap; with all three ``*_init`` given it is not used.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    covariance = initial.covariance_type
    x = data.detach().cpu().double().numpy()
    if covariance == "full":
        precisions = torch.linalg.inv(initial.covariance_matrix.double().cpu()).numpy()
    else:
        precisions = (1.0 / initial.scale.double().cpu().square()).numpy()
    mixture = GaussianMixture(
        n_components=initial.weights.shape[-1],
        covariance_type=covariance,
        tol=tol,
        max_iter=max_iter,
        reg_covar=reg_covar,
        weights_init=initial.weights.double().cpu().numpy(),
        means_init=initial.loc.double().cpu().numpy(),
        precisions_init=precisions,
        init_params="random_from_data",
    )
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():  # not converging within max_iter is reported in the metrics
            warnings.simplefilter("ignore", ConvergenceWarning)
            mixture.fit(x)
    except ValueError as error:  # e.g. "ill-defined empirical covariance" with reg_covar=0
        raise DataError(f"scikit-learn's fit failed ({' '.join(str(error).split())}); raise --reg-covar") from None
    seconds = time.perf_counter() - start
    covariances = torch.as_tensor(mixture.covariances_, dtype=data.dtype, device=data.device)
    params = MixtureParams.from_covariance(
        torch.as_tensor(mixture.weights_, dtype=data.dtype, device=data.device),
        torch.as_tensor(mixture.means_, dtype=data.dtype, device=data.device),
        covariances,
        covariance,
    )
    return SklearnFit(mixture, params, float(mixture.score(x)), seconds, int(mixture.n_iter_))
