"""Gradient estimators of the ELBO as Pyro ELBO objects, chosen by name: the names and the base class.

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
    stl                StickingTheLanding (a Pathwise): sticking the landing, variational parameters detached inside log q
    analytic-kl        AnalyticKL: TraceMeanField_ELBO, KL(q || p) in closed form where it exists,
                       log p - log q elsewhere, and -log q of an AutoGuide's auxiliary site
    score              ScoreFunction: at every guide site, plate-level Rao-Blackwellization
    score-naive        NaiveScore (a ScoreFunction): whole log-ratio times the summed score (textbook REINFORCE)
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
    dreg               DoublyReparameterized (an ImportanceWeighted): doubly reparameterized gradient of the same bound

The families live in :mod:`~pyro_vi.estimators.pathwise` (reparam, stl, analytic-kl, gumbel),
:mod:`~pyro_vi.estimators.score` (score, score-naive, rloo, score-graph and its baselines),
:mod:`~pyro_vi.estimators.enumeration` (enum) and :mod:`~pyro_vi.estimators.importance_weighted`
(iwae, dreg, and how scales enter the bound). Each name is one class, registered by
``class MyEstimator(GradientEstimator, name="my-name")``.

Subsampling (``N/|B|``) and ``poutine.scale`` (a KL weight beta) enter every ELBO estimator through
the sites' log-probs, as in Pyro. Point masses (``Delta``, AutoDelta, and the sites an AutoGuide
derives from its auxiliary latent) have no score function: every estimator takes their value
pathwise; dreg refuses a point mass that is not such a transform (its identity needs a density).
Model sites marked for enumeration that the guide lacks are summed out by enum only; every other
estimator refuses them. ``check(model, guide, *args)`` raises a one-line ``ConfigError`` naming the
site and what to use.

The surrogates use only tensor operations (no ``.item()``), so ``differentiable_loss`` can run
under ``torch.func.vmap`` (see :mod:`pyro_vi.estimators.variance`).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import NamedTuple

import torch
from pyro import poutine
from pyro.infer import ELBO
from torch import Tensor

from pyro_vi.errors import ConfigError
from pyro_vi.estimators import traces

__all__ = ["ESTIMATORS", "UNBIASED", "get_estimator", "GradientEstimator"]

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

_CLASSES: dict[str, type] = {}  # name -> its class, filled by GradientEstimator.__init_subclass__


def get_estimator(name: str = "reparam", num_particles: int = 1, **options) -> "GradientEstimator":
    """The estimator called ``name`` (one of ``ESTIMATORS``) with ``num_particles`` samples.

    Options: ``temperature`` (gumbel, default 0.5), ``baseline_beta`` (score-baseline, 0.9),
    ``baseline_hidden_dim`` (score-nn-baseline, 16), ``max_plate_nesting`` (enum),
    ``vectorize_particles`` (iwae and dreg: the k particles in one vectorized draw).
    """
    if name not in ESTIMATORS:
        raise ConfigError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    cls = _CLASSES[name]
    accepted = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        for option in options:
            if option not in accepted:
                raise ConfigError(f"estimator {name!r} takes no option {option!r}; its options: "
                                  f"{', '.join(p for p in accepted if p != 'num_particles') or 'none but num_particles'}")
    return cls(num_particles=num_particles, **options)


class _Sites(NamedTuple):
    """What ``check`` reads off one draw of the guide and the model replayed against it."""

    guide_trace: object
    model_trace: object
    latent: list  # the guide's sample sites
    discrete: list[str]  # names of the guide's discrete sites
    continuous_without_rsample: list[str]
    model_only: list  # latent model sites the guide lacks


class GradientEstimator(ELBO):
    """A gradient estimator of the ELBO with Pyro's ELBO interface: one subclass per name
    (``class Reparam(GradientEstimator, name="reparam")`` registers it for ``get_estimator``), with
    its own options. A class overrides ``_loss_and_surrogate`` (value and surrogate from the traces)
    or ``_particle`` (one particle's), ``wrap`` (the poutine handlers it runs the pair under) and
    ``_check_sites`` (what it refuses); what the engine reads off it are class attributes
    (``name``, ``pathwise``, ``not_recordable``).

    Args:
        num_particles: samples per estimate (``k`` for rloo, iwae, dreg); averaged for the others.
        max_plate_nesting: passed to Pyro's ELBO (``enum`` guesses it when left at infinity).
    """

    name: str = ""  # its name in ESTIMATORS, set by ``name=`` in the class statement

    # Pathwise families take no score-function terms: they refuse discrete and non-rsample sites.
    # (reparam could take the score function there, as Trace_ELBO does, but then a "reparam"
    # measurement would silently mix in score-function variance.)
    pathwise = False
    # Why a recorded step (``fit(..., compile=...)``) cannot reproduce this estimator, or None: its
    # surrogate is tensor operations of the traces, which a recording replays.
    not_recordable: str | None = None
    # Whether the estimator carries state from step to step (a running or learned baseline):
    # pyro_vi.fit_many then trains its runs one after another, each with its own copy.
    keeps_state = False

    def __init_subclass__(cls, name: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if name is not None:
            if name not in ESTIMATORS or name in _CLASSES:
                raise TypeError(f"{cls.__name__}: estimator name {name!r} is not in ESTIMATORS or already taken")
            cls.name = name
            _CLASSES[name] = cls

    def __init__(self, num_particles: int = 1, max_plate_nesting: float = float("inf")):
        if not type(self).name:
            raise TypeError(f"{type(self).__name__} has no estimator name; use get_estimator(name) or a named subclass")
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise ConfigError(f"num_particles must be a positive integer, got {num_particles!r}")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self._checked = set()
        self.frozen = False  # True while measuring: a baseline is read, never updated

    def __repr__(self) -> str:
        return f"get_estimator({self.name!r}, num_particles={self.num_particles})"

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
        return traces.draw(model, guide, args, kwargs)

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
        latent = traces.latent_sites(guide_trace)
        sites = _Sites(
            guide_trace,
            model_trace,
            latent,
            [s["name"] for s in latent if traces.is_discrete(s["fn"])],
            [s["name"] for s in latent if not traces.is_discrete(s["fn"]) and not s["fn"].has_rsample],
            [s for s in traces.latent_sites(model_trace) if s["name"] not in guide_trace.nodes],
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
        self._check_once(model, guide, args, kwargs)
        model, guide = self.wrap(model, guide)
        return self._loss_and_surrogate(model, guide, args, kwargs)

    def _check_once(self, model, guide, args, kwargs) -> None:
        key = (id(model), id(guide))
        if key not in self._checked:
            self.check(model, guide, *args, **kwargs)
            self._checked.add(key)

    def _particles(self, model, guide, args, kwargs) -> list:
        return [traces.draw(model, guide, args, kwargs) for _ in range(self.num_particles)]

    def _loss_and_surrogate(self, model, guide, args, kwargs) -> tuple[Tensor, Tensor]:
        """(loss, surrogate loss) of the wrapped pair: the loss's value, the surrogate's gradient."""
        particles = self._particles(model, guide, args, kwargs)
        elbos, surrogates = zip(*(self._particle(m, g) for m, g in particles))
        return -sum(elbos) / self.num_particles, -sum(surrogates) / self.num_particles

    def _particle(self, model_trace, guide_trace) -> tuple[Tensor, Tensor]:
        """(elbo, surrogate elbo) of one particle."""
        raise NotImplementedError
