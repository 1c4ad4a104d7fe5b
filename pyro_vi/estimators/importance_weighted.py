"""The k-particle importance-weighted bound (Burda et al. 2016) and its gradients: ``iwae`` and ``dreg``.

L_k = E[log (1/k) sum_i w_i], w_i = p(x, z_i) / q(z_i | x), z_1..k ~ q: L_1 is the ELBO and L_k
tends to log p(x). ``iwae`` differentiates a sample of L_k pathwise; ``dreg`` (Tucker et al. 2019)
rewrites the score part of the guide parameters' gradient as a second pathwise term (weights w_i^2),
whose variance vanishes at the exact posterior.

Scales. Subsampling (``N/|B|``) and ``poutine.scale`` (a KL weight beta) enter every ELBO estimator
through the sites' log-probs, as in Pyro. For iwae and dreg the subsampling scale of the plates
every site lives in multiplies each datapoint's bound, and every other scale multiplies its site's
log density inside the weight (log w = log p(x | z) + beta (log p(z) - log q(z))), so k = 1 gives
the scaled ELBO; with a latent outside a subsampled plate (a global latent) and k > 1 no minibatch
bound estimates the full-data bound, and ``check`` refuses. Without subsampling a global latent's
bound is that of the whole data set, computed exactly.

Log p(x) estimates by importance sampling (no gradients) are in :mod:`pyro_vi.estimators.importance`.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import MultiFrameTensor
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from pyro_vi.errors import ConfigError
from pyro_vi.estimators import importance, traces
from pyro_vi.estimators.base import GradientEstimator

__all__ = ["ImportanceWeighted", "DoublyReparameterized"]


class ImportanceWeighted(GradientEstimator, name="iwae"):
    """iwae: the reparameterized gradient of the k-particle importance-weighted bound; see
    ``_importance_weighted``."""

    pathwise = True
    doubly_reparameterized = False

    def __init__(self, num_particles: int = 1, vectorize_particles: bool = False,
                 max_plate_nesting: float = float("inf")):
        """``vectorize_particles``: draw the k particles at once under a plate left of the pair's
        plates (as RenyiELBO's option; the model must broadcast over that dim)."""
        super().__init__(num_particles, max_plate_nesting)
        self.vectorize_particles = bool(vectorize_particles)
        self._particle_dims = {}  # (id(model), id(guide)) -> the particles plate's dim

    def check(self, model, guide, *args, **kwargs) -> None:
        """As :meth:`GradientEstimator.check`, then (``vectorize_particles``) find the particles dim."""
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
        if not self.doubly_reparameterized:
            return
        point_masses = [s["name"] for s in sites.latent if isinstance(traces.base_distribution(s["fn"]), dist.Delta)]
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
        dreg = self.doubly_reparameterized
        if not (self.vectorize_particles and self.num_particles > 1):
            particles = self._particles(model, guide, args, kwargs)
            return _importance_weighted(particles, doubly_reparameterized=dreg, model=model, args=args, kwargs=kwargs)
        # One draw of all k particles: a plate left of every plate of the pair.
        dim = self._particle_dims.get((id(model), id(guide)))
        if dim is None:
            dim = self._particle_dims[(id(model), id(guide))] = _particle_dim(model, guide, args, kwargs)
        model, guide = (_in_plate(fn, "_particles", self.num_particles, dim) for fn in (model, guide))
        particles = [traces.draw(model, guide, args, kwargs)]
        return _importance_weighted(particles, doubly_reparameterized=dreg, model=model, args=args, kwargs=kwargs, particle_dim=dim)


class DoublyReparameterized(ImportanceWeighted, name="dreg"):
    """dreg: the doubly reparameterized gradient (Tucker et al. 2019) of the same bound: the score
    part of the guide parameters' gradient rewritten as a second pathwise term."""

    doubly_reparameterized = True


def _particle_dim(model, guide, args, kwargs) -> int:
    """The plate dim left of every vectorized plate the pair uses."""
    return -1 - importance.plate_nesting(model, guide, args, kwargs)


def _in_plate(fn, name: str, size: int, dim: int):
    def plated(*args, **kwargs):
        with pyro.plate(name, size, dim=dim):
            return fn(*args, **kwargs)

    plated.__name__ = getattr(fn, "__name__", "fn")
    return plated


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
    scales = {_scale_key(site["scale"]) for site in traces.latent_sites(guide_trace)}
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
    for site in traces.latent_sites(guide_trace) + observed:
        missing = subsampled - {frame.name for frame in site["cond_indep_stack"]}
        if missing:
            return site["name"], sorted(missing)[0]
    return None


def _scale_key(scale):
    """A hashable form of a site's scale (a number or a tensor)."""
    if isinstance(scale, Tensor):
        return tuple(scale.detach().reshape(-1).tolist()) if scale.numel() > 1 else float(scale)
    return float(scale)


def _common_frames(all_traces) -> frozenset:
    """The vectorized plates that every sample site of every trace lives in."""
    stacks = [
        frozenset(frame for frame in site["cond_indep_stack"] if frame.vectorized)
        for trace in all_traces
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
        if site["type"] != "sample" or (fixed_value and (site["is_observed"] or isinstance(traces.base_distribution(site["fn"]), dist.Delta))):
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
