"""The step contract: one SVI step, as ``pyro.infer.SVI.step`` takes it, and what every step returns.

``fit``'s loop makes one call per step, ``step(args, kwargs) -> StepResult``, and never reads a
step's internals. Every way of taking a step returns the same :class:`StepResult` and applies its
update through the same :class:`Update` (the NaN/inf check, SVI's zero gradients, the optimizer):

* :class:`PlainStep` (the default) is ``SVI.step`` spelled out, bit for bit on CPU::

      with poutine.trace(param_only=True) as capture:
          loss = elbo.loss_and_grads(model, guide, *args, **kwargs)
      params = the params the step read            # every param, whether or not it got a gradient
      optim(params); zero_grads(params)

  Pyro zeroes the gradients of the params a step read instead of dropping them, so a param read
  in a later step without a gradient (a branch not taken, a ``detach``) still gets an Adam step
  with a zero gradient, its momentum carried on. ``Update`` keeps that rule (without SVI's
  per-step allocation of zero tensors: a param that once had a gradient is given a zero one when
  it has none).
* the recorded steps of ``compile=True | "inductor" | "auto"`` (:mod:`pyro_vi.engine.compile`, imported
  here only) replay a recorded program; they fall back to a :class:`PlainStep` and report why.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import pyro
import torch
from pyro import poutine
from pyro.ops.provenance import ProvenanceTensor, detach_provenance
from torch import Tensor

from pyro_vi.engine import optim as pyro_vi_optim
from pyro_vi.engine import resume as resuming
from pyro_vi.engine.subsample import explain_plate_mismatch

__all__ = ["CompileReport", "PlainStep", "StepResult", "Update", "compile_refusal", "make_step", "reads_only"]

_HAD_GRAD = "_pyro_vi_had_grad"  # set on a param tensor once it has had a gradient at an update


class StepResult(NamedTuple):
    """What one step did.

    Attributes:
        loss: the step's loss, or ``None`` when the loss or a gradient was not finite (no update made).
        params: the params the step read (and stepped, unless ``loss`` is ``None``), in trace order.
        compiled: the step was taken by a recorded program.
    """

    loss: float | None
    params: tuple
    compiled: bool = False


class CompileReport(NamedTuple):
    """How a ``fit`` call's steps were taken.

    Attributes:
        mode: the ``compile`` argument (``False``: every step plain).
        compiled_steps: steps taken by a recorded program.
        plain_steps: steps taken plain (the first one, audits that failed, guards that differed,
            argument signatures without a program, and every step after recording stopped).
        fallbacks: why steps fell back to the plain step, each reason once, in order.
        compile_seconds: time spent recording and compiling (one-off).
    """

    mode: bool | str = False
    compiled_steps: int = 0
    plain_steps: int = 0
    fallbacks: tuple = ()
    compile_seconds: float = 0.0

    def __str__(self) -> str:
        if self.mode is False:
            return f"{self.plain_steps} plain steps (compile off)"
        text = f"compile={self.mode!r}: {self.compiled_steps} steps compiled, {self.plain_steps} plain"
        if self.compile_seconds:
            text += f", {self.compile_seconds:.2f} s recording"
        return text + "".join(f"; fell back: {reason}" for reason in self.fallbacks)


class Update:
    """The one place a step's update is applied, for every kind of step.

    ``update(params, value, finite=None)``: unless the loss ``value`` or a gradient is not finite,
    step the optimizer on ``params`` (a param without a gradient that had one before gets a zero
    gradient, as under SVI's ``zero_grads``; one that never had one is left alone, as torch's
    optimizers leave it), then drop the gradients. Returns the loss, or ``None`` for a skipped update.

    Args:
        optim: a Pyro optimizer.
        reduce: a data-parallel ``reduce(loss, grads) -> loss`` averaging the gradients over ranks
            before the check (``pyro_vi.engine.distributed``), or ``None``.
    """

    def __init__(self, optim, reduce: Callable | None = None):
        self.optim, self.reduce = optim, reduce

    def __call__(self, params: Sequence[Tensor], value, finite: bool | None = None) -> float | None:
        for p in params:
            if p.grad is None:
                if getattr(p, _HAD_GRAD, False):
                    p.grad = torch.zeros_like(p)  # SVI's zero_grads left a zero gradient on it
            elif not getattr(p, _HAD_GRAD, False):
                setattr(p, _HAD_GRAD, True)
        grads = [p.grad for p in params if p.grad is not None]
        value = float(value)
        if self.reduce is not None:
            value, finite = self.reduce(value, grads), None  # averaged over ranks: check the averages
        if finite is None:
            finite = math.isfinite(value) and (not grads or bool(torch.isfinite(torch.stack([g.sum() for g in grads]).sum())))
        stepped = [p for p in params if p.grad is not None]
        if finite and stepped and not pyro_vi_optim.pyro_adam_step(self.optim, stepped):
            self.optim(stepped)
        for p in params:  # dropped, not zeroed: the next backward writes instead of adding
            p.grad = None
        return value if finite else None


class PlainStep:
    """``SVI.step``'s semantics: the loss's ``loss_and_grads`` under a param trace, then the update.

    ``step(args, kwargs, first=False, restorer=None) -> StepResult``. ``first``: Pyro's validation is
    on (as configured) and a plate error is explained; ``restorer``: the resume's in-place restore
    (:class:`pyro_vi.engine.resume.Restore`), active on a resumed run's first step.
    """

    compiled = False

    def __init__(self, model: Callable, guide: Callable, loss, update: Update):
        self.model, self.guide, self.loss, self.update = model, guide, loss, update
        self.validate = pyro.infer.is_validation_enabled()  # Pyro's checks on each call's first step only

    def __call__(self, args: Sequence, kwargs: dict, first: bool = False, restorer=None) -> StepResult:
        params, value = self.loss_and_grads(args, kwargs, first, restorer)
        return StepResult(self.update(params, value), tuple(params))

    def loss_and_grads(self, args: Sequence, kwargs: dict, first: bool = False, restorer=None) -> tuple[list, float]:
        """The params the loss read (trace order) and its value, gradients in their ``.grad``."""
        with pyro.validation_enabled(self.validate and first), poutine.trace(param_only=True) as capture:
            try:
                if restorer is not None:
                    with restorer:
                        value = self.loss.loss_and_grads(self.model, self.guide, *args, **kwargs)
                else:
                    value = self.loss.loss_and_grads(self.model, self.guide, *args, **kwargs)
            except ValueError as error:
                if first:
                    explain_plate_mismatch(error, self.model, args, kwargs)
                raise
        nodes = capture.trace.nodes
        if restorer is not None and restorer.active:
            resuming.refuse_missing(restorer, nodes)
        _untrack_provenance(nodes)
        # In trace order (a set's order differs between processes, and the all-reduce packs by order).
        return list(dict.fromkeys(site["value"].unconstrained() for site in nodes.values())), value


def reads_only(callback: Callable) -> Callable:
    """Mark ``callback`` as one that changes nothing the model or guide reads (it logs, evaluates,
    checkpoints or stops early): ``compile="auto"`` then records runs using it. Returns ``callback`` itself."""
    callback._pyro_vi_reads_only = True
    return callback


def compile_refusal(model: Callable | None, guide: Callable | None, args: Sequence, loss) -> str | None:
    """Why ``compile`` cannot record this loss (one line), or ``None``: what the loss's class says,
    without recording (:func:`pyro_vi.engine.compile.record.can_compile`)."""
    from pyro_vi.engine.compile.record import can_compile

    return can_compile(model, guide, args, loss)


def make_step(model: Callable, guide: Callable, loss, optim, mode: bool | str | None, *, steps_left: int,
              callback: Callable | None = None, kwargs: dict | None = None, data_parallel=None):
    """The step ``fit`` takes: a :class:`PlainStep` for ``mode`` ``None`` or ``False`` (SVI's
    semantics), else a recorded step built on one (:class:`pyro_vi.engine.compile.RecordedStep`)."""
    update = Update(optim, None if data_parallel is None else data_parallel.reduce)
    plain = PlainStep(model, guide, loss, update)
    if mode is None or mode is False:
        return plain
    from pyro_vi.engine.compile import RecordedStep

    return RecordedStep(plain, mode, steps_left=steps_left, callback=callback, kwargs=kwargs, data_parallel=data_parallel)


def _untrack_provenance(names) -> None:
    """Store plain tensors where the loss stored provenance-tracking ones.

    Pyro's ``TraceGraph_ELBO`` writes its decaying-average baselines into the param store at every
    step as ``ProvenanceTensor``s (a tensor subclass whose every operation runs Python bookkeeping):
    left there, each later step gets slower (measured on the coin: 3x) and the optimizer meets a new
    tensor object every step."""
    store = pyro.get_param_store()
    for name in names:
        if name in store and isinstance(store.get_param(name).unconstrained(), ProvenanceTensor):
            store[name] = detach_provenance(store[name]).detach()
