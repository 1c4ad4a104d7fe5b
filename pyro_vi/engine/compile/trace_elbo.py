"""``Trace_ELBO``'s loss as a recordable tensor program, and its value as Pyro sums it.

``Trace_ELBO.loss_and_grads`` differentiates a surrogate (a tensor) but returns the loss summed
site by site as Python floats (``torch_item`` of each site's log-prob sum, in double precision).
:func:`surrogate_loss` is that surrogate for a reparameterized guide, written without reading a
tensor's value (so ``make_fx`` can record it) and listing the site terms;
:func:`trace_elbo_value` sums the terms as Pyro does, so a recorded step reports Pyro's loss bit
for bit. :func:`tracegraph_loss` is ``TraceGraph_ELBO``'s loss and surrogate as one tensor.
"""

from __future__ import annotations

from typing import Callable, Sequence

from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from pyro_vi.engine import params
from pyro_vi.errors import ConfigError

__all__ = ["surrogate_loss", "trace_elbo_value", "tracegraph_loss"]


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


def tracegraph_loss(elbo, model: Callable, guide: Callable, *args) -> Tensor:
    """``TraceGraph_ELBO``'s step as one tensor (the differentiable loss Pyro's class lacks): its value
    is the loss ``elbo.loss_and_grads`` returns (minus the float32 ELBO it sums, read as a float),
    its gradient that of Pyro's surrogate, from the same traces and the same arithmetic.

    A decaying-average baseline is refused: it is state each step rewrites in the param store, which
    a recorded program would freeze (baseline networks and values are tensor operations, recorded).
    """
    elbo_value, surrogate = 0.0, 0.0
    for model_trace, guide_trace in params.tracegraph_particles(elbo, model, guide, args, {}):
        for site in guide_trace.nodes.values():
            if site["type"] == "sample" and (site["infer"].get("baseline") or {}).get("use_decaying_avg_baseline"):
                raise ConfigError(
                    f"TraceGraph_ELBO's decaying-average baseline at site {site['name']!r} is a running average the step rewrites in "
                    "the param store, which a recorded program would freeze; drop --compile"
                )
        particle_elbo, particle_surrogate = params.tracegraph_particle_loss(elbo, model_trace, guide_trace)
        elbo_value = elbo_value + particle_elbo
        surrogate = surrogate + particle_surrogate
    elbo_value = elbo_value / elbo.num_particles
    surrogate = surrogate / elbo.num_particles
    return (-elbo_value).detach() + (surrogate - surrogate.detach())
