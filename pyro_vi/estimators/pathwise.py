"""Pathwise estimators: the gradient flows through the sample, z = g_phi(eps).

* ``reparam`` and ``stl`` (:class:`Pathwise`): Trace_ELBO's reparameterized gradient; sticking the
  landing drops the score part of d log q / d phi (zero in expectation) by detaching phi inside log q.
* ``analytic-kl`` (:class:`AnalyticKL`): TraceMeanField_ELBO, KL(q || p) in closed form per site.
* ``gumbel`` (:class:`Relaxed`): Bernoulli / OneHotCategorical guide sites replaced by their
  Concrete relaxation (Jang et al. 2017; Maddison et al. 2017), a biased pathwise gradient.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from torch import Tensor

from pyro_vi.errors import ConfigError
from pyro_vi.estimators import traces
from pyro_vi.estimators.base import GradientEstimator

__all__ = ["Pathwise", "StickingTheLanding", "AnalyticKL", "Relaxed"]


class Pathwise(GradientEstimator, name="reparam"):
    """reparam: Trace_ELBO's pathwise gradient."""

    pathwise = True
    sticking_the_landing = False

    def _particle(self, model_trace, guide_trace):
        return traces.elbo_particle(model_trace, guide_trace, sticking_the_landing=self.sticking_the_landing)


class StickingTheLanding(Pathwise, name="stl"):
    """stl (sticking the landing, Roeder et al. 2017): q's parameters detached inside log q, so only
    the path through z remains."""

    sticking_the_landing = True


class AnalyticKL(GradientEstimator, name="analytic-kl"):
    """analytic-kl: TraceMeanField_ELBO, KL(q || p) in closed form where it exists."""

    pathwise = True

    def _particle(self, model_trace, guide_trace):
        return _analytic_kl_particle(model_trace, guide_trace)


def _analytic_kl_particle(model_trace, guide_trace) -> tuple[Tensor, Tensor]:
    """(elbo, surrogate elbo) with KL(q(z) || p(z | parents)) in closed form at each latent site
    where one exists (TraceMeanField_ELBO's estimator), log p - log q elsewhere."""
    elbo = 0.0
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"] or name not in guide_trace.nodes:
            elbo = elbo + site["log_prob_sum"]
            continue
        guide_site = guide_trace.nodes[name]
        try:
            kl = kl_divergence(guide_site["fn"], site["fn"])
        except NotImplementedError:
            elbo = elbo + site["log_prob_sum"] - guide_site["log_prob_sum"]
            continue
        elbo = elbo - scale_and_mask(kl, guide_site["scale"], guide_site["mask"]).sum()
    # Guide sites the model does not have (an AutoGuide's auxiliary latent, whose Delta sites carry
    # only a Jacobian): their -log q is the entropy term of the ELBO, as in TraceMeanField_ELBO.
    for name, guide_site in guide_trace.nodes.items():
        if guide_site["type"] == "sample" and name not in model_trace.nodes:
            elbo = elbo - guide_site["log_prob_sum"]
    return elbo, elbo


# -- gumbel --------------------------------------------------------------------------------------

_RELAXABLE = (dist.Bernoulli, dist.OneHotCategorical)


class Relaxed(GradientEstimator, name="gumbel"):
    """gumbel: Concrete relaxation of Bernoulli / OneHotCategorical sites at ``temperature``; biased."""

    def __init__(self, num_particles: int = 1, temperature: float = 0.5, max_plate_nesting: float = float("inf")):
        if not temperature > 0:
            raise ConfigError(f"gumbel temperature must be positive, got {temperature!r}")
        super().__init__(num_particles, max_plate_nesting)
        self.temperature = temperature

    def wrap(self, model, guide):
        """The guide with its Bernoulli / OneHotCategorical sites drawn from their Concrete relaxation."""
        return model, traces.with_handler(guide, lambda: _Relaxed(self.temperature))

    def _check_sites(self, sites):
        relaxable = [s for s in sites.latent if isinstance(traces.base_distribution(s["fn"]), _RELAXABLE)]
        relaxable_names = {s["name"] for s in relaxable}
        other = [s["name"] for s in sites.latent if traces.is_discrete(s["fn"]) and s["name"] not in relaxable_names]
        if other:
            raise ConfigError(
                f"gumbel relaxes Bernoulli and OneHotCategorical sites only, not {', '.join(other)}: a "
                "Categorical's integer value cannot carry a relaxed sample; write the site as "
                "OneHotCategorical in model and guide (the model then uses the one-hot value, e.g. "
                "locs @ c instead of locs[c]), or use enum, score or rloo"
            )
        if not relaxable:
            raise ConfigError("gumbel needs Bernoulli or OneHotCategorical guide sites; this guide has none, use reparam")

    def _particles(self, model, guide, args, kwargs):
        with pyro.validation_enabled(False):  # the model scores relaxed (non-integer) values
            return super()._particles(model, guide, args, kwargs)

    def _particle(self, model_trace, guide_trace):
        return traces.elbo_particle(model_trace, guide_trace)


class _Relaxed(Messenger):
    """Replace Bernoulli / OneHotCategorical guide sites by their Concrete relaxation.

    The relaxed sample is reparameterized; log q and the model's log p are the discrete
    log-probabilities extended to the relaxed value (as in Jang et al. 2017), so the objective is a
    relaxation of the ELBO and the gradient is biased for it.
    """

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = temperature

    def _pyro_sample(self, msg):
        if traces.is_latent(msg) and isinstance(traces.base_distribution(msg["fn"]), _RELAXABLE):
            msg["fn"] = _RelaxedSite(msg["fn"], self.temperature)

    def register(self):
        pass


class _RelaxedSite(dist.TorchDistribution):
    """Samples from the Concrete relaxation of ``discrete``; scores with ``discrete``'s log_prob."""

    arg_constraints = {}
    has_rsample = True

    def __init__(self, discrete, temperature: float):
        self.discrete = discrete
        base = traces.base_distribution(discrete)
        temperature = torch.tensor(temperature, dtype=base.logits.dtype, device=base.logits.device)
        if isinstance(base, dist.Bernoulli):
            relaxed = dist.RelaxedBernoulli(temperature, logits=base.logits)
        else:
            relaxed = dist.RelaxedOneHotCategorical(temperature, logits=base.logits)
        self.relaxed = relaxed.expand(discrete.batch_shape + relaxed.batch_shape[len(discrete.batch_shape):])
        super().__init__(discrete.batch_shape, discrete.event_shape, validate_args=False)

    @property
    def support(self):
        return dist.constraints.real

    def rsample(self, sample_shape=torch.Size()):
        value = self.relaxed.rsample(sample_shape)
        return value.reshape(sample_shape + self.batch_shape + self.event_shape)

    def log_prob(self, value):
        with pyro.validation_enabled(False):
            return self.discrete.log_prob(value)
