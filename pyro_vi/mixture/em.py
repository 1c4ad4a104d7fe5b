"""EM for the Gaussian mixture of ``pyro_vi.mixture.model``: coordinate ascent on the same ELBO SVI
climbs by gradient.

    ELBO(q, theta) = sum_n E_{q_n}[log p(x_n, z_n | theta) - log q_n(z_n)]  <=  log p(x | theta)

E-step: q_n(z) = p(z | x_n, theta), read off the model's own log joint (``gmm.log_joint_table``),
which makes the bound tight.  M-step: the closed-form maximizer over theta of
sum_n E_{q_n} log p(x_n, z_n | theta) under flat priors (maximum likelihood), with ``reg_covar``
added to every variance as scikit-learn does (``reg_covar=0`` is exact ML, for which
log p(x | theta) cannot decrease from one iteration to the next).

The loop mirrors ``sklearn.mixture.GaussianMixture.fit``: iteration t runs the E-step at
theta_{t-1} (giving the average log-likelihood L(theta_{t-1})) then the M-step; it stops when
``|L(theta_{t-1}) - L(theta_{t-2})| < tol``. Started from the same parameters with the same
``reg_covar`` and ``tol``, both reach the same theta after the same number of iterations.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from pyro_vi.errors import ConfigError, DataError, PyroVIError
from pyro_vi.mixture import model as gmm
from pyro_vi.mixture.model import MixtureParams

__all__ = [
    "INITS", "EMResult", "e_step", "m_step", "kmeans", "initialize", "run_em", "fit_em", "warm_up",
    "validate_options", "check_scale",
]

INITS = ("kmeans++", "random")


class EMResult(NamedTuple):
    """The best restart's fit."""

    params: MixtureParams
    log_likelihoods: list[float]  # average log p(x_n | theta_t), t = 0 (init) .. iterations
    iterations: int
    converged: bool
    snapshots: dict[int, MixtureParams]  # theta_t at the requested iterations (0 = init)
    initial_params: MixtureParams
    restart_log_likelihoods: list[float]  # final average log-likelihood of every restart


def e_step(data: Tensor, params: MixtureParams) -> tuple[Tensor, Tensor]:
    """Average log-likelihood at ``params`` and log responsibilities ``(num_data, num_components)``."""
    log_joint = gmm.log_joint_table(data, params)  # (N, K)
    log_evidence = log_joint.logsumexp(-1, keepdim=True)  # (N, 1)
    return log_evidence.mean(), log_joint - log_evidence


def m_step(data: Tensor, responsibilities: Tensor, covariance: str, reg_covar: float) -> MixtureParams:
    """Closed-form ML weights, locations and (co)variances given responsibilities ``(N, K)``."""
    counts = responsibilities.sum(0) + 10 * torch.finfo(data.dtype).eps  # (K,), never exactly 0
    weights = counts / counts.sum()
    loc = (responsibilities.T @ data) / counts.unsqueeze(-1)  # (K, D)
    if covariance == "diag":
        mean_square = (responsibilities.T @ data.square()) / counts.unsqueeze(-1)
        variance = mean_square - loc.square() + reg_covar  # E_r[x^2] - loc^2, as scikit-learn
        return MixtureParams.from_covariance(weights, loc, variance, "diag")
    centered = data.unsqueeze(0) - loc.unsqueeze(1)  # (K, N, D)
    weighted = centered * responsibilities.T.unsqueeze(-1)
    scatter = weighted.transpose(-1, -2) @ centered / counts.view(-1, 1, 1)  # (K, D, D)
    eye = torch.eye(data.shape[-1], dtype=data.dtype, device=data.device)
    return MixtureParams.from_covariance(weights, loc, scatter + reg_covar * eye, "full")


def kmeans(data: Tensor, num_components: int, generator: torch.Generator, num_iterations: int = 20) -> Tensor:
    """k-means++ seeding then Lloyd iterations; returns hard labels ``(num_data,)``."""
    num_data = data.shape[0]
    first = torch.randint(num_data, (1,), generator=generator, device="cpu").item()
    centers = [data[first]]
    squared_distance = (data - data[first]).square().sum(-1)
    for _ in range(1, num_components):
        # D^2 sampling: a point is chosen with probability proportional to its distance to the nearest center.
        total = squared_distance.sum()
        if not total > 0 or not torch.isfinite(total):  # every point on a center, or distances overflow
            raise DataError(
                f"k-means++ cannot pick {num_components} distinct centers: the data have fewer distinct rows, "
                "or values so large their squared distances overflow; lower --num-components or rescale the data"
            )
        probabilities = (squared_distance / total).cpu()
        index = torch.multinomial(probabilities, 1, generator=generator).item()
        centers.append(data[index])
        squared_distance = torch.minimum(squared_distance, (data - data[index]).square().sum(-1))
    centers = torch.stack(centers)  # (K, D)
    labels = torch.cdist(data, centers).argmin(-1)
    for _ in range(num_iterations):
        one_hot = torch.nn.functional.one_hot(labels, num_components).to(data.dtype)
        counts = one_hot.sum(0).unsqueeze(-1)
        centers = torch.where(counts > 0, one_hot.T @ data / counts.clamp_min(1), centers)
        new_labels = torch.cdist(data, centers).argmin(-1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return labels


def initialize(
    data: Tensor, num_components: int, covariance: str, method: str, generator: torch.Generator, reg_covar: float = 1e-6
) -> MixtureParams:
    """Starting parameters.

    ``kmeans++``: one M-step on the hard k-means labels (scikit-learn's ``init_params="kmeans"``).
    ``random``: locations at distinct random data points, every component with the data's
    (co)variance and equal weights.
    """
    if method == "kmeans++":
        labels = kmeans(data, num_components, generator)
        one_hot = torch.nn.functional.one_hot(labels, num_components).to(data.dtype)
        return _m_step_or_explain(data, one_hot, covariance, reg_covar, 0)
    if method == "random":
        rows = torch.randperm(data.shape[0], generator=generator)[:num_components].to(data.device)
        weights = data.new_full((num_components,), 1.0 / num_components)
        loc = data[rows]
        if covariance == "diag":
            spread = data.var(0).expand(num_components, -1) + reg_covar
        else:
            eye = torch.eye(data.shape[-1], dtype=data.dtype, device=data.device)
            spread = (torch.cov(data.T).reshape(data.shape[-1], -1) + reg_covar * eye).expand(num_components, -1, -1)
        try:
            return MixtureParams.from_covariance(weights, loc, spread.clone(), covariance)
        except (torch.linalg.LinAlgError, ValueError) as error:  # data with no spread along some axis, reg_covar 0
            raise DataError(
                f"the random start: the data's covariance is singular ({type(error).__name__}); "
                f"raise --reg-covar (now {reg_covar:g}; 1e-6 is usual) or lower --num-components"
            ) from None
    raise ConfigError(f"unknown initialization {method!r}; choose one of {', '.join(INITS)}")


def run_em(
    data: Tensor,
    initial: MixtureParams,
    tol: float = 1e-3,
    max_iter: int = 100,
    reg_covar: float = 1e-6,
    record_iterations: Sequence[int] = (),
) -> EMResult:
    """EM from ``initial`` until the average log-likelihood changes by less than ``tol``."""
    covariance = initial.covariance_type
    params, log_likelihoods, snapshots = initial, [], {}
    if 0 in record_iterations:
        snapshots[0] = initial
    converged = False
    iteration = 0
    for iteration in range(1, max_iter + 1):
        log_likelihood, log_responsibilities = e_step(data, params)  # L(theta_{t-1})
        log_likelihoods.append(log_likelihood.item())
        params = _m_step_or_explain(data, log_responsibilities.exp(), covariance, reg_covar, iteration)  # theta_t
        if iteration in record_iterations:
            snapshots[iteration] = params
        if len(log_likelihoods) > 1 and abs(log_likelihoods[-1] - log_likelihoods[-2]) < tol:
            converged = True
            break
    log_likelihoods.append(e_step(data, params)[0].item())  # L(theta_final)
    return EMResult(params, log_likelihoods, iteration, converged, snapshots, initial, [log_likelihoods[-1]])


def _m_step_or_explain(data: Tensor, responsibilities: Tensor, covariance: str, reg_covar: float, iteration: int) -> MixtureParams:
    try:
        params = m_step(data, responsibilities, covariance, reg_covar)
    except (torch.linalg.LinAlgError, ValueError) as error:  # Cholesky of a singular covariance
        raise DataError(
            f"{f'EM iteration {iteration}' if iteration else 'the initial M-step'}: a component's covariance is singular ({type(error).__name__}); "
            f"raise --reg-covar (now {reg_covar:g}; 1e-6 is usual) or lower --num-components"
        ) from None
    if not all(bool(torch.isfinite(t).all()) for t in (params.weights, params.loc, params.scale_tril)):
        raise DataError(f"{f'EM iteration {iteration}' if iteration else 'the initial M-step'} produced NaN/inf parameters; rescale the data or raise --reg-covar")
    return params


def fit_em(
    data: Tensor,
    num_components: int,
    covariance: str = "full",
    init: str = "kmeans++",
    num_restarts: int = 1,
    seed: int = 0,
    tol: float = 1e-3,
    max_iter: int = 100,
    reg_covar: float = 1e-6,
    record_iterations: Sequence[int] = (),
) -> EMResult:
    """Best of ``num_restarts`` EM runs, each from its own ``init`` draw (seeded by ``seed``).

    Raises:
        ConfigError: unknown ``init`` or ``covariance``, or fewer points than components.
    """
    validate_options(data, num_components, covariance, num_restarts)
    generator = torch.Generator().manual_seed(seed)
    best, finals = None, []
    for _ in range(num_restarts):
        initial = initialize(data, num_components, covariance, init, generator, reg_covar)
        result = run_em(data, initial, tol, max_iter, reg_covar, record_iterations)
        finals.append(result.log_likelihoods[-1])
        if best is None or result.log_likelihoods[-1] > best.log_likelihoods[-1]:
            best = result
    return best._replace(restart_log_likelihoods=finals)


def warm_up(data: Tensor, num_components: int, covariance: str = "full") -> None:
    """A two-iteration fit on a few points, so that timings that follow exclude the one-off cost of
    Pyro's first trace and torch's first kernels (about a second)."""
    try:
        fit_em(data[: 20 * num_components], num_components, covariance, max_iter=2)
    except PyroVIError:  # the first rows alone may be degenerate (repeated rows); the real fit decides
        pass


def validate_options(data: Tensor, num_components: int, covariance: str, num_restarts: int = 1) -> None:
    """Raise ConfigError for settings no fit can work with."""
    if covariance not in gmm.COVARIANCES:
        raise ConfigError(f"unknown covariance {covariance!r}; choose one of {', '.join(gmm.COVARIANCES)}")
    if num_components < 1:
        raise ConfigError(f"the number of components must be at least 1, got {num_components}")
    if data.shape[0] < num_components:
        raise ConfigError(f"{data.shape[0]} data points cannot fit {num_components} components; lower --num-components")
    if covariance == "full" and data.shape[-1] < 2:
        raise ConfigError("full covariance needs at least 2 dimensions; use --covariance diag for 1-D data")
    if num_restarts < 1:
        raise ConfigError(f"--num-restarts must be at least 1, got {num_restarts}")
    check_scale(data)
    distinct = torch.unique(data, dim=0).shape[0]
    if distinct < num_components:
        raise DataError(
            f"the data have {distinct} distinct row{'s' if distinct != 1 else ''}, fewer than the {num_components} "
            "components; lower --num-components"
        )


def check_scale(data: Tensor, name: str = "the data") -> None:
    """Raise DataError if ``data`` are so large that squared distances and covariances overflow
    (above the cube root of the dtype's largest number: about 5.6e102 in float64)."""
    bound = torch.finfo(data.dtype).max ** (1.0 / 3.0) if data.is_floating_point() else math.inf
    largest = float(data.abs().max()) if data.numel() else 0.0
    if not largest <= bound:
        raise DataError(f"{name} reach {largest:.3g}, beyond {bound:.3g} where squared distances overflow; rescale them (e.g. standardize each column)")
