"""Opt-in speed that changes what runs: the step recorded once and replayed as a tensor program.

``fit`` runs SVI's step by default (:mod:`pyro_vi.engine.step`); ``fit(..., compile=True)`` (or
``"inductor"``, or the built-in families' ``"auto"``) replaces it by a recorded program, whose contract
is ``jax.jit``'s: the model's and guide's Python runs when the step is recorded, and a replay repeats
the tensor operations only. Read in this order:

* :mod:`~pyro_vi.engine.compile.policy`        when a recorded step runs, its audits and its report
* :mod:`~pyro_vi.engine.compile.record`        one step recorded once and replayed
* :mod:`~pyro_vi.engine.compile.graph_passes`  passes over a recorded program: simplify, joint (loss + backward)
* :mod:`~pyro_vi.engine.compile.trace_elbo`    ``Trace_ELBO``'s loss as a recordable program, its value as Pyro sums it
* :mod:`~pyro_vi.engine.compile.samplers`      traceable Beta/Dirichlet/Gamma draws for recording
* :mod:`~pyro_vi.engine.compile.whole_step`    ``"inductor"`` with plain Adam: loss, gradients and update as one program
"""

from pyro_vi.engine.compile.policy import RecordedStep

__all__ = ["RecordedStep"]
