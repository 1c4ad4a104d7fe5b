"""Gradient estimators of the ELBO as Pyro ELBO objects, chosen by name.

Every estimator's value is loss = -ELBO, except ``iwae`` and ``dreg`` (minus the
importance-weighted bound) and ``gumbel`` (minus the relaxed objective: log p - log q evaluated at
the Concrete samples, whose expectation is not the ELBO); the estimators sharing an objective
differ only in the gradient they give. Each is an object with
``loss``, ``differentiable_loss`` and ``loss_and_grads``, usable wherever Pyro's ``Trace_ELBO`` is
(``pyro.infer.SVI``, ``pyro_vi``'s training loop). The model and guide are never rewritten: an
estimator changes how the guide's sites are sampled with a poutine handler (``has_rsample`` off,
a Concrete relaxation, enumeration, a baseline) and builds its own surrogate loss from the traces.

Names (one vocabulary across the API, the CLI, JSON and plots), one class per family::

    reparam            Pathwise: at every guide site (Trace_ELBO's gradient); guides with discrete
                       or non-reparameterizable sites are refused (use score, rloo, enum or gumbel)
    stl                Pathwise: sticking the landing, variational parameters detached inside log q
    analytic-kl        AnalyticKL: TraceMeanField_ELBO, KL(q || p) in closed form where it exists,
                       log p - log q elsewhere, and -log q of an AutoGuide's auxiliary site
    score              ScoreFunction: at every guide site, plate-level Rao-Blackwellization
    score-naive        ScoreFunction: whole log-ratio times the summed score (textbook REINFORCE)
    rloo               LeaveOneOut: k particles, each site's cost baselined by the mean of the
                       other particles' costs at the same plate element (per datapoint)
    score-graph        GraphScore: TraceGraph_ELBO's dependency-graph Rao-Blackwellization
    score-baseline     AverageBaseline: score-graph plus a decaying-average baseline per site
    score-nn-baseline  NetworkBaseline: score-graph plus a learned (NVIL-style) baseline network
    enum               Enumeration: exact enumeration of discrete sites (TraceEnum_ELBO)
    gumbel             Relaxed: Concrete relaxation of Bernoulli / OneHotCategorical sites; BIASED
                       (loss is the relaxed objective; a plain Categorical is refused: its integer
                       value cannot carry a relaxed sample, write it as OneHotCategorical)
    iwae               ImportanceWeighted: gradient of the k-particle importance-weighted bound
    dreg               ImportanceWeighted: doubly reparameterized gradient of the same bound

Scales. Subsampling (``N/|B|``) and ``poutine.scale`` (a KL weight beta) enter every ELBO estimator
through the sites' log-probs, as in Pyro. For iwae and dreg the subsampling scale of the plates
every site lives in multiplies each datapoint's bound, and every other scale multiplies its site's
log density inside the weight (log w = log p(x | z) + beta (log p(z) - log q(z))), so k = 1 gives
the scaled ELBO; with a latent outside a subsampled plate (a global latent) and k > 1 no minibatch
bound estimates the full-data bound, and ``check`` refuses. Without subsampling a global latent's
bound is that of the whole data set, computed exactly.

Point masses (``Delta``, AutoDelta, and the sites an AutoGuide derives from its auxiliary latent)
have no score function: every estimator takes their value pathwise; dreg refuses a point mass
that is not such a transform (its identity needs a density). Model sites marked for enumeration
that the guide lacks are summed out by enum only; every other estimator refuses them.
``check(model, guide, *args)`` raises a one-line ``ConfigError`` naming the site and what to use.

The surrogates built here use only tensor operations (no ``.item()``), so ``differentiable_loss``
can run under ``torch.func.vmap`` (see ``pyro_vi.estimators.variance``).
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.distributions.kl import kl_divergence
from pyro.infer import ELBO, TraceEnum_ELBO, TraceGraph_ELBO, config_enumerate
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import MultiFrameTensor, is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match
from torch import Tensor, nn

from pyro_vi.estimators import importance
from pyro_vi.errors import ConfigError

ESTIMATORS = (
    "reparam",
    "score",
    "score-naive",
    "score-graph",
    "score-baseline",
    "score-nn-baseline",
    "rloo",
    "stl",
    "analytic-kl",
    "enum",
    "gumbel",
    "iwae",
    "dreg",
)
# Estimators whose expectation is the exact gradient of their objective (gumbel's is not).
UNBIASED = tuple(name for name in ESTIMATORS if name != "gumbel")


def get_estimator(name: str = "reparam", num_particles: int = 1, **options) -> "GradientEstimator":
    """The estimator called ``name`` (one of ``ESTIMATORS``) with ``num_particles`` samples.

    Options: ``temperature`` (gumbel, default 0.5), ``baseline_beta`` (score-baseline, 0.9),
    ``baseline_hidden_dim`` (score-nn-baseline, 16), ``max_plate_nesting`` (enum),
    ``vectorize_particles`` (iwae and dreg: the k particles in one vectorized draw).
    """
    if name not in ESTIMATORS:
        raise ConfigError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    return _FAMILIES[name](name, num_particles=num_particles, **options)


class _Sites(NamedTuple):
    """What ``check`` reads off one draw of the guide and the model replayed against it."""

    guide_trace: object
    model_trace: object
    latent: list  # the guide's sample sites
    discrete: list[str]  # names of the guide's discrete sites
    continuous_without_rsample: list[str]
    model_only: list  # latent model sites the guide lacks


class GradientEstimator(ELBO):
    """A named gradient estimator of the ELBO with Pyro's ELBO interface; one subclass per family.

    ``GradientEstimator(name, ...)`` builds the family's class for ``name`` (as ``get_estimator``).
    A family overrides ``_loss_and_surrogate`` (value and surrogate from the traces), ``wrap`` (the
    poutine handlers it runs the pair under) and ``_check_sites`` (what it refuses).

    Args:
        name: one of ``ESTIMATORS``.
        num_particles: samples per estimate (``k`` for rloo, iwae, dreg); averaged for the others.
        temperature: Concrete temperature for ``gumbel``.
        baseline_beta: decay of the running-average baseline for ``score-baseline``.
        baseline_hidden_dim: hidden units of the ``score-nn-baseline`` network.
        max_plate_nesting: passed to Pyro's ELBO (``enum`` guesses it when left at infinity).
    """

    # Pathwise families take no score-function terms: they refuse discrete and non-rsample sites.
    # (reparam could take the score function there, as Trace_ELBO does, but then a "reparam"
    # measurement would silently mix in score-function variance.)
    pathwise = False

    def __new__(cls, name: str = "reparam", *args, **kwargs):
        if cls is GradientEstimator:
            if name not in ESTIMATORS:
                raise ConfigError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
            cls = _FAMILIES[name]
        return super().__new__(cls)

    def __init__(
        self,
        name: str = "reparam",
        num_particles: int = 1,
        temperature: float = 0.5,
        baseline_beta: float = 0.9,
        baseline_hidden_dim: int = 16,
        max_plate_nesting: float = float("inf"),
    ):
        if name not in ESTIMATORS:
            raise ConfigError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise ConfigError(f"num_particles must be a positive integer, got {num_particles!r}")
        if not temperature > 0:
            raise ConfigError(f"gumbel temperature must be positive, got {temperature!r}")
        if not 0 <= baseline_beta < 1:
            raise ConfigError(f"baseline_beta must be in [0, 1), got {baseline_beta!r}")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.name = name
        self.temperature = temperature
        self.baseline_beta = baseline_beta
        self.baseline_hidden_dim = baseline_hidden_dim
        self._checked = set()
        self.frozen = False  # True while measuring: a baseline is read, never updated

    def __repr__(self) -> str:
        return f"GradientEstimator({self.name!r}, num_particles={self.num_particles})"

    # -- the ELBO interface -------------------------------------------------------------------

    def loss(self, model, guide, *args, **kwargs) -> float:
        """An estimate of -ELBO (of minus the importance-weighted bound for iwae and dreg)."""
        with torch.no_grad():
            return float(self._checked_loss_and_surrogate(model, guide, args, kwargs)[0])

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """A tensor whose value is the loss and whose gradient is this estimator's gradient."""
        loss, surrogate = self._checked_loss_and_surrogate(model, guide, args, kwargs)
        return loss.detach() + (surrogate - surrogate.detach())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Accumulate the estimated gradient into ``param.grad``; return the loss."""
        loss, surrogate = self._checked_loss_and_surrogate(model, guide, args, kwargs)
        if getattr(surrogate, "requires_grad", False):
            surrogate.backward(retain_graph=self.retain_graph)
        return float(loss.detach())

    def _get_trace(self, model, guide, args, kwargs):
        """One (model_trace, guide_trace) pair as this estimator draws it (Pyro's ELBO hook)."""
        model, guide = self.wrap(model, guide)
        return _traces(model, guide, args, kwargs)

    def wrap(self, model, guide):
        """The (model, guide) pair as this estimator runs them: handlers only, same sites."""
        return model, guide

    # -- measuring ----------------------------------------------------------------------------

    def warm_up(self, model, guide, args, kwargs, num_steps: int | None = None) -> int:
        """Evaluations that move a running baseline before measuring (score-baseline only); returns
        how many ran. Other families have nothing to warm up."""
        if num_steps:
            raise ConfigError(f"baseline_warmup applies to score-baseline only, not {self.name!r}")
        return 0

    @contextlib.contextmanager
    def measuring(self):
        """While measuring, a baseline is read at its current value and not updated."""
        was_frozen, self.frozen = self.frozen, True
        try:
            yield self
        finally:
            self.frozen = was_frozen

    # -- applicability ------------------------------------------------------------------------

    def check(self, model, guide, *args, **kwargs) -> None:
        """Raise a one-line ``ConfigError`` if this estimator does not apply to the pair's sites."""
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        latent = _sample_sites(guide_trace)
        sites = _Sites(
            guide_trace,
            model_trace,
            latent,
            [s["name"] for s in latent if _is_discrete(s["fn"])],
            [s["name"] for s in latent if not _is_discrete(s["fn"]) and not s["fn"].has_rsample],
            [s for s in _sample_sites(model_trace) if s["name"] not in guide_trace.nodes and not s["is_observed"]],
        )
        if self.pathwise and sites.discrete:
            raise ConfigError(
                f"estimator {self.name!r} is pathwise but the guide samples discrete sites "
                f"{', '.join(sites.discrete)} (it takes no score-function terms); use score, rloo, enum or gumbel "
                "(enum keeps the pathwise gradient at the continuous sites of a mixed guide)"
            )
        if self.pathwise and sites.continuous_without_rsample:
            raise ConfigError(
                f"estimator {self.name!r} is pathwise but guide sites {', '.join(sites.continuous_without_rsample)} "
                "cannot rsample (it takes no score-function terms); use score or rloo"
            )
        self._check_model_only_sites(sites)
        self._check_sites(sites)

    def _check_model_only_sites(self, sites: _Sites) -> None:
        enumerated = [s["name"] for s in sites.model_only if s["infer"].get("enumerate")]
        if enumerated:
            raise ConfigError(
                f"estimator {self.name!r}: model site {enumerated[0]!r} is marked for enumeration and has no guide "
                "site; only enum sums it out (the others would draw it from the prior, another objective); use enum"
            )
        if sites.model_only:
            raise ConfigError(
                f"estimator {self.name!r}: model site {sites.model_only[0]['name']!r} has no guide site (it would be "
                "drawn from the prior, another objective); add it to the guide, or mark it with config_enumerate and use enum"
            )

    def _check_sites(self, sites: _Sites) -> None:
        """A family's own refusals (none by default)."""

    # -- the surrogate ------------------------------------------------------------------------

    def _checked_loss_and_surrogate(self, model, guide, args, kwargs) -> tuple[Tensor, Tensor]:
        key = (id(model), id(guide))
        if key not in self._checked:
            self.check(model, guide, *args, **kwargs)
            self._checked.add(key)
        model, guide = self.wrap(model, guide)
        return self._loss_and_surrogate(model, guide, args, kwargs)

    def _particles(self, model, guide, args, kwargs) -> list:
        return [_traces(model, guide, args, kwargs) for _ in range(self.num_particles)]

    def _loss_and_surrogate(self, model, guide, args, kwargs) -> tuple[Tensor, Tensor]:
        """(loss, surrogate loss) of the wrapped pair: the loss's value, the surrogate's gradient."""
        particles = self._particles(model, guide, args, kwargs)
        elbos, surrogates = zip(*(self._particle(m, g) for m, g in particles))
        return -sum(elbos) / self.num_particles, -sum(surrogates) / self.num_particles

    def _particle(self, model_trace, guide_trace) -> tuple[Tensor, Tensor]:
        """(elbo, surrogate elbo) of one particle."""
        raise NotImplementedError


class Pathwise(GradientEstimator):
    """reparam (Trace_ELBO's pathwise gradient) and stl (sticking the landing: q's parameters
    detached inside log q, so only the path through z remains)."""

    pathwise = True

    def _particle(self, model_trace, guide_trace):
        return _particle(model_trace, guide_trace, sticking_the_landing=self.name == "stl")


class AnalyticKL(GradientEstimator):
    """analytic-kl: TraceMeanField_ELBO, KL(q || p) in closed form where it exists."""

    pathwise = True

    def _particle(self, model_trace, guide_trace):
        return _analytic_kl_particle(model_trace, guide_trace)


class ScoreFunction(GradientEstimator):
    """score (plate-level Rao-Blackwellization, as Trace_ELBO) and score-naive (the whole log-ratio
    times the summed score): rsample off at every guide site but point masses."""

    def wrap(self, model, guide):
        return model, _with_handler(guide, lambda: _ScoreFunction(self, None))

    def _particle(self, model_trace, guide_trace):
        return _particle(model_trace, guide_trace, naive=self.name == "score-naive")


class LeaveOneOut(ScoreFunction):
    """rloo: the score function over k particles, each baselined by the other k - 1."""

    def __init__(self, name: str = "rloo", num_particles: int = 2, **options):
        if not isinstance(num_particles, bool) and isinstance(num_particles, int) and num_particles < 2:
            raise ConfigError("rloo needs at least 2 particles (each is baselined by the others); pass --particles 2 or more")
        super().__init__(name, num_particles=num_particles, **options)

    def _loss_and_surrogate(self, model, guide, args, kwargs):
        return _leave_one_out(self._particles(model, guide, args, kwargs))


class GraphScore(GradientEstimator):
    """score-graph: TraceGraph_ELBO's dependency-graph Rao-Blackwellization (subclasses add a baseline)."""

    baseline: str | None = None  # the _ScoreFunction handler's baseline option

    def __init__(self, name: str = "score-graph", num_particles: int = 1, **options):
        super().__init__(name, num_particles=num_particles, **options)
        self._pyro_elbo = TraceGraph_ELBO(num_particles=num_particles, max_plate_nesting=self.max_plate_nesting)

    def wrap(self, model, guide):
        return model, _with_handler(guide, lambda: _ScoreFunction(self, self.baseline))

    def _loss_and_surrogate(self, model, guide, args, kwargs):
        elbo, surrogate_loss = 0.0, 0.0
        for model_trace, guide_trace in self._pyro_elbo._get_traces(model, guide, args, kwargs):
            # TraceGraph_ELBO accumulates in place from the first model site: put the observed
            # sites first, whose log-probs depend on every draw, so that under vmap the
            # accumulator is batched even when the first latent is a point mass.
            nodes = model_trace.nodes
            model_trace.nodes = type(nodes)(sorted(nodes.items(), key=lambda item: not item[1].get("is_observed", False)))
            particle_elbo, particle_surrogate = self._pyro_elbo._loss_and_surrogate_loss_particle(model_trace, guide_trace)
            elbo, surrogate_loss = elbo + particle_elbo, surrogate_loss + particle_surrogate
        return -elbo / self.num_particles, surrogate_loss / self.num_particles


# score-baseline: evaluations that warm up Pyro's decaying-average baseline before measuring when
# the param store has none; beta = 0.9 leaves 0.9^50 ~ 0.5% of the zero initial value.
BASELINE_WARMUP = 50


class AverageBaseline(GraphScore):
    """score-baseline: score-graph plus Pyro's decaying-average baseline per site."""

    baseline = "average"

    def warm_up(self, model, guide, args, kwargs, num_steps: int | None = None) -> int:
        """Move the running average with ``num_steps`` evaluations (no optimizer step). Default:
        ``BASELINE_WARMUP`` when the param store lacks an average for some guide site (a fresh
        estimator would otherwise be measured with baseline 0, i.e. as score-graph), else 0."""
        if num_steps is None:
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            store = pyro.get_param_store()
            keys = [_AVERAGE_KEY + site["name"] for site in _sample_sites(guide_trace)]
            num_steps = 0 if all(key in store for key in keys) else BASELINE_WARMUP
        was_frozen, self.frozen = self.frozen, False
        try:
            with torch.no_grad(), pyro.validation_enabled(False):  # check() has validated the pair
                for _ in range(num_steps):
                    self.differentiable_loss(model, guide, *args, **kwargs)
        finally:
            self.frozen = was_frozen
        return num_steps


class NetworkBaseline(GraphScore):
    """score-nn-baseline: score-graph plus a learned (NVIL-style) baseline network per site."""

    baseline = "network"

    def __init__(self, name: str = "score-nn-baseline", num_particles: int = 1, **options):
        super().__init__(name, num_particles=num_particles, **options)
        self._baseline_networks = nn.ModuleDict()  # one net per guide site

    def check(self, model, guide, *args, **kwargs) -> None:
        super().check(model, guide, *args, **kwargs)
        poutine.trace(self.wrap(model, guide)[1]).get_trace(*args, **kwargs)  # build the networks now, outside any vmap


class Enumeration(GradientEstimator):
    """enum: exact enumeration of discrete sites (TraceEnum_ELBO), pathwise at the continuous ones."""

    def __init__(self, name: str = "enum", num_particles: int = 1, **options):
        super().__init__(name, num_particles=num_particles, **options)
        self._pyro_elbo = TraceEnum_ELBO(num_particles=num_particles, max_plate_nesting=self.max_plate_nesting)

    def wrap(self, model, guide):
        return config_enumerate(model, "parallel"), config_enumerate(guide, "parallel")

    def _check_model_only_sites(self, sites):
        pass  # enum sums out the model's discrete sites the guide lacks

    def _check_sites(self, sites):
        model_only_discrete = [s for s in sites.model_only if _is_discrete(s["fn"])]
        if not (sites.discrete or model_only_discrete):
            raise ConfigError("estimator 'enum' needs discrete latent sites but this model has only continuous ones; use reparam")

    def loss(self, model, guide, *args, **kwargs) -> float:
        key = (id(model), id(guide))
        if key not in self._checked:
            self.check(model, guide, *args, **kwargs)
            self._checked.add(key)
        return float(self._pyro_elbo.loss(*self.wrap(model, guide), *args, **kwargs))

    def _loss_and_surrogate(self, model, guide, args, kwargs):
        loss = self._pyro_elbo.differentiable_loss(model, guide, *args, **kwargs)
        return loss.detach(), loss


class Relaxed(GradientEstimator):
    """gumbel: Concrete relaxation of Bernoulli / OneHotCategorical sites; biased."""

    def wrap(self, model, guide):
        return model, _with_handler(guide, lambda: _Relaxed(self.temperature))

    def _check_sites(self, sites):
        relaxable = [s for s in sites.latent if isinstance(_base(s["fn"]), (dist.Bernoulli, dist.OneHotCategorical))]
        relaxable_names = {s["name"] for s in relaxable}
        other = [s["name"] for s in sites.latent if _is_discrete(s["fn"]) and s["name"] not in relaxable_names]
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
        return _particle(model_trace, guide_trace)


class ImportanceWeighted(GradientEstimator):
    """iwae (the bound's reparameterized gradient) and dreg (doubly reparameterized, Tucker et al.
    2019) of the k-particle importance-weighted bound; see ``_importance_weighted``."""

    pathwise = True

    def __init__(self, name: str = "iwae", num_particles: int = 1, vectorize_particles: bool = False, **options):
        """``vectorize_particles``: draw the k particles at once under a plate left of the pair's
        plates (as RenyiELBO's option; the model must broadcast over that dim)."""
        super().__init__(name, num_particles=num_particles, **options)
        self.vectorize_particles = bool(vectorize_particles)
        self._particle_dims = {}  # (id(model), id(guide)) -> the particles plate's dim

    def check(self, model, guide, *args, **kwargs) -> None:
        super().check(model, guide, *args, **kwargs)
        if self.vectorize_particles:
            self._particle_dims[(id(model), id(guide))] = _particle_dim(model, guide, args, kwargs)

    def _check_sites(self, sites):
        if self.num_particles > 1:
            outside = _outside_subsampled_plates(sites.guide_trace, sites.model_trace)
            if outside:
                site, plate = outside
                raise ConfigError(
                    f"estimator {self.name!r} with {self.num_particles} particles: site {site!r} lies outside "
                    f"the subsampled plate {plate!r}, so the minibatch bound estimates no full-data bound; pass the "
                    "whole data set, use 1 particle (the ELBO) or use reparam"
                )
        if self.name != "dreg":
            return
        point_masses = [s["name"] for s in sites.latent if isinstance(_base(s["fn"]), dist.Delta)]
        auxiliary = [s for s in sites.latent if s["infer"].get("is_auxiliary")]
        if point_masses and not auxiliary:
            raise ConfigError(
                f"estimator 'dreg': guide site {point_masses[0]!r} is a point mass (Delta), which has no score "
                "term to reparameterize; use iwae (the same bound, exact gradient there)"
            )
        scales = {_scale_key(s["scale"]) for s in sites.latent}
        if self.num_particles > 1 and len(scales) > 1:
            raise ConfigError(
                "estimator 'dreg' needs one scale (poutine.scale times subsampling) on every guide site, "
                f"got {len(scales)} different ones; use iwae"
            )

    def _loss_and_surrogate(self, model, guide, args, kwargs):
        dreg = self.name == "dreg"
        if not (self.vectorize_particles and self.num_particles > 1):
            particles = self._particles(model, guide, args, kwargs)
            return _importance_weighted(particles, doubly_reparameterized=dreg, model=model, args=args, kwargs=kwargs)
        # One draw of all k particles: a plate left of every plate of the pair.
        dim = self._particle_dims.get((id(model), id(guide)))
        if dim is None:
            dim = self._particle_dims[(id(model), id(guide))] = _particle_dim(model, guide, args, kwargs)
        model, guide = (_in_plate(fn, "_particles", self.num_particles, dim) for fn in (model, guide))
        particles = [_traces(model, guide, args, kwargs)]
        return _importance_weighted(particles, doubly_reparameterized=dreg, model=model, args=args, kwargs=kwargs, particle_dim=dim)


def _particle_dim(model, guide, args, kwargs) -> int:
    """The plate dim left of every vectorized plate the pair uses."""
    return -1 - importance.plate_nesting(model, guide, args, kwargs)


def _in_plate(fn, name: str, size: int, dim: int):
    def plated(*args, **kwargs):
        with pyro.plate(name, size, dim=dim):
            return fn(*args, **kwargs)

    plated.__name__ = getattr(fn, "__name__", "fn")
    return plated


_FAMILIES = {
    "reparam": Pathwise,
    "stl": Pathwise,
    "analytic-kl": AnalyticKL,
    "score": ScoreFunction,
    "score-naive": ScoreFunction,
    "rloo": LeaveOneOut,
    "score-graph": GraphScore,
    "score-baseline": AverageBaseline,
    "score-nn-baseline": NetworkBaseline,
    "enum": Enumeration,
    "gumbel": Relaxed,
    "iwae": ImportanceWeighted,
    "dreg": ImportanceWeighted,
}
_AVERAGE_KEY = "__baseline_avg_downstream_cost_"  # Pyro's param-store key of a site's running average


# -- traces and per-particle surrogates ----------------------------------------------------------


def _traces(model, guide, args, kwargs):
    """One guide trace and the model replayed against it, with log-probs and score parts."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    if is_validation_enabled():
        check_model_guide_match(model_trace, guide_trace)
    subsample_sites = {name: site for name, site in model_trace.nodes.items() if site["type"] == "sample" and _is_subsample(site)}
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    model_trace.subsample_sites = subsample_sites  # dreg replays the model at the same minibatch
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()
    return model_trace, guide_trace


def _is_subsample(site) -> bool:
    return type(site["fn"]).__name__ == "_Subsample"


def _sample_sites(trace):
    """The latent sample sites of a trace (not observed, not a plate's subsample site)."""
    return [
        s for s in trace.nodes.values()
        if s["type"] == "sample" and not s["is_observed"] and isinstance(s["fn"], dist.Distribution) and not _is_subsample(s)
    ]


def _log_joint(trace) -> Tensor:
    return sum(site["log_prob_sum"] for site in trace.nodes.values() if site["type"] == "sample")


def _particle(model_trace, guide_trace, sticking_the_landing: bool = False, naive: bool = False) -> tuple[Tensor, Tensor]:
    """(elbo, surrogate elbo) of one particle: pathwise where a site can rsample, else the score
    function times the site's plate-level log-ratio (``naive``: the whole log-ratio)."""
    log_p = _log_joint(model_trace)
    elbo = log_p - _log_joint(guide_trace)
    surrogate = log_p
    log_r = None
    for site in guide_trace.nodes.values():
        if site["type"] != "sample":
            continue
        _, score_function, entropy_term = site["score_parts"]
        if not is_identically_zero(entropy_term):
            surrogate = surrogate - entropy_term.sum()
            if sticking_the_landing and not isinstance(_base(site["fn"]), dist.Delta):
                # Sticking the landing: add back d/dphi log q_phi(z) at fixed z, which cancels the
                # direct (score) part of -log q and leaves only the path through z.
                log_q_fixed_z = scale_and_mask(site["fn"].log_prob(site["value"].detach()), site["scale"], site["mask"]).sum()
                surrogate = surrogate + log_q_fixed_z
        if not is_identically_zero(score_function):
            if naive:  # whole log-ratio times the score, no Rao-Blackwellization
                surrogate = surrogate + elbo.detach() * score_function.sum()
            else:  # Trace_ELBO: each site's score times the log-ratio of the plates it lives in
                log_r = _log_ratio(model_trace, guide_trace) if log_r is None else log_r
                surrogate = surrogate + (log_r.sum_to(site["cond_indep_stack"]) * score_function).sum()
    return elbo, surrogate


def _log_ratio(model_trace, guide_trace) -> MultiFrameTensor:
    """Detached log p - log q per plate, as Trace_ELBO's ``_compute_log_r``, plus -log q of the
    guide sites the model lacks (an AutoGuide's auxiliary latent): without them the score of such
    a site would miss its entropy term."""
    log_r = _compute_log_r(model_trace, guide_trace)
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and name not in model_trace.nodes:
            stack = frozenset(site["cond_indep_stack"])
            log_r.add((stack, -site["log_prob"].detach()))
    return log_r


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


def _leave_one_out(particles) -> tuple[Tensor, Tensor]:
    """rloo: each site's score times its Rao-Blackwellized log-ratio (the plates it lives in, as in
    Trace_ELBO), baselined by the mean of the other k - 1 particles' log-ratios at the same plate
    elements: inside the data plate each datapoint is baselined by the others' draws for that
    datapoint. The baseline of particle i depends on the other particles only, so it adds no bias."""
    num_particles = len(particles)
    elbos = torch.stack([torch.as_tensor(_log_joint(m) - _log_joint(g)) for m, g in particles])  # (k,)
    log_rs = [_log_ratio(m, g) for m, g in particles]
    surrogates = []
    for i, (model_trace, guide_trace) in enumerate(particles):
        surrogate = _log_joint(model_trace) - _entropy_terms(guide_trace)
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample" or is_identically_zero(site["score_parts"].score_function):
                continue
            stack = site["cond_indep_stack"]
            costs = [torch.as_tensor(log_r.sum_to(stack)) for log_r in log_rs]
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


def _importance_weighted(particles, doubly_reparameterized: bool, model, args, kwargs, particle_dim: int | None = None) -> tuple[Tensor, Tensor]:
    """iwae and dreg: value -s * sum_n (logsumexp_i log w_ni - log k), surrogate per Tucker et al. (2019).

    ``n`` runs over the plates every site lives in (e.g. ``data`` in a VAE), so the bound is the
    sum of per-datapoint bounds; with no such plate it is the bound of the whole joint. ``s`` is the
    subsampling scale N/|B| of those plates: it multiplies each datapoint's bound, never a weight
    (a weight raised to N/|B| inside the logsumexp would make the particle weights one-hot). Every
    other scale -- ``poutine.scale`` (a KL weight beta) -- multiplies its site's log density inside
    the weight: log w = log p(x | z) + beta (log p(z) - log q(z)), so at k = 1 the bound is the
    scaled ELBO that reparam estimates. ``check`` refuses k > 1 when a site lies outside a
    subsampled plate (see ``_outside_subsampled_plates``).

    ``particles`` is k (model_trace, guide_trace) pairs, or with ``particle_dim`` one pair drawn
    under a vectorized particles plate at that dim (``model`` then runs under the same plate).
    """
    frames = _common_frames([trace for particle in particles for trace in particle])
    subsample_scale = 1.0
    for frame in frames:
        if frame.full_size is not None:
            subsample_scale = subsample_scale * frame.full_size / frame.size
    if particle_dim is None:
        def per_particle(term):  # (k, *plates)
            return torch.stack([torch.as_tensor(term(m, g)) for m, g in particles])
    else:
        (pair,) = particles
        num_particles = next(f.size for f in frames if f.dim == particle_dim)

        def per_particle(term):  # the particles dim first: (k, *plates)
            value = torch.as_tensor(term(*pair))
            value = value.reshape((1,) * max(0, -particle_dim - value.dim()) + value.shape).movedim(particle_dim, 0)
            return value.expand((num_particles,) + value.shape[1:])

    log_weights = per_particle(lambda m, g: _sum_to(m, frames, subsample_scale) - _sum_to(g, frames, subsample_scale))
    num_particles = log_weights.shape[0]
    bound = subsample_scale * (torch.logsumexp(log_weights, 0) - math.log(num_particles)).sum()
    if not doubly_reparameterized:
        return -bound, -bound
    # Guide parameters phi: with c the guide sites' scale inside the weight (1, or a KL weight),
    # d bound / d phi = sum_i w_i (1 - c + c w_i) d log w_i / dz_i dz_i / dphi (normalized w_i):
    # the score term -c w_i d log q / dphi is reparameterized by E[w_i d log q / dphi] =
    # E[w_i (1 - w_i) d log w_i / dz_i dz_i / dphi]; c = 1 gives DReG's w_i^2. Model parameters
    # theta: sum_i w_i d log p(x, z_i) / dtheta at fixed z_i, as in iwae.
    guide_scale = _relative_guide_scale(particles[0][1], subsample_scale)
    normalized = torch.softmax(log_weights.detach(), 0)
    coefficient = (1 - guide_scale) * normalized + guide_scale * normalized**2
    # log w at the sample plus c log q_phi(z) at the detached sample: only the path through z
    # reaches phi (sticking the landing).
    path = log_weights + guide_scale * per_particle(lambda m, g: _sum_to(g, frames, subsample_scale, fixed_value=True, scaled=False))
    # log p at the detached samples carries d/dtheta only, so the path term reaches phi alone.
    log_p_fixed_z = per_particle(
        lambda m, g: _sum_to(_replayed_at_detached_values(model, m, args, kwargs), frames, subsample_scale)
    )
    surrogate = normalized * log_p_fixed_z + coefficient * (path - log_p_fixed_z)
    return -bound, -subsample_scale * surrogate.sum()


def _replayed_at_detached_values(model, model_trace, args, kwargs):
    """The model run again at the trace's sample values, detached (subsample indices kept)."""
    detached = poutine.Trace()
    for name, site in getattr(model_trace, "subsample_sites", {}).items():
        detached.add_node(name, **site)
    for name, site in model_trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"]:
            detached.add_node(name, **{**site, "value": site["value"].detach()})
    trace = poutine.trace(poutine.replay(model, trace=detached)).get_trace(*args, **kwargs)
    trace = prune_subsample_sites(trace)
    trace.compute_log_prob()
    return trace


def _relative_guide_scale(guide_trace, subsample_scale: float) -> float:
    """The one scale the guide's sites carry besides the subsampling scale (check() refuses dreg
    when they differ)."""
    scales = {_scale_key(site["scale"]) for site in _sample_sites(guide_trace)}
    if len(scales) != 1 or isinstance(next(iter(scales)), tuple):
        return 1.0  # k = 1 (the weight is one, any c gives the same gradient) or refused by check()
    return scales.pop() / subsample_scale


def _outside_subsampled_plates(guide_trace, model_trace) -> tuple[str, str] | None:
    """(site, plate) for the first site (latent, then observed) outside a subsampled plate, else None:
    the log weight of such a site's element cannot be split by datapoint."""
    subsampled = {
        frame.name
        for trace in (guide_trace, model_trace)
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.full_size is not None and frame.full_size != frame.size
    }
    observed = [s for s in model_trace.nodes.values() if s["type"] == "sample" and s["is_observed"]]
    for site in _sample_sites(guide_trace) + observed:
        missing = subsampled - {frame.name for frame in site["cond_indep_stack"]}
        if missing:
            return site["name"], sorted(missing)[0]
    return None


def _scale_key(scale):
    """A hashable form of a site's scale (a number or a tensor)."""
    if isinstance(scale, Tensor):
        return tuple(scale.detach().reshape(-1).tolist()) if scale.numel() > 1 else float(scale)
    return float(scale)


def _common_frames(traces) -> frozenset:
    """The vectorized plates that every sample site of every trace lives in."""
    stacks = [
        frozenset(frame for frame in site["cond_indep_stack"] if frame.vectorized)
        for trace in traces
        for site in trace.nodes.values()
        if site["type"] == "sample"
    ]
    return frozenset.intersection(*stacks) if stacks else frozenset()


def _sum_to(trace, frames, subsample_scale: float, fixed_value: bool = False, scaled: bool = True) -> Tensor:
    """Sum of a trace's masked log-probs down to ``frames``, each times its site's scale divided by
    ``subsample_scale`` (unscaled with ``scaled=False``); with ``fixed_value`` the log-probs of its
    latent sites at detached values (the sticking-the-landing term)."""
    terms = MultiFrameTensor()
    for site in trace.nodes.values():
        if site["type"] != "sample" or (fixed_value and (site["is_observed"] or isinstance(_base(site["fn"]), dist.Delta))):
            continue  # a Delta's value and Jacobian depend on phi only through its parents: no direct term
        if fixed_value:
            log_prob = site["fn"].log_prob(site["value"].detach())
        else:
            log_prob = site.get("unscaled_log_prob", site["log_prob"])
        scale = site["scale"] / subsample_scale if scaled else 1.0
        log_prob = scale_and_mask(log_prob, scale, site["mask"])
        stack = frozenset(frame for frame in site["cond_indep_stack"] if frame.vectorized)
        terms.add((stack, log_prob))
    total = terms.sum_to(frames)
    return torch.as_tensor(total)


def _with_log_prob(trace):
    trace = prune_subsample_sites(trace)
    trace.compute_log_prob()
    return trace


# -- handlers ------------------------------------------------------------------------------------


def _with_handler(guide, make_handler):
    def handled(*args, **kwargs):
        with make_handler() as handler:
            result = guide(*args, **kwargs)
        handler.register()
        return result

    handled.__name__ = getattr(guide, "__name__", "guide")
    return handled


def _base(fn):
    while isinstance(fn, (dist.Independent, dist.MaskedDistribution, dist.ExpandedDistribution)):
        fn = fn.base_dist
    return fn


def _turn_off_rsample(fn) -> None:
    """``has_rsample_(False)`` on the innermost distribution that holds the flag (wrappers such as
    Independent read it from their base)."""
    while True:
        try:
            fn.has_rsample_(False)
            return
        except AttributeError:
            fn = fn.base_dist


def _is_discrete(fn) -> bool:
    return bool(getattr(fn, "has_enumerate_support", False)) or fn.support.is_discrete


def _is_latent(msg) -> bool:
    return (
        msg["type"] == "sample"
        and not msg["is_observed"]
        and isinstance(msg["fn"], dist.Distribution)
        and type(msg["fn"]).__name__ != "_Subsample"
        and msg["infer"].get("enumerate") is None
    )


class _ScoreFunction(Messenger):
    """Turn off rsample at every guide site (Pyro's ``has_rsample_(False)``), optionally adding
    TraceGraph_ELBO's baseline options to each site's ``infer`` dict."""

    def __init__(self, estimator: GradientEstimator, baseline: str | None):
        super().__init__()
        self.estimator = estimator
        self.baseline = baseline

    def _pyro_sample(self, msg):
        if not _is_latent(msg) or isinstance(_base(msg["fn"]), dist.Delta):
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


def _baseline_features(fn) -> Tensor:
    """NVIL-style baseline input for a site: the guide's mean and standard deviation there,
    one row per element of the site's batch (they are functions of the data, not of z)."""
    batch_shape = fn.batch_shape
    base = _base(fn)
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
        if _is_latent(msg) and isinstance(_base(msg["fn"]), (dist.Bernoulli, dist.OneHotCategorical)):
            msg["fn"] = _RelaxedSite(msg["fn"], self.temperature)

    def register(self):
        pass


class _RelaxedSite(dist.TorchDistribution):
    """Samples from the Concrete relaxation of ``discrete``; scores with ``discrete``'s log_prob."""

    arg_constraints = {}
    has_rsample = True

    def __init__(self, discrete, temperature: float):
        self.discrete = discrete
        base = _base(discrete)
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
