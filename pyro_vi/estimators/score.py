"""Score-function estimators: d/dphi E_q[f(z)] = E_q[f(z) d/dphi log q_phi(z)], rsample turned off.

* ``score`` and ``score-naive`` (:class:`ScoreFunction`): each site's score times the log-ratio of
  the plates it lives in (Trace_ELBO's Rao-Blackwellization), or times the whole log-ratio.
* ``rloo`` (:class:`LeaveOneOut`): k particles, each baselined by the mean of the other k - 1.
* ``score-graph`` (:class:`GraphScore`): TraceGraph_ELBO's dependency-graph Rao-Blackwellization;
  ``score-baseline`` (:class:`AverageBaseline`) adds Pyro's decaying-average baseline per site,
  ``score-nn-baseline`` (:class:`NetworkBaseline`) a learned NVIL-style baseline network.

Point masses keep their pathwise value (a Delta's log q does not depend on its parameter).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import is_identically_zero
from pyro.infer import TraceGraph_ELBO
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn

from pyro_vi.engine import params
from pyro_vi.errors import ConfigError
from pyro_vi.estimators import traces
from pyro_vi.estimators.base import GradientEstimator

__all__ = ["ScoreFunction", "LeaveOneOut", "GraphScore", "AverageBaseline", "NetworkBaseline", "BASELINE_WARMUP"]

# score-baseline: evaluations that warm up Pyro's decaying-average baseline before measuring when
# the param store has none; beta = 0.9 leaves 0.9^50 ~ 0.5% of the zero initial value.
BASELINE_WARMUP = 50
_AVERAGE_KEY = "__baseline_avg_downstream_cost_"  # Pyro's param-store key of a site's running average


class ScoreFunction(GradientEstimator, name="score"):
    """score: the score function with plate-level Rao-Blackwellization (as Trace_ELBO); rsample off
    at every guide site but point masses."""

    naive = False

    def wrap(self, model, guide):
        """The guide with rsample turned off at every site but point masses."""
        return model, traces.with_handler(guide, lambda: _ScoreFunction(self, None))

    def _particle(self, model_trace, guide_trace):
        return traces.elbo_particle(model_trace, guide_trace, naive=self.naive)


class NaiveScore(ScoreFunction, name="score-naive"):
    """score-naive: the whole log-ratio times the summed score (no Rao-Blackwellization)."""

    naive = True


class LeaveOneOut(ScoreFunction, name="rloo"):
    """rloo: the score function over k particles, each baselined by the other k - 1."""

    def __init__(self, num_particles: int = 2, max_plate_nesting: float = float("inf")):
        if not isinstance(num_particles, bool) and isinstance(num_particles, int) and num_particles < 2:
            raise ConfigError("rloo needs at least 2 particles (each is baselined by the others); pass --particles 2 or more")
        super().__init__(num_particles, max_plate_nesting)

    def _loss_and_surrogate(self, model, guide, args, kwargs):
        return _leave_one_out(self._particles(model, guide, args, kwargs))


def _leave_one_out(particles) -> tuple[Tensor, Tensor]:
    """rloo: each site's score times its Rao-Blackwellized log-ratio (the plates it lives in, as in
    Trace_ELBO), baselined by the mean of the other k - 1 particles' log-ratios at the same plate
    elements: inside the data plate each datapoint is baselined by the others' draws for that
    datapoint. The baseline of particle i depends on the other particles only, so it adds no bias."""
    num_particles = len(particles)
    elbos = torch.stack([torch.as_tensor(traces.log_joint(m) - traces.log_joint(g)) for m, g in particles])  # (k,)
    log_ratios = [traces.log_ratio(m, g) for m, g in particles]
    surrogates = []
    for i, (model_trace, guide_trace) in enumerate(particles):
        surrogate = traces.log_joint(model_trace) - _entropy_terms(guide_trace)
        for site in guide_trace.nodes.values():
            if site["type"] != "sample" or is_identically_zero(site["score_parts"].score_function):
                continue
            stack = site["cond_indep_stack"]
            costs = [torch.as_tensor(log_ratio.sum_to(stack)) for log_ratio in log_ratios]
            baseline = (sum(costs) - costs[i]) / (num_particles - 1)
            surrogate = surrogate + ((costs[i] - baseline) * site["score_parts"].score_function).sum()
        surrogates.append(torch.as_tensor(surrogate))
    return -elbos.mean(), -torch.stack(surrogates).mean()


def _entropy_terms(guide_trace) -> Tensor:
    return sum(
        site["score_parts"].entropy_term.sum()
        for site in guide_trace.nodes.values()
        if site["type"] == "sample" and not is_identically_zero(site["score_parts"].entropy_term)
    )


class GraphScore(GradientEstimator, name="score-graph"):
    """score-graph: TraceGraph_ELBO's dependency-graph Rao-Blackwellization (subclasses add a baseline)."""

    baseline: str | None = None  # the _ScoreFunction handler's baseline option

    def __init__(self, num_particles: int = 1, max_plate_nesting: float = float("inf")):
        super().__init__(num_particles, max_plate_nesting)
        self._pyro_elbo = TraceGraph_ELBO(num_particles=num_particles, max_plate_nesting=self.max_plate_nesting)

    def wrap(self, model, guide):
        """The guide with rsample turned off and this family's baseline options in each site's infer dict."""
        return model, traces.with_handler(guide, lambda: _ScoreFunction(self, self.baseline))

    def _loss_and_surrogate(self, model, guide, args, kwargs):
        elbo, surrogate_loss = 0.0, 0.0
        for model_trace, guide_trace in params.tracegraph_particles(self._pyro_elbo, model, guide, args, kwargs):
            # TraceGraph_ELBO accumulates in place from the first model site: put the observed
            # sites first, whose log-probs depend on every draw, so that under vmap the
            # accumulator is batched even when the first latent is a point mass.
            nodes = model_trace.nodes
            model_trace.nodes = type(nodes)(sorted(nodes.items(), key=lambda item: not item[1].get("is_observed", False)))
            particle_elbo, particle_surrogate = params.tracegraph_particle_loss(self._pyro_elbo, model_trace, guide_trace)
            elbo, surrogate_loss = elbo + particle_elbo, surrogate_loss + particle_surrogate
        return -elbo / self.num_particles, surrogate_loss / self.num_particles


class AverageBaseline(GraphScore, name="score-baseline"):
    """score-baseline: score-graph plus Pyro's decaying-average baseline per site (decay ``baseline_beta``)."""

    baseline = "average"

    def __init__(self, num_particles: int = 1, baseline_beta: float = 0.9, max_plate_nesting: float = float("inf")):
        if not 0 <= baseline_beta < 1:
            raise ConfigError(f"baseline_beta must be in [0, 1), got {baseline_beta!r}")
        super().__init__(num_particles, max_plate_nesting)
        self.baseline_beta = baseline_beta
    not_recordable = ("score-baseline's decaying-average baselines are state each step rewrites in the param store, "
                      "which a recorded program would freeze")
    keeps_state = True

    def warm_up(self, model, guide, args, kwargs, num_steps: int | None = None) -> int:
        """Move the running average with ``num_steps`` evaluations (no optimizer step). Default:
        ``BASELINE_WARMUP`` when the param store lacks an average for some guide site (a fresh
        estimator would otherwise be measured with baseline 0, i.e. as score-graph), else 0."""
        if num_steps is None:
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            store = pyro.get_param_store()
            keys = [_AVERAGE_KEY + site["name"] for site in traces.latent_sites(guide_trace)]
            num_steps = 0 if all(key in store for key in keys) else BASELINE_WARMUP
        was_frozen, self.frozen = self.frozen, False
        try:
            with torch.no_grad(), pyro.validation_enabled(False):  # check() has validated the pair
                for _ in range(num_steps):
                    self.differentiable_loss(model, guide, *args, **kwargs)
        finally:
            self.frozen = was_frozen
        return num_steps


class NetworkBaseline(GraphScore, name="score-nn-baseline"):
    """score-nn-baseline: score-graph plus a learned (NVIL-style) baseline network per site
    (``baseline_hidden_dim`` hidden units)."""

    baseline = "network"
    keeps_state = True

    def __init__(self, num_particles: int = 1, baseline_hidden_dim: int = 16, max_plate_nesting: float = float("inf")):
        super().__init__(num_particles, max_plate_nesting)
        self.baseline_hidden_dim = baseline_hidden_dim
        self._baseline_networks = nn.ModuleDict()  # one net per guide site

    def check(self, model, guide, *args, **kwargs) -> None:
        """As :meth:`GradientEstimator.check`, then build the baseline networks (outside any vmap)."""
        super().check(model, guide, *args, **kwargs)
        poutine.trace(self.wrap(model, guide)[1]).get_trace(*args, **kwargs)


# -- the handler ---------------------------------------------------------------------------------


class _ScoreFunction(Messenger):
    """Turn off rsample at every guide site (Pyro's ``has_rsample_(False)``), optionally adding
    TraceGraph_ELBO's baseline options to each site's ``infer`` dict."""

    def __init__(self, estimator: GradientEstimator, baseline: str | None):
        super().__init__()
        self.estimator = estimator
        self.baseline = baseline

    def _pyro_sample(self, msg):
        if not traces.is_latent(msg) or isinstance(traces.base_distribution(msg["fn"]), dist.Delta):
            # A point mass (MAP, or an AutoGuide's transform of its auxiliary latent) has no score
            # function (log q does not depend on its parameter): its value enters pathwise, exactly.
            return
        _turn_off_rsample(msg["fn"])
        if self.baseline == "average" and self.estimator.frozen:
            # Pyro's running average at its current value, read but not updated.
            store = pyro.get_param_store()
            key = _AVERAGE_KEY + msg["name"]
            value = store[key].detach() if key in store else torch.zeros(_downstream_shape(msg["fn"]))
            options = {"baseline_value": value}
        elif self.baseline == "average":
            options = {"use_decaying_avg_baseline": True, "baseline_beta": self.estimator.baseline_beta}
        elif self.baseline == "network":
            features = _baseline_features(msg["fn"])
            network = self._network(msg["name"], features.shape[-1])
            options = {"nn_baseline": _Squeeze(network, _downstream_shape(msg["fn"])), "nn_baseline_input": features}
        else:
            return
        msg["infer"] = {**msg["infer"], "baseline": options}

    def _network(self, site: str, input_dim: int) -> nn.Module:
        networks = self.estimator._baseline_networks
        key = site.replace(".", "_")
        if key not in networks:
            hidden = self.estimator.baseline_hidden_dim
            networks[key] = nn.Sequential(nn.Linear(input_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        return networks[key]

    def register(self):
        """Put the baseline networks in the param store so SVI's optimizer trains them."""
        for key, network in getattr(self.estimator, "_baseline_networks", {}).items():
            pyro.module(f"baseline_{key}", network)


def _turn_off_rsample(fn) -> None:
    """``has_rsample_(False)`` on the innermost distribution that holds the flag (wrappers such as
    Independent read it from their base)."""
    while True:
        try:
            fn.has_rsample_(False)
            return
        except AttributeError:
            fn = fn.base_dist


def _baseline_features(fn) -> Tensor:
    """NVIL-style baseline input for a site: the guide's mean and standard deviation there,
    one row per element of the site's batch (they are functions of the data, not of z)."""
    batch_shape = fn.batch_shape
    base = traces.base_distribution(fn)
    if isinstance(base, dist.Categorical):  # its mean is undefined: use the probabilities
        probs = base.probs.detach()
        return probs.expand(batch_shape + probs.shape[-1:]).reshape(batch_shape + (-1,))
    try:
        mean, variance = fn.mean, fn.variance
    except NotImplementedError:  # e.g. a TransformedDistribution: describe it by its base's moments
        inner = getattr(base, "base_dist", None)
        if inner is not None and inner.batch_shape == batch_shape:
            return _baseline_features(inner)
        return torch.ones(batch_shape + (1,))  # no moments at all: the baseline is a learned constant
    mean = mean.detach().reshape(batch_shape + (-1,))
    stddev = variance.detach().clamp(min=0).sqrt().reshape(batch_shape + (-1,))
    return torch.cat([mean, stddev], -1)


def _downstream_shape(fn) -> torch.Size:
    shape = list(fn.batch_shape)
    while shape and shape[0] == 1:
        shape.pop(0)
    return torch.Size(shape)


class _Squeeze(nn.Module):
    def __init__(self, network: nn.Module, shape: torch.Size):
        super().__init__()
        self.network = network
        self.shape = shape

    def forward(self, features: Tensor) -> Tensor:
        return self.network(features).reshape(self.shape)
