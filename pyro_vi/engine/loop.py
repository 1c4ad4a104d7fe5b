"""One SVI engine for any Pyro model and guide: ``fit(model, guide, *args, num_steps=...)``.

``fit`` calls ``model(*args, **kwargs)`` and ``guide(*args, **kwargs)`` exactly as
``pyro.infer.SVI.step`` does, and never touches the data. One step is ``SVI.step`` spelled out::

    with poutine.trace(param_only=True):  loss = elbo.loss_and_grads(model, guide, *args, **kwargs)
    if loss and every gradient are finite: optim(params)     # else raise, or skip the step
    drop the gradients

around which the engine keeps the guarantees of a long run, for every model:

* **NaN/inf** in the loss or a gradient is caught *before* the update (``on_nan="raise" | "skip"``).
* **Checkpoints** (``checkpoint=PATH``) hold the param store, the optimizer state (learning-rate
  schedulers included), the RNG states, the step and the losses, written atomically; ``resume=True``
  continues the run bit for bit on CPU. Params are restored *in place* as the model and guide create
  them on the first resumed step, so modules registered with ``pyro.module`` (without
  ``update_module_params``) and ``PyroModule`` instances train on the restored values; a checkpoint missing a
  param the model creates, or holding one of another shape, is refused (``pyro_vi.engine.resume``).
* **Ctrl-C / SIGTERM** is deferred to the end of the current step; the engine writes a checkpoint and
  raises ``TrainingInterrupted`` (a ``KeyboardInterrupt``): a script never carries on as if training
  had finished.
* A progress bar with the loss, a per-step ``callback`` (e.g. ``clip_params``, or early stopping by
  returning ``True``), learning-rate schedulers (``pyro.optim.PyroLRScheduler``) stepped every
  ``scheduler_every`` steps, guides with no params, any Pyro ELBO (``Trace_ELBO``, ``TraceGraph_ELBO``,
  ``TraceEnum_ELBO``, ``TraceMeanField_ELBO``, ``RenyiELBO``, the ``Jit*`` variants) and every pyro_vi
  estimator.
* **Minibatches the Pyro way**: a model whose ``pyro.plate("data", N, subsample_size=B)`` draws its
  own subsample needs nothing more. For epochs (each point once per epoch, order from the seed),
  pass ``EpochSubsample(N, B)`` as an argument: any argument that is a ``PerStep`` is evaluated once
  per step (with the step number) and the value given to model and guide alike. The model passes it
  to its plate (``pyro.plate("data", N, subsample=indices)``) and indexes its data with it
  (``pyro_vi.engine.subsample``).
* ``data_parallel``: torch.distributed data parallelism (``pyro_vi.engine.distributed``): gradients averaged
  over ranks before the update, interrupts agreed, rank 0 alone writes checkpoints. Each rank must
  see its shard of the data plate: ``EpochSubsample(..., data_parallel=dp)`` shards each batch.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pyro
import pyro.optim
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.ops.provenance import ProvenanceTensor, detach_provenance
from torch import Tensor

from pyro_vi.engine import arguments
from pyro_vi.engine import checkpoint as checkpoints
from pyro_vi.engine import optim as pyro_vi_optim
from pyro_vi.engine import resume as resuming
from pyro_vi.engine.autocompile import StepRecorder, check_compile_mode
from pyro_vi.engine.subsample import EpochSubsample, PerStep  # noqa: F401 - re-exported (older imports)
from pyro_vi.engine.subsample import check_subsamples, explain_plate_mismatch, step_values
from pyro_vi.errors import ConfigError, TrainingDivergedError, TrainingInterrupted

__all__ = ["FitResult", "fit"]  # PerStep, EpochSubsample: pyro_vi.engine.subsample



class FitResult(NamedTuple):
    """What ``fit`` did.

    Attributes:
        params: every param in the store after training, constrained, detached (name -> tensor).
        losses: the loss of every step of the run (resumed ones included); NaN for skipped steps.
        steps: steps of the run completed (resumed ones included).
        steps_this_call: steps taken by this call.
        seconds: wall time of this call.
        steps_per_second: this call's steps / seconds (callback time included).
        skipped_steps: steps of the run dropped for a NaN/inf loss or gradient (``on_nan="skip"``).
        stopped_early: the callback asked to stop.
        compiled_steps: steps of this call taken by the recorded program (``compile``).
    """

    params: dict
    losses: list
    steps: int
    steps_this_call: int
    seconds: float
    steps_per_second: float
    skipped_steps: int
    stopped_early: bool
    compiled_steps: int = 0


def fit(
    model: Callable,
    guide: Callable,
    *args,
    num_steps: int,
    loss=None,
    optim: pyro.optim.PyroOptim | None = None,
    seed: int | None = None,
    callback: Callable[[int, float | None], Any] | None = None,
    scheduler_every: int = 1,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | Callable[[int], bool] = 0,
    checkpoint_config: dict | None = None,
    resume: bool = False,
    overwrite: bool = False,
    loaded_checkpoint: dict | None = None,
    state: dict | None = None,
    on_nan: str = "raise",
    progress: bool = True,
    compile: bool | str | None = None,
    data_parallel=None,
    **kwargs,
) -> FitResult:
    """Maximize the ELBO of ``model``/``guide`` with SVI, called as ``SVI.step(*args, **kwargs)``.

    Args:
        model, guide: any Pyro model and guide (an AutoGuide included).
        \\*args, \\*\\*kwargs: passed unchanged to both at every step; a ``PerStep`` argument is replaced
            by its value for the step (``EpochSubsample`` for epochs of minibatches).
        num_steps: total steps of the run (a resumed run continues up to it).
        loss: a Pyro ELBO or a pyro_vi estimator (default ``Trace_ELBO()``).
        optim: a Pyro optimizer, ``ClippedAdam`` and ``PyroLRScheduler`` included
            (default ``pyro_vi.engine.optim.Adam({"lr": 1e-3})``).
        seed: seed every RNG before the first step (``pyro.set_rng_seed``); ``None`` leaves them.
        callback: ``callback(step, loss)`` after each step (``step`` counts from 1; ``loss`` is
            ``None`` for a skipped step). Return ``True`` to stop. It may update ``state``.
        scheduler_every: with a ``PyroLRScheduler``, step it every this many steps (1: every
            step; the steps per epoch: once per epoch). ``ReduceLROnPlateau`` is given the mean loss.
        checkpoint: where to write checkpoints (atomically); ``None``: none.
        checkpoint_every: also write one every this many steps (0: only at the end and on
            interrupt), or a function of the step saying when.
        checkpoint_config: what identifies the run (``{"model": ..., "train": ...}``); a
            checkpoint made with another one is refused on resume.
        resume: continue from ``checkpoint``.
        overwrite: without ``resume``, replace the checkpoint already at ``checkpoint``.
        loaded_checkpoint: with ``resume``, the checkpoint as ``checkpoint.load(checkpoint)``
            already returned it (a command's preflight): not read again, its config checked.
        state: a dict of the caller's own run state (floats, lists, tensors), saved in every
            checkpoint and restored into the same dict on resume.
        on_nan: ``"raise"`` (``TrainingDivergedError``) or ``"skip"`` the step, without an update.
        progress: a tqdm bar with the loss.
        compile: replay the step as a recorded tensor program after a first plain step
            (``pyro_vi.engine.compiled``; same numbers, checked). ``None``: where it applies and the
            run is long enough to repay it, else plain (``pyro_vi.engine.autocompile``); ``True``:
            always, or ``ConfigError`` naming why not; ``"inductor"``: as ``True``, the program then
            compiled by inductor (fused kernels; equal to float rounding); ``False``: never.
        data_parallel: a ``pyro_vi.engine.distributed.DataParallel`` for a torch.distributed run.

    Returns:
        FitResult.

    Raises:
        ConfigError, DataError, CheckpointError, OutputError: bad options, a model whose plate does
            not match its data, a bad checkpoint, an unwritable or already used checkpoint path.
        TrainingDivergedError: NaN/inf with ``on_nan="raise"``: the params are the last good step's.
        TrainingInterrupted: Ctrl-C or SIGTERM; raised after the checkpoint is written.
    """
    from tqdm.auto import tqdm

    arguments.check_fit_options(num_steps, on_nan, seed, scheduler_every, checkpoint_every, checkpoint, resume)
    optim = arguments.check_fit_arguments(model, guide, args, kwargs, loss, optim)
    check_compile_mode(compile)
    if compile not in (None, False) and kwargs:
        raise ConfigError("compile records positional arguments only; pass the model's arguments positionally")
    loss = Trace_ELBO() if loss is None else loss
    optim = pyro_vi_optim.Adam({"lr": 1e-3}) if optim is None else optim
    is_main = data_parallel is None or data_parallel.is_main
    # What identifies the run: the caller's description, else the loss's and optimizer's types.
    saved_config = (
        {"model": dict(checkpoint_config.get("model", {})), "train": dict(checkpoint_config.get("train", {}))}
        if checkpoint_config is not None
        else {"model": {}, "train": {"loss": type(loss).__name__, "optim": type(optim).__name__}}
    )
    if checkpoint is not None and not resume:
        arguments.check_fresh_checkpoint(Path(checkpoint), overwrite, data_parallel)

    run = resuming.Run(step=0, losses=[], skipped=0)
    pending: dict[str, Tensor] = {}
    checkpoint_params: dict[str, Tensor] = {}
    if resume:
        saved = checkpoints.load(checkpoint, expected_config=saved_config, loaded=loaded_checkpoint)
        run = resuming.restore_run(saved, optim, state, num_steps, checkpoint)
        pending = {name: value for name, value in saved["param_store"]["params"].items()}
        checkpoint_params = dict(pending)
        pyro.clear_param_store()
    elif seed is not None:
        pyro.set_rng_seed(seed)
    if data_parallel is not None:
        data_parallel.seed_ranks()

    def save() -> None:
        if checkpoint is not None and is_main:
            checkpoints.save(checkpoint, saved_config, {**run.as_dict(), "state": dict(state or {})}, optim)

    scheduled = isinstance(optim, pyro.optim.PyroLRScheduler)
    plateau = scheduled and optim.pt_scheduler_constructor is torch.optim.lr_scheduler.ReduceLROnPlateau
    validate = pyro.infer.is_validation_enabled()  # Pyro's checks on the first step of each call only
    reduce = None if data_parallel is None else data_parallel.reduce
    due = checkpoint_every if callable(checkpoint_every) else (lambda step: checkpoint_every and step % checkpoint_every == 0)
    interrupt = _DeferredInterrupt()
    bar = tqdm(total=num_steps, initial=run.step, desc="svi", leave=False) if progress and is_main else None
    start, first_step, stopped_early = time.perf_counter(), run.step, False
    recorder = StepRecorder(compile, model, guide, loss, num_steps - run.step, callback, kwargs, data_parallel)
    if resume and run.step >= num_steps and num_steps > 0:
        # Nothing left to train: still put the checkpoint's values into the params the model and
        # guide create (modules included), so the caller evaluates the trained model, not a fresh one.
        step_args, step_kwargs = step_values(args, kwargs, run.step - 1)
        restorer = resuming.Restore(pending, active=True)
        resuming.warm_up(model, guide, loss, step_args, step_kwargs, restorer, validate, checkpoint_params)
        resuming.refuse_unused(pending, checkpoint)
    try:
        with interrupt:
            while run.step < num_steps:
                step_args, step_kwargs = step_values(args, kwargs, run.step)
                value = recorder.step(step_args, optim if reduce is None else None)
                if value is not None:
                    if recorder.updated:  # the whole step, update included, was one program
                        step_loss = value if recorder.finite else None
                    else:
                        step_loss = _apply(optim, recorder.params, value, reduce, recorder.finite)
                else:
                    first = run.step == first_step
                    if first:  # Pyro's checks, and the restore of a checkpoint's params, on the first step only
                        restorer = resuming.Restore(pending, active=resume)
                        if resume:
                            resuming.warm_up(model, guide, loss, step_args, step_kwargs, restorer, validate, checkpoint_params)
                        with pyro.validation_enabled(validate), restorer:
                            step_loss = _step(model, guide, loss, optim, step_args, step_kwargs, reduce, first, restorer)
                    else:  # later steps: the NaN/inf check covers what can change from step to step
                        with pyro.validation_enabled(False):
                            step_loss = _step(model, guide, loss, optim, step_args, step_kwargs, reduce, first)
                    if first:
                        check_subsamples([*args, *kwargs.values()], step_args + list(step_kwargs.values()), restorer.plates)
                        resuming.refuse_unused(pending, checkpoint)
                    if step_loss is not None:  # a NaN step is not recorded: the run stops or skips it
                        recorder.record(step_args)
                if step_loss is None:
                    if on_nan == "raise":
                        diverged = TrainingDivergedError(
                            f"the loss or a gradient became NaN/inf at step {run.step + 1}; the parameters are those "
                            "of the last good step"
                            + (f" and checkpoint {str(checkpoint)!r} holds an earlier good step"
                               if checkpoint is not None and Path(checkpoint).is_file() else "")
                            + "; lower the learning rate or check the data"
                        )
                        diverged.step = run.step + 1
                        raise diverged
                    run.skipped += 1
                run.step += 1
                run.losses.append(math.nan if step_loss is None else step_loss)
                if scheduled and run.step % scheduler_every == 0:
                    recent = [x for x in run.losses[-scheduler_every:] if not math.isnan(x)]
                    optim.step(sum(recent) / len(recent)) if plateau and recent else (None if plateau else optim.step())
                if callback is not None and callback(run.step, step_loss):
                    stopped_early = True
                if bar is not None:
                    bar.update(1)
                    if step_loss is not None and (run.step % 10 == 0 or run.step == num_steps):
                        bar.set_postfix(loss=f"{step_loss:.4g}", refresh=False)
                stop = interrupt.requested if data_parallel is None else data_parallel.any(interrupt.requested)
                if stop:
                    save()
                    interrupted = TrainingInterrupted(
                        f"interrupted at step {run.step} of {num_steps}"
                        + (f"; checkpoint saved to {str(checkpoint)!r}: resume from it to continue" if checkpoint is not None else "")
                    )
                    interrupted.step, interrupted.checkpoint = run.step, checkpoint
                    raise interrupted
                if stopped_early:
                    break
                if due(run.step) and run.step < num_steps:
                    save()
        if run.step > first_step:  # a resumed run with nothing left to do leaves its checkpoint as it is
            save()
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    taken = run.step - first_step
    params = {name: value.detach().clone() for name, value in pyro.get_param_store().items()}
    return FitResult(params, list(run.losses), run.step, taken, seconds, taken / seconds if seconds > 0 else 0.0,
                     run.skipped, stopped_early, recorder.steps)


def _step(model, guide, loss, optim, args, kwargs, reduce, first: bool, restorer=None) -> float | None:
    """One SVI step; the loss, or ``None`` (and no update) if the loss or a gradient is not finite."""
    with poutine.trace(param_only=True) as capture:
        try:
            value = loss.loss_and_grads(model, guide, *args, **kwargs)
        except ValueError as error:
            if first:
                explain_plate_mismatch(error, model, args, kwargs)
            raise
    if restorer is not None and restorer.active:
        resuming.refuse_missing(restorer, capture.trace.nodes)
    _untrack_provenance(capture.trace.nodes)
    # In trace order (a set's order differs between processes, and the all-reduce packs by order).
    params = list(dict.fromkeys(site["value"].unconstrained() for site in capture.trace.nodes.values()))
    return _apply(optim, params, value, reduce)


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


def _apply(optim, params, value, reduce, finite: bool | None = None) -> float | None:
    """Step ``optim`` on ``params`` unless the loss or a gradient is not finite (``finite``: already
    known, from a recorded program); drop the gradients; the loss, or ``None`` for a skipped step."""
    grads = [p.grad for p in params if p.grad is not None]
    value = float(value)
    if reduce is not None:
        value, finite = reduce(value, grads), None  # averaged over ranks: check the averages
    if finite is None:
        finite = math.isfinite(value) and (not grads or bool(torch.isfinite(torch.stack([g.sum() for g in grads]).sum())))
    stepped = [p for p in params if p.grad is not None]  # a param the loss does not differentiate (a baseline) is not stepped
    if finite and stepped and not pyro_vi_optim.pyro_adam_step(optim, stepped):
        optim(stepped)
    for p in params:  # drop the gradients, not zero them: the next backward writes instead of adding
        p.grad = None
    return value if finite else None


class _DeferredInterrupt:
    """Turn Ctrl-C (and SIGTERM: schedulers' preemption, torchrun) into a flag read between steps,
    so a step is never cut in half. A second signal stops at once."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in self._SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        return False
