"""Conjugate models whose posterior and evidence are closed form: the references tests check against.

Three models, each a frozen dataclass holding its fixed hyperparameters, with

* ``model(...)``             the Pyro model;
* ``mean_field_guide(...)``  a fully factorized guide (Pyro params ``<site>_loc``, ``<site>_scale``
  for the Gaussian models, ``probs_concentration1/0`` for the Beta);
* ``posterior(...)``         the exact posterior as a torch distribution;
* ``log_evidence(...)``      the exact log marginal likelihood log p(data), in nats;

and, for the Gaussian models, ``full_rank_guide`` (q in the posterior's family, so the ELBO can
reach log p(data)), ``optimal_mean_field`` (the best diagonal q in closed form) and ``elbo(q)``
(exact ELBO of any Gaussian q, = log p(data) - KL(q || posterior)).

Models:
    ``NormalNormal``              z ~ N(mu_0, Sigma_0);  x_n | z ~ N(z, Sigma)
    ``BayesianLinearRegression``  w ~ N(0, s_0^2 I);      y_n | x_n, w ~ N(x_n . w, sigma^2)
    ``BetaBernoulli``             p ~ Beta(a, b);         x_n | p ~ Bernoulli(p)
    ``ProbabilisticPCA``          z_n ~ N(0, I);          x_n | z_n ~ N(W z_n + b, sigma^2 I)

``ProbabilisticPCA`` is the linear-Gaussian VAE: one latent per datapoint, so it is the exact
reference for per-datapoint estimates (IWAE log p(x_n), local guides, amortization gaps).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

__all__ = ["BayesianLinearRegression", "BetaBernoulli", "NormalNormal", "ProbabilisticPCA", "mean_field_kl_gap"]


# ----------------------------------------------------------------------------------------------
# Gaussian helpers shared by the two Gaussian models
# ----------------------------------------------------------------------------------------------


def _gaussian_posterior(prior_precision: Tensor, precision_times_mean: Tensor) -> dist.MultivariateNormal:
    """N(m, Lambda^-1) from Lambda and Lambda m (the natural parameters)."""
    posterior_precision = 0.5 * (prior_precision + prior_precision.transpose(-1, -2))  # symmetrize round-off
    posterior_covariance = torch.cholesky_inverse(torch.linalg.cholesky(posterior_precision))
    loc = posterior_covariance @ precision_times_mean
    return dist.MultivariateNormal(loc, precision_matrix=posterior_precision)


def _optimal_mean_field(posterior: dist.MultivariateNormal) -> tuple[Tensor, Tensor]:
    """argmin over diagonal Gaussians of KL(q || posterior): loc = m, scale_j = Lambda_jj^(-1/2)."""
    precision_diagonal = posterior.precision_matrix.diagonal(dim1=-2, dim2=-1)
    return posterior.loc, precision_diagonal.rsqrt()


def mean_field_kl_gap(posterior: dist.MultivariateNormal) -> Tensor:
    """KL(q* || posterior) for the optimal diagonal q*: 0.5 (sum_j log Lambda_jj - log det Lambda).

    This is the ELBO's unavoidable gap below log p(data) when q is restricted to diagonal
    Gaussians; it is zero iff the posterior precision Lambda is diagonal.
    """
    precision = posterior.precision_matrix
    log_det = 2.0 * torch.linalg.cholesky(precision).diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (precision.diagonal(dim1=-2, dim2=-1).log().sum(-1) - log_det)


def _as_multivariate(q: dist.Distribution) -> dist.MultivariateNormal:
    """A diagonal Normal(...).to_event(1) or an MVN as an MVN (for closed-form KLs)."""
    if isinstance(q, torch.distributions.MultivariateNormal):
        return q
    base = q.base_dist if isinstance(q, torch.distributions.Independent) else q
    return dist.MultivariateNormal(base.loc, scale_tril=torch.diag_embed(base.scale))


def _gaussian_mean_field_guide(site: str, dim: int, reference: Tensor) -> Tensor:
    loc = pyro.param(f"{site}_loc", reference.new_zeros(dim))
    scale = pyro.param(f"{site}_scale", reference.new_ones(dim), constraint=constraints.positive)
    return pyro.sample(site, dist.Normal(loc, scale).to_event(1))


def _gaussian_full_rank_guide(site: str, dim: int, reference: Tensor) -> Tensor:
    loc = pyro.param(f"{site}_loc", reference.new_zeros(dim))
    scale_tril = pyro.param(
        f"{site}_scale_tril", torch.eye(dim, dtype=reference.dtype, device=reference.device),
        constraint=constraints.lower_cholesky,
    )
    return pyro.sample(site, dist.MultivariateNormal(loc, scale_tril=scale_tril))


# ----------------------------------------------------------------------------------------------
# Normal-Normal with known covariance
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NormalNormal:
    """z ~ N(prior_loc, prior_covariance);  x_n | z ~ N(z, noise_covariance), n = 1..N.

    Posterior: Lambda = Sigma_0^-1 + N Sigma^-1,  m = Lambda^-1 (Sigma_0^-1 mu_0 + Sigma^-1 sum_n x_n).
    A non-diagonal ``prior_covariance`` gives a correlated posterior, the case where a diagonal
    q cannot reach log p(x).
    """

    prior_loc: Tensor  # (dim,)
    prior_covariance: Tensor  # (dim, dim)
    noise_covariance: Tensor  # (dim, dim)

    @property
    def dim(self) -> int:
        """D, the dimension of z."""
        return self.prior_loc.shape[-1]

    def model(self, data: Tensor) -> None:
        """data: (num_data, dim)."""
        z = pyro.sample("z", dist.MultivariateNormal(self.prior_loc, self.prior_covariance))
        with pyro.plate("data", data.shape[0]):
            pyro.sample("x", dist.MultivariateNormal(z, self.noise_covariance), obs=data)

    def mean_field_guide(self, data: Tensor) -> None:
        """q(z) = N(z_loc, diag(z_scale^2))."""
        _gaussian_mean_field_guide("z", self.dim, data)

    def full_rank_guide(self, data: Tensor) -> None:
        """q(z) = N(z_loc, L L^T) with L = z_scale_tril: the posterior's family."""
        _gaussian_full_rank_guide("z", self.dim, data)

    def posterior(self, data: Tensor) -> dist.MultivariateNormal:
        """p(z | data), exact: precision Lambda_0 + N Lambda_x, mean from the precision-weighted sum."""
        prior_precision = torch.linalg.inv(self.prior_covariance)
        noise_precision = torch.linalg.inv(self.noise_covariance)
        precision = prior_precision + data.shape[0] * noise_precision
        precision_times_mean = prior_precision @ self.prior_loc + noise_precision @ data.sum(0)
        return _gaussian_posterior(precision, precision_times_mean)

    def log_evidence(self, data: Tensor) -> Tensor:
        """log p(x_1..N) = log p(x | z) + log p(z) - log p(z | x), exact at any z (here z = m)."""
        posterior = self.posterior(data)
        z = posterior.loc
        log_likelihood = dist.MultivariateNormal(z, self.noise_covariance).log_prob(data).sum()
        log_prior = dist.MultivariateNormal(self.prior_loc, self.prior_covariance).log_prob(z)
        return log_likelihood + log_prior - posterior.log_prob(z)

    def optimal_mean_field(self, data: Tensor) -> tuple[Tensor, Tensor]:
        """(loc, scale) of the diagonal Gaussian closest to the posterior in KL(q || p)."""
        return _optimal_mean_field(self.posterior(data))

    def elbo(self, q: dist.Distribution, data: Tensor) -> Tensor:
        """Exact ELBO of a Gaussian q over z: log p(x) - KL(q || p(z | x))."""
        posterior = self.posterior(data)
        return self.log_evidence(data) - torch.distributions.kl_divergence(_as_multivariate(q), posterior)


# ----------------------------------------------------------------------------------------------
# Bayesian linear regression with known noise
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BayesianLinearRegression:
    """weights ~ N(0, prior_scale^2 I);  y_n | x_n, weights ~ N(x_n . weights, noise_scale^2).

    Posterior: Lambda = I / s_0^2 + X^T X / sigma^2,  m = Lambda^-1 X^T y / sigma^2; correlated
    whenever the features are.
    """

    prior_scale: float
    noise_scale: float

    def model(self, features: Tensor, targets: Tensor) -> None:
        """features: (num_data, dim); targets: (num_data,)."""
        dim = features.shape[-1]
        weights = pyro.sample("weights", dist.Normal(features.new_zeros(dim), self.prior_scale).to_event(1))
        with pyro.plate("data", features.shape[0]):
            # weights: (dim,), or (particles, 1, dim) under a particle plate left of "data".
            mean = (features * weights).sum(-1)  # (..., num_data)
            pyro.sample("y", dist.Normal(mean, self.noise_scale), obs=targets)

    def mean_field_guide(self, features: Tensor, targets: Tensor) -> None:
        """q(weights) = N(weights_loc, diag(weights_scale^2))."""
        _gaussian_mean_field_guide("weights", features.shape[-1], features)

    def full_rank_guide(self, features: Tensor, targets: Tensor) -> None:
        """q(weights) = N(weights_loc, L L^T): the posterior's family."""
        _gaussian_full_rank_guide("weights", features.shape[-1], features)

    def posterior(self, features: Tensor, targets: Tensor) -> dist.MultivariateNormal:
        """p(weights | X, y), exact: precision I / prior_scale^2 + X^T X / noise_scale^2."""
        dim = features.shape[-1]
        eye = torch.eye(dim, dtype=features.dtype, device=features.device)
        precision = eye / self.prior_scale**2 + features.T @ features / self.noise_scale**2
        return _gaussian_posterior(precision, features.T @ targets / self.noise_scale**2)

    def log_evidence(self, features: Tensor, targets: Tensor) -> Tensor:
        """log p(y | X) by the same identity as ``NormalNormal.log_evidence`` (no N x N matrix)."""
        posterior = self.posterior(features, targets)
        weights = posterior.loc
        log_likelihood = dist.Normal(features @ weights, self.noise_scale).log_prob(targets).sum()
        log_prior = dist.Normal(torch.zeros_like(weights), self.prior_scale).log_prob(weights).sum()
        return log_likelihood + log_prior - posterior.log_prob(weights)

    def optimal_mean_field(self, features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(loc, scale) of the best diagonal Gaussian q: the posterior mean, 1 / sqrt(diag precision)."""
        return _optimal_mean_field(self.posterior(features, targets))

    def elbo(self, q: dist.Distribution, features: Tensor, targets: Tensor) -> Tensor:
        """Exact ELBO of a Gaussian q over the weights."""
        posterior = self.posterior(features, targets)
        return self.log_evidence(features, targets) - torch.distributions.kl_divergence(_as_multivariate(q), posterior)


# ----------------------------------------------------------------------------------------------
# Beta-Bernoulli
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BetaBernoulli:
    """probs ~ Beta(concentration1, concentration0);  x_n | probs ~ Bernoulli(probs).

    Posterior: Beta(a + k, b + N - k) with k = sum_n x_n;  log p(x) = log B(a + k, b + N - k) - log B(a, b).
    """

    concentration1: float = 1.0
    concentration0: float = 1.0

    def model(self, data: Tensor) -> None:
        """data: (num_data,) of 0/1."""
        probs = pyro.sample("probs", dist.Beta(data.new_tensor(self.concentration1), data.new_tensor(self.concentration0)))
        with pyro.plate("data", data.shape[0]):
            pyro.sample("x", dist.Bernoulli(probs), obs=data)

    def mean_field_guide(self, data: Tensor) -> None:
        """q(probs) = Beta(probs_concentration1, probs_concentration0): one latent, so mean-field
        and the posterior's family coincide."""
        concentration1 = pyro.param("probs_concentration1", data.new_tensor(1.0), constraint=constraints.positive)
        concentration0 = pyro.param("probs_concentration0", data.new_tensor(1.0), constraint=constraints.positive)
        pyro.sample("probs", dist.Beta(concentration1, concentration0))

    def posterior(self, data: Tensor) -> dist.Beta:
        """p(probs | data) = Beta(a + k, b + N - k), k the number of ones."""
        successes = data.sum()
        return dist.Beta(self.concentration1 + successes, self.concentration0 + data.shape[0] - successes)

    def log_evidence(self, data: Tensor) -> Tensor:
        """log p(data) = log B(a + k, b + N - k) - log B(a, b), in nats."""
        posterior = self.posterior(data)
        return _log_beta_function(posterior.concentration1, posterior.concentration0) - _log_beta_function(
            data.new_tensor(self.concentration1), data.new_tensor(self.concentration0)
        )

    def elbo(self, q: dist.Beta, data: Tensor) -> Tensor:
        """Exact ELBO of a Beta q: log p(x) - KL(q || posterior)."""
        return self.log_evidence(data) - torch.distributions.kl_divergence(q, self.posterior(data))


# ----------------------------------------------------------------------------------------------
# Probabilistic PCA: a local latent per datapoint
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbabilisticPCA:
    """z_n ~ N(0, I_latent);  x_n | z_n ~ N(W z_n + b, sigma^2 I_pixels)  (Tipping and Bishop 1999).

    Per datapoint: p(x_n) = N(b, W W^T + sigma^2 I);  posterior N(M^-1 W^T (x_n - b), sigma^2 M^-1)
    with M = W^T W + sigma^2 I, correlated unless W has orthogonal columns.
    """

    weight: Tensor  # W: (pixels, z_dim)
    bias: Tensor  # b: (pixels,)
    noise_scale: float

    @property
    def z_dim(self) -> int:
        """The dimension of z (columns of W)."""
        return self.weight.shape[-1]

    def model(self, data: Tensor) -> None:
        """data: (num_data, pixels)."""
        with pyro.plate("data", data.shape[0]):
            z = pyro.sample("z", dist.Normal(data.new_zeros(self.z_dim), 1.0).to_event(1))
            mean = (self.weight @ z.unsqueeze(-1)).squeeze(-1) + self.bias  # (..., num_data, pixels)
            pyro.sample("x", dist.Normal(mean, self.noise_scale).to_event(1), obs=data)

    def posterior_guide(self, data: Tensor) -> None:
        """q(z_n) = p(z_n | x_n) exactly: the ideal proposal (every importance weight equals p(x_n))."""
        with pyro.plate("data", data.shape[0]):
            pyro.sample("z", self.posterior(data))

    def posterior(self, data: Tensor) -> dist.MultivariateNormal:
        """Batch of num_data posteriors, one per row of ``data``."""
        precision = self.weight.T @ self.weight / self.noise_scale**2 + torch.eye(
            self.z_dim, dtype=data.dtype, device=data.device
        )
        precision_times_mean = (data - self.bias) @ self.weight / self.noise_scale**2  # (num_data, z_dim)
        covariance = torch.cholesky_inverse(torch.linalg.cholesky(precision))
        loc = precision_times_mean @ covariance
        return dist.MultivariateNormal(loc, precision_matrix=precision.expand(data.shape[0], -1, -1))

    def log_evidence(self, data: Tensor) -> Tensor:
        """log p(x_n) for each row: (num_data,)."""
        covariance = self.weight @ self.weight.T + self.noise_scale**2 * torch.eye(
            data.shape[-1], dtype=data.dtype, device=data.device
        )
        return dist.MultivariateNormal(self.bias, covariance).log_prob(data)

    def optimal_mean_field(self, data: Tensor) -> tuple[Tensor, Tensor]:
        """(loc, scale), each (num_data, z_dim): the best diagonal q for each datapoint."""
        return _optimal_mean_field(self.posterior(data))

    def elbo(self, q: dist.Distribution, data: Tensor) -> Tensor:
        """Exact per-datapoint ELBO (num_data,) of a batch of Gaussian q's."""
        return self.log_evidence(data) - torch.distributions.kl_divergence(_as_multivariate(q), self.posterior(data))


def _log_beta_function(a: Tensor, b: Tensor) -> Tensor:
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
