"""When ``fit`` takes the recorded step (:mod:`pyro_vi.engine.compiled`), and how it keeps it honest.

``fit(..., compile=None)`` (the default) records the step after the first plain step of a call
when the run is long enough to repay the recording (``AUTO_MIN_STEPS`` steps left) and the step
can be recorded (:func:`~pyro_vi.engine.compiled.can_compile`, then ``compile_loss``'s check that the
recorded value and gradients equal the plain ones on the same batch and noise); anything else runs
plain, silently. ``compile=True`` records whatever the run's length and raises ``ConfigError`` (one
line, the real cause) where it cannot; ``compile="inductor"`` does the same and then compiles the
recorded program with inductor (``torch._inductor.compile``, no TorchDynamo: fused kernels, seconds
to compile, then a several times faster step on tiny models; numbers equal to float rounding);
``compile=False`` never records.

A recording freezes every Python value the model reads that is not one of its arguments (a
module-level annealing factor, ``np.random`` draws, a counter the model bumps). Such a model passes
the first check and would then train on a stale constant, so:

* the default skips runs with a ``callback`` (which may change what the model reads between steps)
  unless it is marked :func:`reads_only` (pyro_vi's own trainers mark theirs), runs with keyword arguments (recorded programs take positional ones) and distributed runs;
* a program's first step in each call, and its steps numbered 2, 4, 8, ... over all calls, are
  **audited**: the plain loss is computed too, from the same torch generator state, and must equal
  the recorded one. On a mismatch the step is taken plain and the rest of the call runs plain
  (``compile=True``: ``ConfigError``, before any update). (Counted per call, a loop of 200-step ``fit``
  calls audited 8 steps in each, a third of such a loop's time with ``compile="inductor"``.)

Each argument signature (shapes, dtypes, devices, non-tensor values) gets its own recording (an
epoch's smaller last minibatch, say), up to ``MAX_PROGRAMS``; a step with another one runs plain.
A non-tensor argument that changes from step to step (a float KL weight) stops the default from
recording at its second value: pass it as a tensor.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

import pyro
from torch import Tensor

from pyro_vi.engine import rng, wholestep
from pyro_vi.errors import ConfigError

if TYPE_CHECKING:
    from pyro_vi.engine.compiled import CompiledLoss

__all__ = ["AUTO_MIN_STEPS", "MAX_PROGRAMS", "StepRecorder", "check_compile_mode", "reads_only", "recorded_loss", "signature"]

# Recording costs about 0.3-0.5 s on a 2-core CPU (one-off imports aside) and saves 15-75% of a step
# (benchmarks/RESULTS.md): measured break-even 130-2,500 steps (regression with AutoNormal, VAE
# 784-400-50, Normal-Normal), so the default records runs with this many steps left.
AUTO_MIN_STEPS = 1000
MAX_PROGRAMS = 4


def check_compile_mode(mode) -> None:
    """``ConfigError`` unless ``mode`` is ``None``, ``True``, ``False`` or ``"inductor"`` (by identity:
    ``1`` or a NumPy bool is refused, not taken for ``True``)."""
    if not (mode is None or mode is True or mode is False or (isinstance(mode, str) and mode == "inductor")):
        raise ConfigError(f"compile must be None (automatic), True, False or 'inductor', got {mode!r}")


def reads_only(callback: Callable) -> Callable:
    """Mark ``callback`` as one that changes nothing the model or guide reads (it logs, evaluates,
    checkpoints or stops early): ``fit``'s default compile then applies to runs using it. Returns
    ``callback`` itself."""
    callback._pyro_vi_reads_only = True
    return callback


class StepRecorder:
    """The recorded steps of one ``fit`` call: which argument signatures have a program, the audit.

    Args:
        mode: ``None`` (record where it pays and applies, else run plain), ``True`` (record or
            raise), ``"inductor"`` (record and compile with inductor, or raise), ``False`` (never).
        model, guide, loss: the run's pair and loss.
        steps_left: steps this call will take.
        callback, kwargs, data_parallel: ``fit``'s; any of them makes the default run plain (a
            distributed run's ranks must step the same params in the same order).
    """

    def __init__(self, mode: bool | str | None, model: Callable, guide: Callable, loss, steps_left: int,
                 callback: Callable | None = None, kwargs: dict | None = None, data_parallel=None):
        from pyro_vi.engine import compiled

        check_compile_mode(mode)
        self._compiled = compiled
        self.model, self.guide, self.loss = model, guide, loss
        self.forced = mode is True or isinstance(mode, str)
        self.backend = "inductor" if isinstance(mode, str) else None
        self.active = self.forced or (
            mode is None and steps_left >= AUTO_MIN_STEPS and (callback is None or getattr(callback, "_pyro_vi_reads_only", False))
            and not kwargs and data_parallel is None
            and compiled.can_compile(model, guide, (), loss) is None
        )
        self.programs: dict[tuple, object] = {}
        self.finite: bool | None = None  # the last recorded step's loss and gradients were finite (None: unknown)
        self.steps = 0  # recorded steps taken in this call
        self.refusal: str | None = None  # why the default stopped recording, for the curious
        self.updated = False  # the last step's program made the optimizer's update too
        self._fused = None  # the whole-step programs of this call's optimizer
        self._audited: set[int] = set()  # programs audited in this call

    @property
    def params(self) -> list[Tensor]:
        """The params of the program that ran last (the optimizer steps them)."""
        return self._last.params

    def record(self, step_args: Sequence) -> None:
        """After a plain step: record the step for these arguments' signature, if it applies."""
        if not self.active:
            return
        key = signature(step_args)
        if key in self.programs or len(self.programs) >= MAX_PROGRAMS:
            return
        if not self.forced and any(_same_shapes(key, other) for other in self.programs):
            # the same tensors with another non-tensor value (a float KL weight per step): each step
            # would need its own recording
            self._stop("a non-tensor argument changes between steps; pass it as a tensor to compile the step")
            return
        try:
            self.programs[key] = recorded_loss(self.model, self.guide, step_args, self.loss, self.backend)
        except ConfigError as error:
            if self.forced:
                raise
            self._stop(str(error))
        except Exception as error:  # noqa: BLE001 - whatever a recording trips on, the default runs plain
            if self.forced:
                raise
            self._stop(f"recording failed ({type(error).__name__}: {error})")

    def step(self, step_args: Sequence, optim=None) -> float | None:
        """One recorded step: loss and gradients into the params' ``.grad``, the loss returned;
        ``None`` when there is no program for these arguments (or the audit failed): take the plain step.

        With ``optim`` and the inductor backend, a step that is not audited is taken by the whole-step
        program where the optimizer allows (:mod:`pyro_vi.engine.wholestep`): the update is then made
        too (``self.updated``), else the optimizer is left to the caller."""
        self.updated = False
        if not self.active:
            return None
        program = self.programs.get(signature(step_args))
        if program is None:
            return None
        self.steps += 1
        program.uses += 1
        # the program's first step in this call (a value may have changed between calls), then its
        # steps 2, 4, 8, ... over all calls
        audit = id(program) not in self._audited or program.uses & (program.uses - 1) == 0
        self._audited.add(id(program))
        if not audit and optim is not None and program.backend is not None:
            if self._fused is None or self._fused.optim is not optim:
                self._fused = wholestep.FusedSteps(optim)
            run = self._fused.get(program, step_args)
            if run is not None:
                value, self.updated = program.loss_and_update(run, *step_args)
                self._last, self.finite = program, program.finite
                return value
        before = rng.torch_state() if audit else None
        every = rng.get_state() if audit else None  # Python's and NumPy's too, for a retaken step
        value = program.loss_and_grads(*step_args)
        if audit:
            after = rng.torch_state()
            rng.set_torch_state(before)
            try:
                with pyro.validation_enabled(False):
                    plain = float(self.loss.loss(self.model, self.guide, *step_args))
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
                    f"the recorded step's loss ({got:.6g}) differs from the plain one ({plain:.6g}) at recorded step "
                    f"{self.steps}: the model reads a value that changes between steps from outside its arguments "
                    "(a global, a closure variable, NumPy's or Python's random); pass it as a tensor argument or "
                    "use compile=False"
                )
                if self.forced:
                    raise ConfigError(message)
                self._stop(message)
                self.steps -= 1
                program.uses -= 1
                _forget(self.loss, program)  # a later call records afresh, audited from its first step
                return None
        self._last = program
        self.finite = program.finite
        return float(value)

    def _stop(self, reason: str) -> None:
        self.active, self.refusal = False, reason


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
    from pyro_vi.engine.compiled import compile_loss

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
