"""The engine: one SVI loop for any Pyro model and guide, and what it stands on.

* :mod:`~pyro_vi.engine.loop`         ``fit``, ``PerStep``, ``EpochSubsample``, ``FitResult``
* :mod:`~pyro_vi.engine.checkpoint`   atomic, weights-only checkpoints and bit-exact resume
* :mod:`~pyro_vi.engine.compiled`     one step recorded once and replayed (``fit(..., compile=True)``)
* :mod:`~pyro_vi.engine.distributed`  torch.distributed: gradient all-reduce, agreed interrupts
* :mod:`~pyro_vi.engine.optim`        optimizers and learning-rate schedules by name
* :mod:`~pyro_vi.engine.params`       the param store as function inputs and back (the one place
  that reads Pyro's internals)
* :mod:`~pyro_vi.engine.rng`          save and restore every RNG (Python, NumPy, torch, CUDA)
"""

from pyro_vi.engine import checkpoint, compiled, distributed, loop, optim, params, rng
from pyro_vi.engine.loop import EpochSubsample, FitResult, PerStep, fit

__all__ = ["EpochSubsample", "FitResult", "PerStep", "fit"]
