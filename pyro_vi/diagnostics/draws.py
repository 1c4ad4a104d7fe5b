"""Draws z_s ~ q from a guide and their importance log weights log w_s = log p(x, z_s) - log q(z_s).

Any Pyro model/guide pair (plates, AutoGuides, ``pyro.deterministic`` sites): the guide is traced,
the model replayed on its draws (``poutine.trace``, ``poutine.replay``) and every sample site's log
density summed. The draws are vectorized where the model broadcasts: the whole pair runs under an
outer ``pyro.plate("check_particles", chunk)`` left of the model's plates (as Pyro's
``vectorize_particles``), and the first draw is recomputed one-by-one to confirm the vectorized
numbers; a model that does not broadcast (or disagrees) falls back to a loop, one draw at a time.

What cannot be importance-weighted is refused in one line (``ConfigError``): enumerated discrete
sites (marginalize them in the model instead), latent sites the guide does not sample, and
subsampled or scaled sites (the weights would be those of another model).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from pyro_vi.engine import params
from pyro_vi.errors import ConfigError

__all__ = ["Draws", "draw", "site_shapes"]

_PARTICLES = "check_particles"
_CHUNK_ELEMENTS = 4_000_000  # log-density elements per vectorized chunk (memory ~ this x a few tensors)


class Draws(NamedTuple):
    """``num_samples`` draws from the guide and their log importance weights (float64, on the CPU)."""

    log_weights: Tensor  # (num_samples,): log p(x, z_s) - log q(z_s)
    values: dict  # site name -> (num_samples, *shape): the model's latent and deterministic sites
    vectorized: bool  # drawn under a particle plate (False: one draw at a time)


def site_shapes(model_trace) -> dict[str, tuple]:
    """The model's latent sites and ``pyro.deterministic`` sites (name -> shape of one draw), in order."""
    return {name: tuple(site["value"].shape) for name, site in model_trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site) and not params.is_hidden(site)
            and (not site["is_observed"] or site["infer"].get("_deterministic"))}


def draw(model: Callable, guide: Callable, args: tuple, kwargs: dict, num_samples: int,
         vectorize: bool | None = None) -> Draws:
    """Draw ``num_samples`` times from ``guide`` and weight each draw by ``model`` (no gradients).

    Args:
        vectorize: None tries a particle plate and falls back to a loop; True insists (a model
            that does not broadcast is a ``ConfigError``); False always loops.

    Raises:
        ConfigError: enumerated, subsampled or scaled sites, or latent sites the guide does not sample.
    """
    with torch.no_grad():
        guide_trace, model_trace = _traces(model, guide, args, kwargs)
        _refuse_what_cannot_be_weighted(guide_trace, model_trace)
        shapes = site_shapes(model_trace)
        if vectorize is not False:
            try:
                return _vectorized(model, guide, args, kwargs, num_samples, shapes, guide_trace, model_trace)
            except _NotVectorizable as reason:
                if vectorize:
                    raise ConfigError(f"the model does not run vectorized ({reason}); pass vectorize=False") from None
        return _loop(model, guide, args, kwargs, num_samples, shapes)


class _NotVectorizable(Exception):
    pass


def _traces(model, guide, args, kwargs, guide_trace=None):
    guided = guide if guide_trace is None else poutine.replay(guide, trace=guide_trace)
    guide_trace = poutine.trace(guided).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return guide_trace, model_trace


def _sample_sites(trace):
    return [(name, site) for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site) and not params.is_hidden(site)]


def _refuse_what_cannot_be_weighted(guide_trace, model_trace) -> None:
    for role, trace in (("model", model_trace), ("guide", guide_trace)):
        for name, site in _sample_sites(trace):
            if site["infer"].get("enumerate"):
                raise ConfigError(f"the {role}'s site {name!r} is enumerated; importance weights need every latent "
                                  "site drawn by the guide: marginalize it in the model (e.g. a mixture distribution)")
            scale = site["scale"]
            if not (isinstance(scale, (int, float)) and scale == 1.0):
                raise ConfigError(f"the {role}'s site {name!r} is subsampled or scaled (poutine.scale); the weights "
                                  "need the whole model: pass all the data and no scale")
    guided = {name for name, site in _sample_sites(guide_trace)}
    for name, site in _sample_sites(model_trace):
        if not site["is_observed"] and name not in guided:
            raise ConfigError(f"the model's latent site {name!r} is not sampled by the guide; a guide for the "
                              "check must draw every latent site")


def _log_density(trace, particle_dim: int | None) -> Tensor:
    """Sum of every sample site's (masked) log density: a scalar, or (particles,) at ``particle_dim``."""
    trace.compute_log_prob()
    total = torch.zeros((), dtype=torch.float64)
    for _, site in _sample_sites(trace):
        log_prob = site["log_prob"].to(torch.float64)
        if particle_dim is None:
            total = total + log_prob.sum()
            continue
        position = log_prob.dim() + particle_dim
        if position < 0:  # the site does not depend on the particle: the same for every draw
            total = total + log_prob.sum()
        else:
            total = total + log_prob.movedim(position, 0).reshape(log_prob.shape[position], -1).sum(-1)
    return total


def _plate_nesting(*traces) -> int:
    dims = [-frame.dim for trace in traces for _, site in _sample_sites(trace)
            for frame in site["cond_indep_stack"] if frame.vectorized]
    return max(dims, default=0)


def _particle_values(site, particle_dim: int, count: int, shape: tuple) -> Tensor:
    """A site's vectorized value as (count, *shape)."""
    value = site["value"]
    position = value.dim() - site["fn"].event_dim + particle_dim  # a replayed site's fn is not broadcast: read the value
    if position >= 0 and value.dim() > position and value.shape[position] == count:
        value = value.movedim(position, 0).reshape(count, -1)
    else:  # not drawn per particle: the same value for all
        value = value.reshape(1, -1).expand(count, -1)
    if value.shape[1] != math.prod(shape):
        raise _NotVectorizable(f"site {site['name']!r} has {value.shape[1]} values per draw, expected {math.prod(shape)}")
    return value.reshape(count, *shape)


def _vectorized(model, guide, args, kwargs, num_samples, shapes, guide_trace, model_trace) -> Draws:
    particle_dim = -_plate_nesting(guide_trace, model_trace) - 1
    per_draw = sum(site["fn"].batch_shape.numel() + site["value"].numel() for trace in (guide_trace, model_trace)
                   for _, site in _sample_sites(trace))
    chunk = max(1, min(num_samples, _CHUNK_ELEMENTS // max(per_draw, 1)))
    log_weights, values = [], {name: [] for name in shapes}
    for start in range(0, num_samples, chunk):
        count = min(chunk, num_samples - start)
        try:
            with pyro.plate(_PARTICLES, count, dim=particle_dim):
                vector_guide, vector_model = _traces(model, guide, args, kwargs)
            weights = _log_density(vector_model, particle_dim) - _log_density(vector_guide, particle_dim)
            if weights.shape != (count,):
                raise _NotVectorizable(f"log weights of shape {tuple(weights.shape)} for {count} draws")
            for name, shape in shapes.items():
                values[name].append(_particle_values(vector_model.nodes[name], particle_dim, count, shape))
            if start == 0:
                _confirm_first_draw(model, guide, args, kwargs, guide_trace, vector_guide, particle_dim, count, weights[0])
        except _NotVectorizable:
            raise
        except Exception as error:  # noqa: BLE001 - any failure under the particle plate means: loop instead
            raise _NotVectorizable(f"{type(error).__name__}: {' '.join(str(error).split())[:200]}") from None
        log_weights.append(weights)
    return Draws(torch.cat(log_weights).cpu(), {name: torch.cat(parts).cpu() for name, parts in values.items()}, True)


def _confirm_first_draw(model, guide, args, kwargs, guide_trace, vector_guide, particle_dim, count, weight) -> None:
    """Replay the vectorized guide's first draw without the particle plate: the same log weight."""
    single = guide_trace.copy()
    for name, site in _sample_sites(guide_trace):
        value = _particle_values(vector_guide.nodes[name], particle_dim, count, tuple(site["value"].shape))[0]
        single.nodes[name] = dict(site, value=value)
    replayed_guide, replayed_model = _traces(model, guide, args, kwargs, guide_trace=single)
    model_density, guide_density = _log_density(replayed_model, None), _log_density(replayed_guide, None)
    expected = model_density - guide_density
    # Float rounding of sums over many terms, relative to their size (a model that does not broadcast is off by far more).
    tolerance = 1e-4 * (float(model_density.abs()) + float(guide_density.abs())) + 1e-6
    if not abs(float(weight) - float(expected)) <= tolerance:
        raise _NotVectorizable(f"the first draw's log weight is {float(weight):.6g} vectorized, {float(expected):.6g} alone")


def _loop(model, guide, args, kwargs, num_samples, shapes) -> Draws:
    log_weights = torch.empty(num_samples, dtype=torch.float64)
    values = {name: [] for name in shapes}
    for index in range(num_samples):
        guide_trace, model_trace = _traces(model, guide, args, kwargs)
        log_weights[index] = _log_density(model_trace, None) - _log_density(guide_trace, None)
        for name, shape in shapes.items():
            values[name].append(model_trace.nodes[name]["value"].reshape(shape).cpu())
    return Draws(log_weights, {name: torch.stack(parts) for name, parts in values.items()}, False)
