"""Traces, sites and the per-particle surrogate the estimator families share.

One particle is a guide trace and the model replayed against it (:func:`draw`), with log-probs and
score parts computed. :func:`elbo_particle` turns it into (ELBO, surrogate ELBO) the way
``Trace_ELBO`` does: pathwise where a site can rsample, else the site's score function times the
detached log-ratio of the plates it lives in (:func:`log_ratio`). The families in
:mod:`~pyro_vi.estimators.pathwise` and :mod:`~pyro_vi.estimators.score` build on it; the site
predicates below are what ``check`` and the poutine handlers read.
"""

from __future__ import annotations

import pyro.distributions as dist
from pyro import poutine
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer.util import MultiFrameTensor, is_validation_enabled
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from pyro.util import check_model_guide_match
from torch import Tensor

from pyro_vi.engine import params

__all__ = [
    "draw",
    "latent_sites",
    "log_joint",
    "base_distribution",
    "is_discrete",
    "is_latent",
    "is_subsample",
    "with_handler",
    "elbo_particle",
    "log_ratio",
]


def draw(model, guide, args, kwargs):
    """One guide trace and the model replayed against it, with log-probs and score parts.

    Returns:
        ``(model_trace, guide_trace)``, subsample sites pruned; ``model_trace.subsample_sites``
        keeps them (dreg replays the model at the same minibatch).
    """
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    if is_validation_enabled():
        check_model_guide_match(model_trace, guide_trace)
    subsample_sites = {name: site for name, site in model_trace.nodes.items() if site["type"] == "sample" and is_subsample(site)}
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    model_trace.subsample_sites = subsample_sites
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()
    return model_trace, guide_trace


def is_subsample(site) -> bool:
    """Whether a sample site is a plate's subsample-index site (not a random variable): Pyro's
    ``site_is_subsample``."""
    return site_is_subsample(site)


def latent_sites(trace) -> list:
    """The latent sample sites of a trace (not observed, not a plate's subsample site)."""
    return [
        s for s in trace.nodes.values()
        if s["type"] == "sample" and not s["is_observed"] and isinstance(s["fn"], dist.Distribution) and not is_subsample(s)
    ]


def log_joint(trace) -> Tensor:
    """The sum of every sample site's (scaled, masked) log-prob in a trace with log-probs."""
    return sum(site["log_prob_sum"] for site in trace.nodes.values() if site["type"] == "sample")


def base_distribution(fn):
    """The distribution under ``Independent`` / ``Masked`` / ``Expanded`` wrappers."""
    while isinstance(fn, (dist.Independent, dist.MaskedDistribution, dist.ExpandedDistribution)):
        fn = fn.base_dist
    return fn


def is_discrete(fn) -> bool:
    """Whether a distribution has discrete support (or enumerable support)."""
    return bool(getattr(fn, "has_enumerate_support", False)) or fn.support.is_discrete


def is_latent(msg) -> bool:
    """Whether a handler's sample message is a latent the estimator samples (not observed, not a
    subsample site, not marked for enumeration)."""
    return (
        msg["type"] == "sample"
        and not msg["is_observed"]
        and isinstance(msg["fn"], dist.Distribution)
        and not site_is_subsample(msg)
        and msg["infer"].get("enumerate") is None
    )


def with_handler(guide, make_handler):
    """``guide`` run under a fresh ``make_handler()`` messenger, whose ``register()`` is called after
    each run (to put what the handler built, e.g. baseline networks, in the param store)."""

    def handled(*args, **kwargs):
        with make_handler() as handler:
            result = guide(*args, **kwargs)
        handler.register()
        return result

    handled.__name__ = getattr(guide, "__name__", "guide")
    return handled


def elbo_particle(model_trace, guide_trace, sticking_the_landing: bool = False, naive: bool = False) -> tuple[Tensor, Tensor]:
    """(elbo, surrogate elbo) of one particle.

    Pathwise where a site can rsample, else the score function times the site's plate-level
    log-ratio (``naive``: the whole log-ratio). ``sticking_the_landing``: q's parameters detached
    inside log q, so only the path through z remains.
    """
    log_p = log_joint(model_trace)
    elbo = log_p - log_joint(guide_trace)
    surrogate = log_p
    ratio = None
    for site in guide_trace.nodes.values():
        if site["type"] != "sample":
            continue
        _, score_function, entropy_term = site["score_parts"]
        if not is_identically_zero(entropy_term):
            surrogate = surrogate - entropy_term.sum()
            if sticking_the_landing and not isinstance(base_distribution(site["fn"]), dist.Delta):
                # Sticking the landing: add back d/dphi log q_phi(z) at fixed z, which cancels the
                # direct (score) part of -log q and leaves only the path through z.
                log_q_fixed_z = scale_and_mask(site["fn"].log_prob(site["value"].detach()), site["scale"], site["mask"]).sum()
                surrogate = surrogate + log_q_fixed_z
        if not is_identically_zero(score_function):
            if naive:  # whole log-ratio times the score, no Rao-Blackwellization
                surrogate = surrogate + elbo.detach() * score_function.sum()
            else:  # Trace_ELBO: each site's score times the log-ratio of the plates it lives in
                ratio = log_ratio(model_trace, guide_trace) if ratio is None else ratio
                surrogate = surrogate + (ratio.sum_to(site["cond_indep_stack"]) * score_function).sum()
    return elbo, surrogate


def log_ratio(model_trace, guide_trace) -> MultiFrameTensor:
    """Detached log p - log q per plate, as Trace_ELBO's, plus -log q of the guide sites the model
    lacks (an AutoGuide's auxiliary latent): without them the score of such a site would miss its
    entropy term."""
    ratio = params.compute_log_r(model_trace, guide_trace)
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample" and name not in model_trace.nodes:
            stack = frozenset(site["cond_indep_stack"])
            ratio.add((stack, -site["log_prob"].detach()))
    return ratio
