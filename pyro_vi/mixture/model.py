"""Gaussian mixture model: the model, its guides, and the exact log joint table.

Generative process (K components, D dimensions, N points)::

    pi            ~ Dirichlet(alpha 1_K)
    loc_k         ~ N(m, s^2 I_D)                         k = 1..K   (plate "components")
    scale_k       ~ LogNormal(mu_s, sigma_s^2)            per dimension
    C_k           ~ LKJCholesky(D, eta)                   full covariance only
    z_n           ~ Categorical(pi)                       n = 1..N   (plate "data")
    x_n | z_n     ~ N(loc_{z_n}, Sigma_{z_n}),  Sigma_k = diag(scale_k) C_k C_k^T diag(scale_k)

``prior=None`` replaces every prior by an improper flat density (``dist.ImproperUniform``), so the
MAP guide maximizes the likelihood itself; that is the objective EM climbs
(``pyro_vi.mixture.em``), with no second copy of the density: EM's E-step is
``log_joint_table``, a trace of this model with ``z`` enumerated.

Guides:
    ``make_map_guide``        AutoDelta on the globals; ``z`` is summed out by TraceEnum_ELBO, so
                              the ELBO is exactly log p(x | globals) + log prior.
    ``make_bayesian_guide``   Dirichlet q(pi), Normal q(loc), LogNormal q(scale), a point mass on
                              C_k, and a Categorical q_n(z) per point, *sampled* (score function):
                              train it with Trace_ELBO or TraceGraph_ELBO. A distribution over the
                              globals (variational Bayes), where the MAP guide has a point.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import config_enumerate
from pyro.infer.autoguide import AutoDelta, init_to_value
from torch import Tensor

__all__ = [
    "COVARIANCES", "GLOBAL_SITES", "Prior", "MixtureParams", "component_distribution", "model", "enumerated_model",
    "log_joint_table", "assignment_probabilities", "make_map_guide", "make_bayesian_guide", "bayesian_point_estimate",
    "bayesian_assignment_probabilities",
]

COVARIANCES = ("full", "diag")
GLOBAL_SITES = ("weights", "loc", "scale", "corr_cholesky")


class Prior(NamedTuple):
    """Hyperparameters of the priors (floats or tensors broadcastable to ``(D,)``)."""

    weights_concentration: float = 1.0
    loc_loc: float | Tensor = 0.0
    loc_scale: float | Tensor = 10.0
    scale_loc: float | Tensor = 0.0
    scale_scale: float | Tensor = 1.0
    corr_concentration: float = 1.0

    @classmethod
    def from_data(cls, data: Tensor, num_components: int) -> Prior:
        """A weakly informative prior on the data's own scale: locations within ~2 data standard
        deviations of the mean, component scales around a K-th of the data's spread."""
        std = data.std(0).clamp_min(1e-6)
        return cls(
            loc_loc=data.mean(0),
            loc_scale=2.0 * std,
            scale_loc=(std / num_components ** (1.0 / data.shape[-1])).log(),
            scale_scale=data.new_tensor(1.0),
        )


class MixtureParams(NamedTuple):
    """Point values of the global sites, in the model's own parametrization.

    ``scale_tril = scale[..., None] * corr_cholesky`` is the Cholesky factor of Sigma_k.
    """

    weights: Tensor  # (K,)
    loc: Tensor  # (K, D)
    scale: Tensor  # (K, D)
    corr_cholesky: Tensor | None  # (K, D, D) for "full", None for "diag"

    @property
    def covariance_type(self) -> str:
        """``"diag"`` when there is no correlation factor, else ``"full"``."""
        return "diag" if self.corr_cholesky is None else "full"

    @property
    def scale_tril(self) -> Tensor:
        """Cholesky factors of the covariances, ``(K, D, D)``."""
        if self.corr_cholesky is None:
            return torch.diag_embed(self.scale)
        return self.scale.unsqueeze(-1) * self.corr_cholesky

    @property
    def covariance_matrix(self) -> Tensor:
        """The covariances Sigma_k, ``(K, D, D)``."""
        scale_tril = self.scale_tril
        return scale_tril @ scale_tril.transpose(-1, -2)

    def as_sites(self) -> dict[str, Tensor]:
        """Site name -> value, as ``model`` samples them (no ``corr_cholesky`` for diag)."""
        sites = {"weights": self.weights, "loc": self.loc, "scale": self.scale}
        if self.corr_cholesky is not None:
            sites["corr_cholesky"] = self.corr_cholesky
        return sites

    def to(self, **kwargs) -> MixtureParams:
        """Every tensor moved/cast by ``Tensor.to(**kwargs)`` (``device=``, ``dtype=``)."""
        return MixtureParams(*(None if t is None else t.to(**kwargs) for t in self))

    @classmethod
    def from_covariance(cls, weights: Tensor, loc: Tensor, covariance: Tensor, covariance_type: str) -> MixtureParams:
        """From covariance matrices ``(K, D, D)`` (full) or variances ``(K, D)`` (diag)."""
        if covariance_type == "diag":
            return cls(weights, loc, covariance.sqrt(), None)
        scale_tril = torch.linalg.cholesky(covariance)
        scale = torch.diagonal(covariance, dim1=-2, dim2=-1).sqrt()
        # Rows of diag(scale)^-1 L have unit norm: the Cholesky factor of the correlation matrix.
        return cls(weights, loc, scale, scale_tril / scale.unsqueeze(-1))

    @classmethod
    def from_sites(cls, sites: dict[str, Tensor]) -> MixtureParams:
        """The inverse of :meth:`as_sites`."""
        return cls(sites["weights"], sites["loc"], sites["scale"], sites.get("corr_cholesky"))


def component_distribution(loc: Tensor, scale: Tensor, corr_cholesky: Tensor | None) -> dist.Distribution:
    """N(loc, Sigma) with an event of size D; diagonal when ``corr_cholesky`` is None."""
    if corr_cholesky is None:
        return dist.Normal(loc, scale).to_event(1)
    return dist.MultivariateNormal(loc, scale_tril=scale.unsqueeze(-1) * corr_cholesky)


class _Flat(dist.ImproperUniform):
    """ImproperUniform whose zero log density takes the value's dtype and device (Pyro's uses the
    default dtype, which breaks float64 ELBOs)."""

    def log_prob(self, value: Tensor) -> Tensor:
        return value.new_zeros(value.shape[: value.dim() - self.event_dim]).expand(
            torch.broadcast_shapes(value.shape[: value.dim() - self.event_dim], self.batch_shape)
        )


def _priors(data: Tensor, num_components: int, covariance: str, prior: Prior | None) -> dict[str, dist.Distribution]:
    """The prior of each global site: proper ones from ``prior``, or flat when it is None."""
    dim = data.shape[-1]
    if prior is None:
        flat = {
            "weights": _Flat(constraints.simplex, (), (num_components,)),
            "loc": _Flat(constraints.real, (num_components,), (dim,)),
            "scale": _Flat(constraints.positive, (num_components,), (dim,)),
        }
        if covariance == "full":
            flat["corr_cholesky"] = _Flat(constraints.corr_cholesky, (num_components,), (dim, dim))
        return flat

    def vector(value) -> Tensor:  # hyperparameter -> (D,) on the data's device and dtype
        return torch.as_tensor(value, dtype=data.dtype, device=data.device).expand(dim)

    priors = {
        "weights": dist.Dirichlet(data.new_full((num_components,), float(prior.weights_concentration))),
        "loc": dist.Normal(vector(prior.loc_loc), vector(prior.loc_scale)).to_event(1),
        "scale": dist.LogNormal(vector(prior.scale_loc), vector(prior.scale_scale)).to_event(1),
    }
    if covariance == "full":
        priors["corr_cholesky"] = dist.LKJCholesky(dim, data.new_tensor(float(prior.corr_concentration)))
    return priors


def model(data: Tensor, num_components: int, covariance: str = "full", prior: Prior | None = None) -> None:
    """pi ~ Dir;  loc_k, scale_k, C_k ~ priors;  z_n ~ Cat(pi);  x_n | z_n ~ N(loc_z, Sigma_z).

    Args:
        data: ``(num_data, dim)`` observations, on the device the model runs on.
        num_components: K.
        covariance: ``"full"`` or ``"diag"``.
        prior: hyperparameters, or None for flat priors (MAP = maximum likelihood).
    """
    num_data = data.shape[0]
    priors = _priors(data, num_components, covariance, prior)
    weights = pyro.sample("weights", priors["weights"])
    with pyro.plate("components", num_components):
        loc = pyro.sample("loc", priors["loc"])  # (K, D)
        scale = pyro.sample("scale", priors["scale"])  # (K, D)
        corr_cholesky = pyro.sample("corr_cholesky", priors["corr_cholesky"]) if covariance == "full" else None
    with pyro.plate("data", num_data):
        # z is (num_data,) when sampled, (K, 1) when enumerated; indexing the component axis works for both.
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("x", component_distribution(loc[z], scale[z], None if corr_cholesky is None else corr_cholesky[z]), obs=data)


enumerated_model = config_enumerate(model)  # z enumerated in parallel: the MAP guide's model (TraceEnum_ELBO)
"""``model`` with ``z`` marked for parallel enumeration (use with ``TraceEnum_ELBO(max_plate_nesting=1)``)."""


def log_joint_table(data: Tensor, params: MixtureParams, prior: Prior | None = None) -> Tensor:
    """log p(x_n, z_n = k | globals) for every point and component, read off a trace of ``model``
    with the globals fixed to ``params`` and ``z`` enumerated in parallel.

    Returns:
        ``(num_data, num_components)`` tensor; its logsumexp over components is log p(x_n | globals).
    """
    num_components = params.weights.shape[-1]
    conditioned = poutine.condition(enumerated_model, data=params.as_sites())
    enumerated = poutine.enum(conditioned, first_available_dim=-2)
    # The globals come from a valid M-step or guide; skipping support checks keeps the E-step cheap.
    with pyro.validation_enabled(False):
        trace = poutine.trace(enumerated).get_trace(data, num_components, params.covariance_type, prior)
    z_site, x_site = trace.nodes["z"], trace.nodes["x"]
    log_prior_z = z_site["fn"].log_prob(z_site["value"])  # (K, 1)
    log_likelihood = x_site["fn"].log_prob(x_site["value"])  # (K, N)
    return (log_prior_z + log_likelihood).transpose(0, 1)


def assignment_probabilities(data: Tensor, params: MixtureParams) -> Tensor:
    """p(z_n = k | x_n, globals), the E-step's responsibilities: ``(num_data, num_components)``."""
    return log_joint_table(data, params).softmax(-1)


def make_map_guide(initial: MixtureParams) -> AutoDelta:
    """A point mass on every global site, started at ``initial``; ``z`` stays in the model, to be
    enumerated by TraceEnum_ELBO. The guide starts from copies: Adam's in-place updates would
    otherwise reach ``initial``'s unconstrained tensors (``loc``), which AutoDelta stores as given."""
    values = {name: value.detach().clone() for name, value in initial.as_sites().items()}
    return AutoDelta(poutine.block(model, expose=list(GLOBAL_SITES)), init_loc_fn=init_to_value(values=values))


def make_bayesian_guide(
    initial: MixtureParams, num_data: int, initial_assignments: Tensor | None = None
) -> Callable[..., None]:
    """q(pi) q(loc) q(scale) q(C) prod_n q_n(z_n), each factor with its own parameters.

    ``z`` is sampled from q_n, not enumerated: its gradient needs the score-function estimator.
    The globals start near ``initial``; every q_n starts uniform, or at ``initial_assignments``
    ``(num_data, K)`` probabilities when given (e.g. the E-step at ``initial``).
    """
    num_components, dim = initial.loc.shape
    expected_counts = num_data * initial.weights
    initial_logits = None if initial_assignments is None else initial_assignments.clamp_min(1e-12).log()

    def guide(data: Tensor, num_components: int = num_components, covariance: str = "full", prior: Prior | None = None) -> None:
        if prior is None:
            raise ValueError("the Bayesian guide needs proper priors; pass a Prior")
        concentration = pyro.param("weights_concentration", expected_counts + 1.0, constraint=constraints.positive)
        loc_loc = pyro.param("loc_loc", initial.loc.clone())
        loc_scale = pyro.param("loc_scale", 0.1 * initial.scale.clone(), constraint=constraints.positive)
        scale_loc = pyro.param("scale_loc", initial.scale.log())
        scale_scale = pyro.param("scale_scale", torch.full_like(initial.scale, 0.1), constraint=constraints.positive)
        logits = pyro.param("assignment_logits", lambda: data.new_zeros(data.shape[0], num_components)
                            if initial_logits is None else initial_logits.clone())
        pyro.sample("weights", dist.Dirichlet(concentration))
        with pyro.plate("components", num_components):
            pyro.sample("loc", dist.Normal(loc_loc, loc_scale).to_event(1))
            pyro.sample("scale", dist.LogNormal(scale_loc, scale_scale).to_event(1))
            if covariance == "full":
                corr = pyro.param("corr_cholesky_point", initial.corr_cholesky.clone(), constraint=constraints.corr_cholesky)
                pyro.sample("corr_cholesky", dist.Delta(corr, event_dim=2))
        with pyro.plate("data", data.shape[0]):
            pyro.sample("z", dist.Categorical(logits=logits))

    return guide


def bayesian_point_estimate(covariance: str) -> MixtureParams:
    """Posterior means of pi and loc and the median of scale under the fitted Bayesian guide (read
    from the param store), with its point mass on C_k for ``covariance="full"``."""
    store = pyro.get_param_store()
    concentration = store["weights_concentration"].detach()
    return MixtureParams(
        concentration / concentration.sum(),
        store["loc_loc"].detach(),
        store["scale_loc"].detach().exp(),
        store["corr_cholesky_point"].detach() if covariance == "full" else None,
    )


def bayesian_assignment_probabilities() -> Tensor:
    """q_n(z = k) of the fitted Bayesian guide (read from the param store): ``(num_data, num_components)``."""
    return pyro.get_param_store()["assignment_logits"].detach().softmax(-1)
