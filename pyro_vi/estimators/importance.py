"""Importance sampling with the guide as proposal: log p(x) estimates and the IWAE objective.

For any Pyro model/guide pair, draw z_1..k ~ q(z | x) and weight them by w_s = p(x, z_s) / q(z_s | x).
Then

    log p(x) >= L_k = E[log (1/k) sum_s w_s]      (Burda et al. 2016),

L_1 is the ELBO, L_k is non-decreasing in k and tends to log p(x); when q is the exact posterior
every w_s equals p(x), so L_k = log p(x) for every k with zero variance.

With ``plate_name="data"`` the weights are formed per datapoint (every latent and observed site
must sit inside that plate, as in a VAE), giving one estimate per datapoint; without it the whole
data set is one observation (a global latent, as in the conjugate models).

Particles are vectorized with an outer ``pyro.plate("particles", chunk_size)`` left of the model's
plates, and the k samples are processed ``chunk_size`` at a time with a running logsumexp, so
memory is O(chunk_size x batch), not O(k x batch): k = 5000 fits on a laptop.

As a training objective, use ``pyro_vi.get_estimator("iwae", num_particles=k)`` (or ``"dreg"``):
the per-datapoint bound, times ``N/|B|`` under a minibatch, with ``poutine.scale`` factors inside the
weights. Not ``pyro.infer.RenyiELBO(alpha=0)``: it scales each log weight by ``N/|B|`` before the
logsumexp, so each datapoint contributes ``log mean_i w_i^(N/|B|)`` and the weights turn one-hot.

Scale factors (subsampling, ``poutine.scale`` KL weights) are ignored: the weights use the unscaled
log densities, so the estimate is of the model as written, for the datapoints passed.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch import Tensor

__all__ = ["ImportanceEstimate", "importance_estimate", "log_weights", "plate_nesting"]


class ImportanceEstimate(NamedTuple):
    """Result of ``importance_estimate``; tensors are scalars or ``(batch,)`` per datapoint."""

    log_marginal: Tensor  # log (1/k) sum_s w_s: the IWAE bound L_k, in nats
    effective_sample_size: Tensor  # (sum_s w_s)^2 / sum_s w_s^2, between 1 and k
    num_samples: int


def importance_estimate(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1000,
    chunk_size: int = 500,
    plate_name: str | None = None,
    **kwargs,
) -> ImportanceEstimate:
    """Estimate log p(x) by importance sampling with the guide as proposal (no gradients).

    Args:
        model, guide: a Pyro model and guide taking ``*args, **kwargs``.
        num_samples: k, the number of proposals per datapoint.
        chunk_size: how many proposals to vectorize at once (memory ~ chunk_size x batch).
        plate_name: give the data plate's name for one estimate per datapoint.

    Returns:
        ``ImportanceEstimate`` with the log marginal estimate L_k and the effective sample size.
    """
    if num_samples < 1 or chunk_size < 1:
        raise ValueError(f"num_samples and chunk_size must be >= 1, got {num_samples} and {chunk_size}")
    max_plate_nesting = plate_nesting(model, guide, args, kwargs)
    log_sum = log_sum_squares = None
    with torch.no_grad():
        for start in range(0, num_samples, chunk_size):
            chunk = min(chunk_size, num_samples - start)
            weights = log_weights(
                model, guide, *args, num_particles=chunk, plate_name=plate_name,
                max_plate_nesting=max_plate_nesting, **kwargs,
            )  # (chunk,) or (chunk, batch)
            chunk_sum, chunk_sum_squares = weights.logsumexp(0), (2 * weights).logsumexp(0)
            if log_sum is None:
                log_sum, log_sum_squares = chunk_sum, chunk_sum_squares
            else:
                log_sum = torch.logaddexp(log_sum, chunk_sum)
                log_sum_squares = torch.logaddexp(log_sum_squares, chunk_sum_squares)
    return ImportanceEstimate(
        log_marginal=log_sum - math.log(num_samples),
        effective_sample_size=(2 * log_sum - log_sum_squares).exp(),
        num_samples=num_samples,
    )


def log_weights(
    model: Callable,
    guide: Callable,
    *args,
    num_particles: int,
    plate_name: str | None = None,
    max_plate_nesting: int | None = None,
    **kwargs,
) -> Tensor:
    """log w_s = log p(x, z_s) - log q(z_s | x) for ``num_particles`` vectorized draws z_s ~ q.

    Differentiable (reparameterized guides give pathwise gradients). Returns shape
    ``(num_particles,)``, or ``(num_particles, batch)`` with ``plate_name``.
    """
    return _weights_and_guide_trace(model, guide, args, kwargs, num_particles, plate_name, max_plate_nesting)[0]


def _weights_and_guide_trace(model, guide, args, kwargs, num_particles, plate_name, max_plate_nesting):
    if max_plate_nesting is None:
        max_plate_nesting = plate_nesting(model, guide, args, kwargs)
    particle_dim = -max_plate_nesting - 1
    with pyro.plate("particles", num_particles, dim=particle_dim):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    model_terms = _sum_log_probs(model_trace, particle_dim, plate_name)
    guide_terms = _sum_log_probs(guide_trace, particle_dim, plate_name)
    return model_terms - guide_terms, guide_trace


# ----------------------------------------------------------------------------------------------


def plate_nesting(model, guide, args, kwargs) -> int:
    """How many batch dims the model and guide's plates use (run once, unvectorized)."""
    with poutine.block(), torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    dims = [
        -frame.dim
        for trace in (guide_trace, model_trace)
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return max(dims, default=0)


def _sum_log_probs(trace, particle_dim: int, plate_name: str | None) -> Tensor:
    """Sum unscaled (but masked) log densities of all sample sites down to (particles[, batch])."""
    total = 0.0
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or site["mask"] is False:
            continue
        log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
        if isinstance(site["mask"], Tensor):
            log_prob = torch.where(site["mask"], log_prob, log_prob.new_zeros(()))
        # Left-pad to (particles, plates...), then sum every dim but particles (and data).
        width = -particle_dim
        log_prob = log_prob.reshape((1,) * (width - log_prob.dim()) + log_prob.shape)
        if plate_name is None:
            reduced = log_prob.reshape(log_prob.shape[0], -1).sum(-1)
        else:
            data_dim = _plate_dim(site, plate_name, name)
            kept = {width + particle_dim, width + data_dim}  # positive indices
            summed = [d for d in range(width) if d not in kept]
            reduced = log_prob.sum(summed, keepdim=True) if summed else log_prob
            reduced = reduced.reshape(reduced.shape[width + particle_dim], reduced.shape[width + data_dim])
        total = total + reduced
    return total



def _plate_dim(site, plate_name: str, site_name: str) -> int:
    for frame in site["cond_indep_stack"]:
        if frame.name == plate_name:
            if not frame.vectorized:
                raise ValueError(f"plate {plate_name!r} must be vectorized (pyro.plate used as a context manager)")
            return frame.dim
    raise ValueError(
        f"site {site_name!r} is outside plate {plate_name!r}, so log p(x) does not factorize per datapoint; "
        "pass plate_name=None for one estimate over the whole data set"
    )
