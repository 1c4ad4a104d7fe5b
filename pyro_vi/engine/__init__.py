"""The engine: one SVI loop for any Pyro model and guide, and what it stands on.

* :mod:`~pyro_vi.engine.loop`         ``fit`` and ``FitResult``: the SVI loop
* :mod:`~pyro_vi.engine.many`         ``fit_many``: R independent runs as one ``vmap``-batched step
  (:mod:`~pyro_vi.engine.many_step` the step and taped noise, :mod:`~pyro_vi.engine.many_adam` Adam
  per run, :mod:`~pyro_vi.engine.many_sequential` one run after another where batching does not apply)
* :mod:`~pyro_vi.engine.step`         the step contract: SVI's step (the default), the update, the compile report
* :mod:`~pyro_vi.engine.posterior`    draws and a summary from a fitted guide (any model's plates), the
  convergence test of a run, the param trace
* :mod:`~pyro_vi.engine.arguments`    checks of ``fit``'s arguments, before any work
* :mod:`~pyro_vi.engine.subsample`    ``PerStep``, ``EpochSubsample``: per-step arguments, minibatches
* :mod:`~pyro_vi.engine.resume`       a resumed run: params restored as created, the warm-up
* :mod:`~pyro_vi.engine.checkpoint`   atomic, weights-only checkpoints; the one param-store restore
* :mod:`~pyro_vi.engine.checkpoint_format`  what a checkpoint file holds, and its check on load
* :mod:`~pyro_vi.engine.compile`      opt-in: the step recorded once and replayed (its own subpackage)
* :mod:`~pyro_vi.engine.distributed`  torch.distributed: gradient all-reduce, agreed interrupts
* :mod:`~pyro_vi.engine.optim`        one fused Adam over every parameter (a ``PyroOptim``)
* :mod:`~pyro_vi.engine.params`       the param store as function inputs and back (the one place
  that reads Pyro's internals)
* :mod:`~pyro_vi.engine.rng`          save and restore every RNG (Python, NumPy, torch, CUDA)
"""

from pyro_vi.engine import (  # noqa: F401 - the submodules, importable as attributes
    arguments, checkpoint, checkpoint_format, compile, distributed, loop, many, many_adam, many_sequential, many_step,
    optim, params, posterior, resume, rng, step, subsample,
)
from pyro_vi.engine.loop import FitResult, fit
from pyro_vi.engine.many import ManyResult, fit_many
from pyro_vi.engine.subsample import EpochSubsample, PerStep

__all__ = ["EpochSubsample", "FitResult", "ManyResult", "PerStep", "fit", "fit_many"]
