"""Pyro ports of posteriordb's hierarchical, Gaussian-process, mixture and time-series posteriors.

As in :mod:`pyro_vi.posteriordb.regressions`: data as keyword arguments under their Stan names,
parameters under theirs (transformed parameters as ``pyro.deterministic``), wide proper priors where
Stan's are flat (said per model). Discrete latents are marginalized as the Stan programs do (the
mixture's ``log_mix``, the HMM's forward algorithm). Ordered vectors keep Stan's unnormalized
density on the ordered set (:class:`OrderedNormal`), so the posterior is Stan's.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from pyro_vi.posteriordb.regressions import WIDE_SCALE, linear_predictor

__all__ = ["OrderedNormal", "eight_schools_noncentered", "gp_pois_regr", "low_dim_gauss_mix", "arK", "garch11", "hmm_example"]


class OrderedNormal(dist.TorchDistribution):
    """Independent normals restricted to an ordered (or positive ordered) vector, with Stan's
    unnormalized density: the product of the normal densities on that set (support ``ordered_vector``
    or ``positive_ordered_vector``, so guides transform onto it). Samples sort normal draws (for
    initialization; exact only for identical normals)."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}

    def __init__(self, loc: Tensor, scale: Tensor, positive: bool = False, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.positive = positive
        super().__init__(self.loc.shape[:-1], self.loc.shape[-1:], validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self):
        """Stan's ``ordered`` or ``positive_ordered``."""
        return constraints.positive_ordered_vector if self.positive else constraints.ordered_vector

    def expand(self, batch_shape, _instance=None):
        """The same normals for a larger batch."""
        shape = torch.Size(batch_shape) + self.event_shape
        return OrderedNormal(self.loc.expand(shape), self.scale.expand(shape), self.positive)

    def sample(self, sample_shape=torch.Size()):
        """Sorted normal draws (absolute values first when positive)."""
        with torch.no_grad():
            draws = torch.normal(self.loc.expand(self._extended_shape(sample_shape)),
                                 self.scale.expand(self._extended_shape(sample_shape)))
            return (draws.abs() if self.positive else draws).sort(-1).values

    def log_prob(self, value: Tensor) -> Tensor:
        """Sum of the normal log densities (Stan's ``target`` for ``mu ~ normal(...)`` on an ordered mu)."""
        return dist.Normal(self.loc, self.scale).log_prob(value).sum(-1)


def eight_schools_noncentered(y: Tensor, sigma: Tensor, **_unused) -> None:
    """eight_schools-eight_schools_noncentered: theta = mu + tau theta_trans (``pyro.deterministic``),
    theta_trans ~ N(0, 1), mu ~ N(0, 5), tau ~ half-Cauchy(5), y_j ~ N(theta_j, sigma_j)."""
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(y.new_tensor(5.0)))
    with pyro.plate("schools", y.shape[0]):
        theta_trans = pyro.sample("theta_trans", dist.Normal(y.new_zeros(()), 1.0))
        theta = pyro.deterministic("theta", mu + tau * theta_trans, event_dim=0)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def gp_pois_regr(x: Tensor, k: Tensor, **_unused) -> None:
    """gp_pois_regr: f = L f_tilde with L L^T = alpha^2 exp(-(x_i - x_j)^2 / (2 rho^2)) + 1e-10 I (in
    float64, as Stan), rho ~ Gamma(25, 4), alpha ~ half-N(0, 2), f_tilde ~ N(0, I), k_i ~ Poisson(exp f_i)."""
    rho = pyro.sample("rho", dist.Gamma(x.new_tensor(25.0), 4.0))  # (...)
    alpha = pyro.sample("alpha", dist.HalfNormal(x.new_tensor(2.0)))
    f_tilde = pyro.sample("f_tilde", dist.Normal(x.new_zeros(x.shape[0]), 1.0).to_event(1))  # (..., N)
    squared_distance = (x[:, None] - x[None, :]).to(torch.float64) ** 2  # (N, N)
    rho64, alpha64 = rho.to(torch.float64)[..., None, None], alpha.to(torch.float64)[..., None, None]
    covariance = alpha64**2 * torch.exp(-squared_distance / (2 * rho64**2))
    covariance = covariance + 1e-10 * torch.eye(x.shape[0], dtype=torch.float64, device=x.device)
    f = (torch.linalg.cholesky(covariance) @ f_tilde.to(torch.float64)[..., None]).squeeze(-1).to(x.dtype)
    f = pyro.deterministic("f", f, event_dim=1)
    pyro.sample("k", dist.Poisson(torch.exp(f)).to_event(1), obs=k)


def low_dim_gauss_mix(y: Tensor, **_unused) -> None:
    """low_dim_gauss_mix: y_n ~ theta N(mu_1, sigma_1) + (1 - theta) N(mu_2, sigma_2) (the component
    marginalized, as Stan's ``log_mix``); ordered mu ~ N(0, 2), sigma ~ half-N(0, 2), theta ~ Beta(5, 5)."""
    mu = pyro.sample("mu", OrderedNormal(y.new_zeros(2), y.new_full((2,), 2.0)))  # (..., 1, 2)
    sigma = pyro.sample("sigma", dist.HalfNormal(y.new_full((2,), 2.0)).to_event(1))
    theta = pyro.sample("theta", dist.Beta(y.new_tensor(5.0), 5.0))  # (..., 1)
    weights = torch.stack([theta, 1 - theta], dim=-1)  # (..., 1, 2)
    with pyro.plate("data", y.shape[0]):
        mixture = dist.MixtureSameFamily(dist.Categorical(probs=weights), dist.Normal(mu, sigma))
        pyro.sample("y", mixture, obs=y)


def arK(y: Tensor, K: int, **_unused) -> None:
    """arK: y_t ~ N(alpha + sum_k beta_k y_(t-k), sigma) for t > K; alpha, beta ~ N(0, 10), sigma ~ half-Cauchy(2.5)."""
    order = int(K)
    lags = torch.stack([y[order - lag: y.shape[0] - lag] for lag in range(1, order + 1)], dim=-1)  # (T - K, K)
    alpha = pyro.sample("alpha", dist.Normal(y.new_zeros(()), 10.0))
    beta = pyro.sample("beta", dist.Normal(y.new_zeros(order), 10.0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfCauchy(y.new_tensor(2.5)))
    with pyro.plate("time", lags.shape[0]):
        pyro.sample("y", dist.Normal(alpha + linear_predictor(lags, beta), sigma), obs=y[order:])


def garch11(y: Tensor, sigma1: float, **_unused) -> None:
    """garch-garch11: sigma_t^2 = alpha0 + alpha1 (y_(t-1) - mu)^2 + beta1 sigma_(t-1)^2, sigma_1 given,
    y_t ~ N(mu, sigma_t). Stan leaves mu and alpha0 flat (wide: N(0, 1000), half-N(0, 1000)) and
    (alpha1, beta1) uniform on alpha1 in (0, 1), beta1 in (0, 1 - alpha1): here beta1 = (1 - alpha1) u,
    u ~ U(0, 1), with the Jacobian log(1 - alpha1) as a factor (a bound that depends on alpha1 is not
    something AutoGuides can transform onto)."""
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), WIDE_SCALE))
    alpha0 = pyro.sample("alpha0", dist.HalfNormal(y.new_tensor(WIDE_SCALE)))
    alpha1 = pyro.sample("alpha1", dist.Uniform(y.new_zeros(()), 1.0))
    beta1_unit = pyro.sample("beta1_unit", dist.Uniform(y.new_zeros(()), 1.0))
    beta1 = pyro.deterministic("beta1", (1 - alpha1) * beta1_unit, event_dim=0)
    pyro.factor("beta1_jacobian", torch.log1p(-alpha1))
    scale = torch.full_like(mu, float(sigma1))
    scales = [scale]
    for t in range(1, y.shape[0]):
        scale = torch.sqrt(alpha0 + alpha1 * (y[t - 1] - mu) ** 2 + beta1 * scale**2)
        scales.append(scale)
    pyro.sample("y", dist.Normal(mu[..., None], torch.stack(scales, dim=-1)).to_event(1), obs=y)


def hmm_example(y: Tensor, K: int, **_unused) -> None:
    """hmm_example: a 2-state HMM, y_t ~ N(mu_(z_t), 1), rows theta1, theta2 of the transition matrix
    uniform on the simplex (Stan: no prior), positive ordered mu with mu_1 ~ N(3, 1), mu_2 ~ N(10, 1);
    the states marginalized by Stan's forward algorithm (no initial distribution: each state weight 1)."""
    states = int(K)
    theta1 = pyro.sample("theta1", dist.Dirichlet(y.new_ones(states)))  # (..., K)
    theta2 = pyro.sample("theta2", dist.Dirichlet(y.new_ones(states)))
    mu = pyro.sample("mu", OrderedNormal(y.new_tensor([3.0, 10.0]), y.new_ones(2), positive=True))
    log_transition = torch.log(torch.stack([theta1, theta2], dim=-2))  # (..., from, to)
    emission = dist.Normal(mu[..., None, :], 1.0).log_prob(y[:, None])  # (..., N, K)
    forward = emission[..., 0, :]
    for t in range(1, y.shape[0]):
        forward = torch.logsumexp(forward[..., :, None] + log_transition, dim=-2) + emission[..., t, :]
    pyro.factor("y", torch.logsumexp(forward, dim=-1))
