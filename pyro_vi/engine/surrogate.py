"""``Trace_ELBO``'s loss as a recordable tensor program, and its value as Pyro sums it.

``Trace_ELBO.loss_and_grads`` differentiates a surrogate (a tensor) but returns the loss summed
site by site as Python floats (``torch_item`` of each site's log-prob sum, in double precision).
:func:`surrogate_loss` is that surrogate for a reparameterized guide, written without reading a
tensor's value (so ``make_fx`` can record it) and listing the site terms;
:func:`trace_elbo_value` sums the terms as Pyro does, so a recorded step reports Pyro's loss bit
for bit.
"""

from __future__ import annotations

from typing import Callable, Sequence

from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

__all__ = ["surrogate_loss", "trace_elbo_value"]


def surrogate_loss(model: Callable, guide: Callable, args: Sequence, num_particles: int = 1,
                   terms: list | None = None) -> Tensor:
    """-ELBO of a reparameterized guide, summed as ``Trace_ELBO`` sums it (model sites, then guide).

    Its value is ``Trace_ELBO``'s loss and its gradient ``Trace_ELBO``'s, for guides whose sites all
    rsample; it reads no tensor value (no ``.item()``), so it can be recorded by ``make_fx``. With
    ``terms``, each site's ``(particle, sign, log_prob_sum)`` is appended to it: ``Trace_ELBO``
    returns the loss summed from those in double precision (:func:`trace_elbo_value`).
    """
    loss = 0.0
    for particle in range(num_particles):
        guide_trace = prune_subsample_sites(poutine.trace(guide).get_trace(*args))
        model_trace = prune_subsample_sites(poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args))
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        elbo = 0.0
        for sign, trace in ((1, model_trace), (-1, guide_trace)):
            for site in trace.nodes.values():
                if site["type"] == "sample":
                    elbo = elbo + site["log_prob_sum"] if sign > 0 else elbo - site["log_prob_sum"]
                    if terms is not None:
                        terms.append((particle, sign, site["log_prob_sum"]))
        loss = loss - elbo / num_particles
    return loss


def trace_elbo_value(layout: Sequence[tuple[int, int]], values: Sequence[Tensor], num_particles: int) -> float:
    """The loss ``Trace_ELBO.loss_and_grads`` returns, from the sites' log-prob sums (``layout``:
    each one's particle and sign, as :func:`surrogate_loss` lists them): added or subtracted as
    Python floats, particle by particle, in its order: the same double, bit for bit."""
    elbos = [0] * num_particles
    for (particle, sign), value in zip(layout, values):
        elbos[particle] = elbos[particle] + float(value) if sign > 0 else elbos[particle] - float(value)
    loss = 0.0
    for elbo in elbos:
        loss += -elbo / num_particles
    return loss
