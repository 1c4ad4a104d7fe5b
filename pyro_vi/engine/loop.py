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
  param the model creates, or holding one of another shape, is refused.
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
  to its plate (``pyro.plate("data", N, subsample=indices)``) and indexes its data with it.
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
from pyro.poutine.messenger import Messenger
from torch import Tensor

from pyro_vi.engine import checkpoint as checkpoints
from pyro_vi.engine import optim as pyro_vi_optim
from pyro_vi.errors import CheckpointError, ConfigError, DataError, OutputError, TrainingDivergedError, TrainingInterrupted

__all__ = ["EpochSubsample", "FitResult", "PerStep", "fit"]

ON_NAN = ("raise", "skip")


class PerStep:
    """An argument of ``fit`` recomputed at every step: ``value = per_step(step)``.

    Wrap any function of the step number (``PerStep(lambda step: ...)``), or subclass it. Values are
    computed in argument order, once per step, and the same value goes to the model and the guide.
    They must be functions of the step and the global RNG only, so that resuming reproduces them.
    """

    def __init__(self, function: Callable[[int], Any] | None = None):
        self._function = function

    def __call__(self, step: int) -> Any:
        return self._function(step)


class EpochSubsample(PerStep):
    """The indices of step ``step``'s minibatch: every point once per epoch, in an order drawn from
    ``(seed, epoch)`` alone (so a resumed run, and every rank of a distributed one, agree).

    Pass it to ``fit`` as an argument and give it to the data plate:
    ``with pyro.plate("data", len(x), subsample=indices): ...x[indices]...``.
    The last, smaller batch of an epoch is dropped (``drop_last=True``) unless told otherwise.
    """

    def __init__(
        self,
        num_data: int,
        batch_size: int,
        seed: int = 0,
        device: torch.device | str | None = None,
        drop_last: bool = True,
        data_parallel=None,
    ):
        for name, value in (("num_data", num_data), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if batch_size > num_data:
            raise ConfigError(f"batch size {batch_size} is larger than the {num_data} data points; lower it")
        if data_parallel is not None:
            data_parallel.validate(batch_size)
        super().__init__()
        self.num_data, self.batch_size, self.seed = num_data, batch_size, seed
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.drop_last = drop_last
        self.data_parallel = data_parallel
        self.steps_per_epoch = num_data // batch_size if drop_last else -(-num_data // batch_size)
        self._epoch, self._permutation = None, None
        self._cached_step, self._cached = None, None

    def epoch_of(self, step: int) -> tuple[int, int]:
        """``(epoch, position in the epoch)`` of step ``step`` (both from 0)."""
        return divmod(step, self.steps_per_epoch)

    def __call__(self, step: int) -> Tensor:
        if step == self._cached_step:  # the same step asked twice (e.g. by a data transform): same indices
            return self._cached
        epoch, position = self.epoch_of(step)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + epoch)
            self._epoch, self._permutation = epoch, torch.randperm(self.num_data, generator=generator).to(self.device)
        indices = self._permutation[position * self.batch_size : (position + 1) * self.batch_size]
        if self.data_parallel is not None:
            indices = self.data_parallel.shard(indices)
        self._cached_step, self._cached = step, indices
        return indices


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
    """

    params: dict
    losses: list
    steps: int
    steps_this_call: int
    seconds: float
    steps_per_second: float
    skipped_steps: int
    stopped_early: bool


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
    state: dict | None = None,
    on_nan: str = "raise",
    progress: bool = True,
    compile: bool = False,
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
        state: a dict of the caller's own run state (floats, lists, tensors), saved in every
            checkpoint and restored into the same dict on resume.
        on_nan: ``"raise"`` (``TrainingDivergedError``) or ``"skip"`` the step, without an update.
        progress: a tqdm bar with the loss.
        compile: record the ``Trace_ELBO`` step as a tensor program after the first step
            (``pyro_vi.engine.compiled``); positional tensor arguments only.
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

    _validate_options(num_steps, on_nan, seed, scheduler_every, checkpoint_every, checkpoint, resume)
    if compile and kwargs:
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
        _check_fresh_checkpoint(Path(checkpoint), overwrite, data_parallel)

    run = _Run(step=0, losses=[], skipped=0)
    pending: dict[str, Tensor] = {}
    checkpoint_params: dict[str, Tensor] = {}
    if resume:
        saved = checkpoints.load(checkpoint, expected_config=saved_config)
        run = _restore(saved, optim, state, num_steps, checkpoint)
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
    recorded = None
    interrupt = _DeferredInterrupt()
    bar = tqdm(total=num_steps, initial=run.step, desc="svi", leave=False) if progress and is_main else None
    start, first_step, stopped_early = time.perf_counter(), run.step, False
    if resume and run.step >= num_steps and num_steps > 0:
        # Nothing left to train: still put the checkpoint's values into the params the model and
        # guide create (modules included), so the caller evaluates the trained model, not a fresh one.
        step_args = [value(run.step - 1) if isinstance(value, PerStep) else value for value in args]
        step_kwargs = {key: value(run.step - 1) if isinstance(value, PerStep) else value for key, value in kwargs.items()}
        restorer = _Restore(pending, active=True)
        _warm_up(model, guide, loss, step_args, step_kwargs, restorer, validate, checkpoint_params)
        _refuse_unused(pending, checkpoint)
    try:
        with interrupt:
            while run.step < num_steps:
                step_args = [value(run.step) if isinstance(value, PerStep) else value for value in args]
                step_kwargs = {key: value(run.step) if isinstance(value, PerStep) else value for key, value in kwargs.items()}
                if recorded is not None:
                    value = recorded(*step_args)
                    value.backward()
                    step_loss = _apply(optim, recorded.params, float(value.detach()), reduce)
                else:
                    first = run.step == first_step
                    if first:  # Pyro's checks, and the restore of a checkpoint's params, on the first step only
                        restorer = _Restore(pending, active=resume)
                        if resume:
                            _warm_up(model, guide, loss, step_args, step_kwargs, restorer, validate, checkpoint_params)
                        with pyro.validation_enabled(validate), restorer:
                            step_loss = _step(model, guide, loss, optim, step_args, step_kwargs, reduce, first, restorer)
                    else:  # later steps: the NaN/inf check covers what can change from step to step
                        with pyro.validation_enabled(False):
                            step_loss = _step(model, guide, loss, optim, step_args, step_kwargs, reduce, first)
                    if first:
                        _check_subsamples([*args, *kwargs.values()], step_args + list(step_kwargs.values()), restorer.plates)
                    if first:
                        _refuse_unused(pending, checkpoint)
                    if compile:
                        from pyro_vi.engine import compiled

                        recorded = compiled.recorded_loss(model, guide, step_args, loss)
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
                     run.skipped, stopped_early)


class _Run:
    """The engine's own run state (mutated in place: the per-step cost stays constant)."""

    __slots__ = ("step", "losses", "skipped")

    def __init__(self, step: int, losses: list, skipped: int):
        self.step = step  # steps completed
        self.losses = losses  # loss of every step (NaN: skipped)
        self.skipped = skipped

    def as_dict(self) -> dict:
        return {"step": self.step, "losses": list(self.losses), "skipped": self.skipped}


def _validate_options(num_steps, on_nan, seed, scheduler_every, checkpoint_every, checkpoint, resume) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ConfigError(f"num_steps must be a non-negative integer, got {num_steps!r}")
    if on_nan not in ON_NAN:
        raise ConfigError(f"on_nan must be 'raise' or 'skip', got {on_nan!r}")
    if seed is not None and (isinstance(seed, bool) or not hasattr(seed, "__index__") or not 0 <= int(seed) <= 2**32 - 1):
        raise ConfigError(f"seed must be an integer from 0 to 2**32 - 1 (NumPy's range), got {seed!r}")
    if isinstance(scheduler_every, bool) or not isinstance(scheduler_every, int) or scheduler_every <= 0:
        raise ConfigError(f"scheduler_every must be a positive integer, got {scheduler_every!r}")
    if not callable(checkpoint_every) and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0):
        raise ConfigError(f"checkpoint_every must be a non-negative integer of steps, got {checkpoint_every!r}")
    if resume and checkpoint is None:
        raise ConfigError("resume needs the checkpoint path to continue from; pass checkpoint=PATH")


def _check_fresh_checkpoint(path: Path, overwrite: bool, data_parallel) -> None:
    """A fresh run must not replace a run's checkpoint by accident, and must be able to write one."""
    exists = path.exists()
    if data_parallel is not None:
        exists = data_parallel.broadcast(exists)  # rank 0 alone writes: its file is the one at stake
    if exists and not overwrite:
        raise OutputError(f"{str(path)!r} already holds a checkpoint; pass resume=True to continue it or overwrite=True to start over")
    if data_parallel is None or data_parallel.is_main:
        if path.is_dir():
            raise OutputError(f"checkpoint path {str(path)!r} is a directory; pass a file path")
        if not path.parent.is_dir():
            raise OutputError(f"the directory of checkpoint {str(path)!r} does not exist; create it or choose another path")


def _restore(saved: dict, optim, state: dict | None, num_steps: int, path) -> _Run:
    run = saved["run"]
    if not isinstance(run, dict) or not isinstance(run.get("step"), int) or not isinstance(run.get("losses"), list):
        raise CheckpointError(f"checkpoint {str(path)!r} was not written by pyro_vi.fit (no step count); resume it with the command that wrote it")
    if run["step"] > num_steps:
        raise ConfigError(
            f"checkpoint {str(path)!r} is at step {run['step']}, past num_steps={num_steps}; "
            "ask for at least as many steps as it has done"
        )
    optim.set_state(saved["optimizer"])
    checkpoints.set_rng_state(saved["rng"])
    if state is not None:
        state.clear()
        state.update(run.get("state", {}))
    return _Run(run["step"], list(run["losses"]), int(run.get("skipped", 0)))


class _Restore(Messenger):
    """Copy checkpointed values into params, in place, as the model and guide create them.

    In place, so a module registered by ``pyro.module`` (whose own ``nn.Parameter`` is the store's
    tensor) trains on the restored values; ``pending`` loses each name it restores."""

    def __init__(self, pending: dict[str, Tensor], active: bool):
        super().__init__()
        self.pending, self.active, self.restored = pending, active, set()
        self.plates: set[tuple[str, int, int | None]] = set()  # (name, size, full size) of every plate seen

    def _postprocess_message(self, msg) -> None:
        if msg["type"] == "sample":
            for frame in msg["cond_indep_stack"]:
                self.plates.add((frame.name, int(frame.size), None if frame.full_size is None else int(frame.full_size)))
        super()._postprocess_message(msg)

    def _pyro_param(self, msg) -> None:
        name = msg["name"]
        if not self.active or name not in self.pending:
            return
        store = pyro.get_param_store()
        if name not in store:
            if len(msg["args"]) < 2:
                return
            store.setdefault(name, msg["args"][1], msg["kwargs"].get("constraint", torch.distributions.constraints.real))
        target = store.get_param(name).unconstrained()
        value = self.pending.pop(name)
        if target.shape != value.shape or value.dtype != target.dtype:
            raise CheckpointError(
                f"checkpoint param {name!r} has shape {tuple(value.shape)} and dtype {value.dtype}; the model makes it "
                f"{tuple(target.shape)} {target.dtype}; resume with the model and options that wrote it"
            )
        with torch.no_grad():
            target.copy_(value.to(dtype=target.dtype, device=target.device))
        self.restored.add(name)


def _step(model, guide, loss, optim, args, kwargs, reduce, first: bool, restorer=None) -> float | None:
    """One SVI step; the loss, or ``None`` (and no update) if the loss or a gradient is not finite."""
    with poutine.trace(param_only=True) as capture:
        try:
            value = loss.loss_and_grads(model, guide, *args, **kwargs)
        except ValueError as error:
            if first:
                _explain_plate_mismatch(error, model, args, kwargs)
            raise
    if restorer is not None and restorer.active:
        missing = sorted(name for name in capture.trace.nodes if name not in restorer.restored)
        if missing:
            raise CheckpointError(
                f"the checkpoint has no value for param {missing[0]!r}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + "; it was written by another model or guide, or edited: resume with the one that wrote it, or start over"
            )
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


def _refuse_unused(pending: dict, checkpoint) -> None:
    """After the first resumed step every checkpointed param must have been restored."""
    if pending:
        raise CheckpointError(
            f"checkpoint {str(checkpoint)!r} holds params the model and guide do not create "
            f"({', '.join(sorted(pending)[:5])}); resume with the model and guide that wrote it"
        )


def _check_subsamples(arguments: list, values: list, plates: set) -> None:
    """An ``EpochSubsample`` argument must reach a plate of its size: a model whose plate ignores
    the indices would scale the minibatch's log-likelihood by 1 instead of N/B (under-weighting the
    data against the prior) without a word."""
    for argument, value in zip(arguments, values):
        if not isinstance(argument, EpochSubsample):
            continue
        batch = int(value.shape[0])
        if not any(full == argument.num_data and size == batch for _, size, full in plates):
            seen = ", ".join(f"{name!r} of size {full if full is not None else size}" for name, size, full in sorted(plates, key=str))
            raise ConfigError(
                f"EpochSubsample(num_data={argument.num_data}, batch_size={argument.batch_size}) is passed but no plate "
                f"subsamples {argument.num_data} points {batch} at a time (plates seen: {seen or 'none'}); give the indices "
                f"to the data plate: pyro.plate('data', {argument.num_data}, subsample=indices)"
            )


def _warm_up(model, guide, loss, args, kwargs, restorer, validate: bool, checkpoint_params: dict) -> None:
    """Resume: take the run's first ``loss_and_grads`` call once, without an update, then put the
    params and the RNG state back as the checkpoint has them.

    The first call of a run draws random numbers that later calls do not (a random param init such
    as AutoGuides' ``init_to_median`` or ``pyro.param(name, lambda: torch.randn(...))``, the ELBO's
    ``max_plate_nesting`` guess, a JIT compile); drawn after the checkpoint's RNG state they would
    shift every later draw of the resumed run. (A loss's own state kept in the param store, e.g.
    TraceGraph's decaying-average baselines, is put back with the params.)"""
    rng = checkpoints.get_rng_state()
    with pyro.validation_enabled(validate), restorer, poutine.trace(param_only=True) as capture:
        try:
            loss.loss_and_grads(model, guide, *args, **kwargs)
        except ValueError as error:
            _explain_plate_mismatch(error, model, args, kwargs)
            raise
    store = pyro.get_param_store()
    with torch.no_grad():
        for site in capture.trace.nodes.values():
            site["value"].unconstrained().grad = None
        for name, value in checkpoint_params.items():
            if name in store:
                target = store.get_param(name).unconstrained()
                if target.shape == value.shape:
                    target.copy_(value.to(dtype=target.dtype, device=target.device))
    checkpoints.set_rng_state(rng)


def _explain_plate_mismatch(error: ValueError, model, args, kwargs) -> None:
    """Raise a one-line ``DataError`` naming the plate if ``error`` is an observed site whose data do
    not fit its plate (Pyro reports it as a broadcasting or plate shape error)."""
    text = str(error)
    if "Shape mismatch inside plate" not in text and "not broadcastable" not in text:
        return
    try:
        with pyro.validation_enabled(False), poutine.block():
            trace = poutine.trace(model).get_trace(*args, **kwargs)
    except Exception:
        return
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or not site["is_observed"] or f"'{name}'" not in text and f" {name} " not in text:
            continue
        frames = [frame for frame in site["cond_indep_stack"] if frame.vectorized]
        data_shape = tuple(torch.as_tensor(site["value"]).shape)
        plates = ", ".join(f"plate {frame.name!r} of size {frame.size} at dim {frame.dim}" for frame in frames) or "no plate"
        raise DataError(
            f"observed site {name!r} holds data of shape {data_shape} inside {plates}: the data do not match the "
            "plate; give the plate the data's size (pyro.plate(name, len(data))) or index the data by the plate's subsample"
        ) from error


def _apply(optim, params, value, reduce) -> float | None:
    grads = [p.grad for p in params if p.grad is not None]
    value = float(value)
    if reduce is not None:
        value = reduce(value, grads)
    finite = math.isfinite(value) and (not grads or bool(torch.isfinite(torch.stack([g.sum() for g in grads]).sum())))
    stepped = [p for p in params if p.grad is not None]  # a param the loss does not differentiate (a baseline) is not stepped
    if finite and stepped:
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
