"""When a recorded step runs, how it is kept honest, and what it reports.

``fit`` takes SVI's plain step by default (:class:`pyro_vi.engine.step.PlainStep`). Recording is opt-in,
with ``jax.jit``'s contract: **the model's and guide's Python runs when the step is recorded; a replay
repeats the tensor operations only.** A value the model reads from outside its arguments (a global,
a closure counter, NumPy's random), a Python side effect, a param created later: a replay does not
see them. What the recorded step guarantees in exchange:

* the params a program differentiates and steps are the params its recording read (every param in
  the store is an input of the recording, none is baked in as a constant); a recording that creates
  a param is refused;
* a truth value read off a tensor (``if z > 0:``, a branch on a sampled value) is a guard: a step
  where it differs is taken plain from the same RNG state, and that step's update steps the params
  the plain run read; a value read into Python (``.item()``, ``float(z)``) is refused;
* **audits**: a program's first step in each call, its steps 2, 4, ..., 64, then every
  ``AUDIT_EVERY``-th step, compute the plain loss too (same torch RNG state) and must equal the
  recorded one: a model whose Python has changed what it computes trains at most ``AUDIT_EVERY``
  steps on the stale program. On a mismatch the step is taken plain and the rest of the call runs
  plain (``compile=True``: ``ConfigError``, before any update);
* every fall-back is reported: :class:`~pyro_vi.engine.step.CompileReport` (``FitResult.compile``)
  counts compiled and plain steps and says why steps fell back.

Modes: ``True`` records whatever the run's length and raises ``ConfigError`` (one line, the real
cause) where it cannot; ``"inductor"`` does the same and compiles the recorded program with inductor
(fused kernels; equal to float rounding; with plain Adam the update joins the program,
:mod:`~pyro_vi.engine.compile.whole_step`); ``"auto"`` (the built-in families' default) records only
where it applies and the run is long enough to repay it (``AUTO_MIN_STEPS``), else runs plain and
says why in the report: runs with a ``callback`` not marked :func:`~pyro_vi.engine.step.reads_only`, keyword arguments,
distributed runs.

Each argument signature (shapes, dtypes, devices, non-tensor values) gets its own recording (an
epoch's smaller last minibatch, say), up to ``MAX_PROGRAMS``; a step with another one runs plain.
A non-tensor argument that changes from step to step (a float KL weight) stops ``"auto"`` from
recording at its second value: pass it as a tensor.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable, Sequence

import pyro
from torch import Tensor

from pyro_vi.engine import rng
from pyro_vi.engine.compile import whole_step
from pyro_vi.engine.arguments import check_compile_mode
from pyro_vi.errors import ConfigError

if TYPE_CHECKING:
    from pyro_vi.engine.compile.record import CompiledLoss  # noqa: F401

__all__ = ["AUDIT_EVERY", "AUTO_MIN_STEPS", "MAX_PROGRAMS", "RecordedStep", "audited", "recorded_loss",
           "signature"]

# Recording costs about 0.3-0.5 s on a 2-core CPU (one-off imports aside) and saves 15-75% of a step
# (benchmarks/RESULTS.md): measured break-even 130-2,500 steps (regression with AutoNormal, VAE
# 784-400-50, Normal-Normal), so the default records runs with this many steps left.
AUTO_MIN_STEPS = 1000
MAX_PROGRAMS = 4
# A recorded program's steps between audits, at most (after its steps 1, 2, 4, ..., 64).
AUDIT_EVERY = 100


def audited(uses: int) -> bool:
    """Whether a program's ``uses``-th step (over all calls) is audited: 1, 2, 4, ..., 64, then every
    ``AUDIT_EVERY``-th (the steps trained on a stale program are bounded by ``AUDIT_EVERY``)."""
    return uses % AUDIT_EVERY == 0 or (uses < AUDIT_EVERY and uses & (uses - 1) == 0)


class RecordedStep:
    """A step (:mod:`pyro_vi.engine.step`'s contract) that replays recorded programs, built on a plain step.

    ``step(args, kwargs, first=False, restorer=None) -> StepResult``: a call's first step, a step
    whose arguments have no program, a failed audit or a differing guard take ``plain``'s step;
    every update goes through ``plain.update``.

    Args:
        plain: the run's :class:`~pyro_vi.engine.step.PlainStep` (model, guide, loss, update).
        mode: ``True`` (record or raise), ``"inductor"`` (record and compile with inductor, or raise),
            ``"auto"`` (record where it pays and applies, else run plain).
        steps_left: steps this call will take.
        callback, kwargs, data_parallel: ``fit``'s; under ``"auto"`` any of them makes the run plain
            (a distributed run's ranks must step the same params in the same order).
    """

    compiled = True

    def __init__(self, plain, mode: bool | str, *, steps_left: int, callback: Callable | None = None,
                 kwargs: dict | None = None, data_parallel=None):
        from pyro_vi.engine.compile import record

        check_compile_mode(mode)
        self.plain, self.mode = plain, mode
        self.model, self.guide, self.loss = plain.model, plain.guide, plain.loss
        self.forced = mode is True or mode == "inductor"
        self.backend = "inductor" if mode == "inductor" else None
        self.programs: dict[tuple, object] = {}
        self.compiled_steps = self.plain_steps = 0
        self.compile_seconds = 0.0
        self.fallbacks: dict[str, None] = {}  # why steps fell back, in order (an ordered set)
        self._fused = None  # the whole-step programs of this call's optimizer
        self._audited: set[int] = set()  # programs audited in this call
        self.active, reason = True, None
        if self.forced and kwargs:
            raise ConfigError("compile records positional arguments only; pass the model's arguments positionally")
        if not self.forced:
            if steps_left < AUTO_MIN_STEPS:
                reason = f"a run of {steps_left} steps is too short to repay a recording ({AUTO_MIN_STEPS}+ steps)"
            elif callback is not None and not getattr(callback, "_pyro_vi_reads_only", False):
                reason = "a callback may change what the model reads (mark it with reads_only if it does not)"
            elif kwargs:
                reason = "recorded programs take positional arguments only"
            elif data_parallel is not None:
                reason = "distributed runs take the plain step"
            else:
                reason = record.can_compile(self.model, self.guide, (), self.loss)
        if reason is not None:
            self._stop(reason)

    @property
    def report(self):
        """This call's :class:`~pyro_vi.engine.step.CompileReport`."""
        from pyro_vi.engine.step import CompileReport

        return CompileReport(self.mode, self.compiled_steps, self.plain_steps, tuple(self.fallbacks), self.compile_seconds)

    def __call__(self, args: Sequence, kwargs: dict, first: bool = False, restorer=None):
        from pyro_vi.engine.step import StepResult

        if not first and self.active:
            program = self.programs.get(signature(args))
            if program is not None:
                taken = self._replay(program, args)
                if taken is not None:
                    self.compiled_steps += 1
                    return taken
            elif self.forced and len(self.programs) >= MAX_PROGRAMS:
                self._fell_back(f"more than {MAX_PROGRAMS} argument signatures: the others run plain")
        self.plain_steps += 1
        result = self.plain(args, kwargs, first, restorer)
        if result.loss is not None:  # a NaN step is not recorded: the run stops or skips it
            self._record(args)
        return StepResult(result.loss, result.params, False)

    def _replay(self, program, args: Sequence):
        """The step by ``program``, or ``None`` (nothing done: take the plain step)."""
        from pyro_vi.engine.step import StepResult

        update = self.plain.update
        program.uses += 1
        # the program's first step in this call (a value may have changed between calls), then audited(uses)
        audit = id(program) not in self._audited or audited(program.uses)
        self._audited.add(id(program))
        if not audit and update.reduce is None and program.backend is not None:
            if self._fused is None or self._fused.optim is not update.optim:
                self._fused = whole_step.FusedSteps(update.optim)
            start = time.perf_counter()
            run = self._fused.get(program, args)
            if self._fused.built:  # this call compiled the whole step (inductor: seconds, once)
                self.compile_seconds += time.perf_counter() - start
                self._fused.built = False
            if run is not None:
                value, updated = program.loss_and_update(run, *args)
                if not updated:  # a guard differed: the plain run filled the gradients
                    self._fell_back("a guard differed from the recording's branch (taken plain, from the same noise)")
                    return StepResult(update(program.last_read, value), tuple(program.last_read), True)
                return StepResult(value if program.finite else None, tuple(program.params_read), True)
        before = rng.torch_state() if audit else None
        every = rng.get_state() if audit else None  # Python's and NumPy's too, for a retaken step
        fallbacks = program.fallbacks
        value = program.loss_and_grads(*args)
        if program.fallbacks != fallbacks:
            self._fell_back("a guard differed from the recording's branch (taken plain, from the same noise)")
        if audit:
            after = rng.torch_state()
            rng.set_torch_state(before)
            try:
                with pyro.validation_enabled(False):
                    plain = float(self.loss.loss(self.model, self.guide, *args))
            except Exception:  # noqa: BLE001 - a loss without a usable .loss(): no audit, so no recording
                if self.forced:
                    raise
                plain = math.nan
            rng.set_torch_state(after)
            got = float(value)
            if not (math.isclose(got, plain, rel_tol=0.0, abs_tol=1e-4 * (1.0 + abs(plain)))
                    or (math.isnan(got) and math.isnan(plain))):
                for p in program.params:
                    p.grad = None
                rng.set_state(every)  # the plain step draws what the plain run draws (NumPy's included)
                message = (
                    f"the recorded step's loss ({got:.6g}) differs from the plain one ({plain:.6g}) at its audit after "
                    f"{self.compiled_steps} compiled steps: the model reads a value that changes between steps from "
                    "outside its arguments (a global, a closure variable, NumPy's or Python's random); pass it as a "
                    "tensor argument or use compile=False"
                )
                if self.forced:
                    raise ConfigError(message)
                self._stop(message)
                program.uses -= 1
                _forget(self.loss, program)  # a later call records afresh, audited from its first step
                return None
        finite = program.finite
        params = program.last_read
        return StepResult(update(params, value, finite), tuple(params), True)

    def _record(self, args: Sequence) -> None:
        """After a plain step: record the step for these arguments' signature, if it applies."""
        if not self.active:
            return
        key = signature(args)
        if key in self.programs or len(self.programs) >= MAX_PROGRAMS:
            return
        if not self.forced and any(_same_shapes(key, other) for other in self.programs):
            # the same tensors with another non-tensor value (a float KL weight per step): each step
            # would need its own recording
            self._stop("a non-tensor argument changes between steps; pass it as a tensor to compile the step")
            return
        start = time.perf_counter()
        try:
            self.programs[key] = recorded_loss(self.model, self.guide, args, self.loss, self.backend)
        except ConfigError as error:
            if self.forced:
                raise
            self._stop(str(error))
        except Exception as error:  # noqa: BLE001 - whatever a recording trips on, "auto" runs plain
            if self.forced:
                raise
            self._stop(f"recording failed ({type(error).__name__}: {error})")
        finally:
            self.compile_seconds += time.perf_counter() - start

    def _fell_back(self, reason: str) -> None:
        self.fallbacks[reason] = None

    def _stop(self, reason: str) -> None:
        self.active = False
        self._fell_back(reason)


def _forget(loss, program) -> None:
    """Drop ``program`` from the recordings kept on ``loss`` (:func:`recorded_loss`)."""
    cache = getattr(loss, "_pyro_vi_recorded", None)
    if isinstance(cache, dict):
        for key in [key for key, value in cache.items() if value is program]:
            del cache[key]


def _same_shapes(key: tuple, other: tuple) -> bool:
    """Two signatures with the same tensor shapes, dtypes and devices (non-tensor values aside)."""
    def tensors(signature):
        return [entry for entry in signature if entry[0] != "value"]
    return len(key) == len(other) and tensors(key) == tensors(other)


def recorded_loss(model: Callable, guide: Callable, args: Sequence, loss, backend: str | None = None) -> CompiledLoss:
    """``compile_loss``, kept on the ``loss`` object and reused while it still applies.

    ``pyro_vi.fit`` calls this after a plain step. The program is reused by a later call with the
    same model, guide, argument shapes and non-tensor arguments while the param store still holds
    the very tensors it was recorded with (a cleared store, a resumed checkpoint or new parameters
    record it afresh), so calling ``fit`` epoch by epoch records once per argument signature.
    """
    key = (_identity(model), _identity(guide), signature(args), backend)
    cache = getattr(loss, "_pyro_vi_recorded", None)
    if not isinstance(cache, dict):
        cache = loss._pyro_vi_recorded = {}
    if key in cache and _same_tensors(cache[key]):
        return cache[key]
    from pyro_vi.engine.compile.record import compile_loss

    program = compile_loss(model, guide, args, loss, backend=backend)
    cache[key] = program
    return program


def _same_tensors(program: CompiledLoss) -> bool:
    from pyro_vi.engine import params as param_store

    present = set(param_store.names())
    return all(name in present and param_store.unconstrained(name) is p for name, p in zip(program.names, program.params))


def _identity(function) -> tuple[int, int]:
    """Bound methods are made afresh at each attribute access: key them by object and function."""
    return id(getattr(function, "__self__", None)), id(getattr(function, "__func__", function))


def signature(args: Sequence) -> tuple:
    """What a recording is valid for: each tensor's shape, dtype and device, each other value's repr."""
    return tuple(
        (tuple(a.shape), a.dtype, a.device) if isinstance(a, Tensor) else ("value", type(a).__name__, repr(a)) for a in args
    )
