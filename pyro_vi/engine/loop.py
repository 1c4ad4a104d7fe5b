"""One SVI engine for any Pyro model and guide: ``fit(model, guide, *args, num_steps=...)``.

``fit`` calls ``model(*args, **kwargs)`` and ``guide(*args, **kwargs)`` exactly as
``pyro.infer.SVI.step`` does, and never touches the data. One step is ``SVI.step`` spelled out::

    with poutine.trace(param_only=True):  loss = elbo.loss_and_grads(model, guide, *args, **kwargs)
    if loss and every gradient are finite: optim(params)     # else raise, or skip the step
    drop the gradients

This is the default, and it is SVI's step bit for bit on CPU (:class:`pyro_vi.engine.step.PlainStep`):
every step runs the model's and guide's Python. ``compile=True | "inductor" | "auto"`` opts in to a
recorded step (:mod:`pyro_vi.engine.compile`: ``jax.jit``'s contract, audited, its fall-backs reported
in ``FitResult.compile``). Around the step the engine keeps the guarantees of a long run, for every model:

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
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pyro
import pyro.optim
import torch
from pyro.infer import Trace_ELBO

from pyro_vi._interrupt import DeferredInterrupt
from pyro_vi.engine import arguments
from pyro_vi.engine import checkpoint as checkpoints
from pyro_vi.engine import optim as pyro_vi_optim
from pyro_vi.engine import resume as resuming
from pyro_vi.engine.step import CompileReport, make_step
from pyro_vi.engine.subsample import EpochSubsample, PerStep  # noqa: F401 - re-exported (older imports)
from pyro_vi.engine.subsample import check_subsamples, step_values
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
        compiled_steps: steps of this call taken by a recorded program (``compile``).
        compile: how this call's steps were taken (:class:`pyro_vi.engine.step.CompileReport`:
            compiled and plain steps, why steps fell back, the recording's one-off seconds).
        model, guide, args, kwargs: what was fitted, as given (for :meth:`draws` and :meth:`summary`).
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
    compile: CompileReport = CompileReport()
    model: Callable | None = None
    guide: Callable | None = None
    args: tuple = ()
    kwargs: dict | None = None

    def draws(self, num_samples: int = 1000):
        """``num_samples`` draws of every latent site of the model from the fitted guide at this
        result's params (whatever the param store holds now), one guide call per draw so any model's
        plates work: ``pyro_vi.engine.posterior.fitted_draws``. Returns a dict ``name -> (num_samples,
        *site shape)`` whose ``undrawn`` attribute lists the sites that could not be drawn, and why."""
        from pyro_vi.engine import posterior

        return posterior.fitted_draws(self, num_samples)

    def summary(self, num_samples: int = 1000) -> dict:
        """Mean, sd and 5/50/95% quantiles of each latent site from :meth:`draws`:
        ``name -> {"mean", "sd", "q5", "q50", "q95"}``, float64 tensors of the site's shape."""
        from pyro_vi.engine import posterior

        return posterior.fitted_summary(self, num_samples)

    def convergence(self) -> dict:
        """Whether the smoothed ELBO still moved by more than its noise over the last tenth of the
        run (``pyro_vi.engine.posterior.convergence``; its ``note`` says so in one line)."""
        from pyro_vi.engine import posterior

        return posterior.convergence(self.losses)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields
                          if name not in ("model", "guide", "args", "kwargs", "params", "losses"))
        return f"FitResult(params={sorted(self.params)}, losses=[{len(self.losses)} values], {shown})"


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
        compile: ``None`` or ``False`` (the default): SVI's step, every step running the model's
            Python. Opt-in record and replay (:mod:`pyro_vi.engine.compile.policy`, ``jax.jit``'s
            contract: the Python runs when the step is recorded, a replay repeats tensor operations
            only; audited, guarded, every fall-back reported in ``FitResult.compile``): ``True``
            records after a first plain step, or raises ``ConfigError`` naming why it cannot;
            ``"inductor"``: as ``True``, the program then compiled by inductor (fused kernels; equal
            to float rounding); ``"auto"``: records only where it applies and the run is long enough
            to repay it (the built-in families' choice), else plain, said in the report.
        data_parallel: a ``pyro_vi.engine.distributed.DataParallel`` for a torch.distributed run.

    Returns:
        FitResult.

    Raises:
        ConfigError, DataError, CheckpointError, OutputError: bad options, a model whose plate does
            not match its data, a bad checkpoint, an unwritable or already used checkpoint path.
        TrainingDivergedError: NaN/inf with ``on_nan="raise"``: the params are the last good step's.
        TrainingInterrupted: Ctrl-C or SIGTERM; raised after the checkpoint is written.
    """
    arguments.check_fit_options(num_steps, on_nan, seed, scheduler_every, checkpoint_every, checkpoint, resume)
    optim = arguments.check_fit_arguments(model, guide, args, kwargs, loss, optim)
    arguments.check_compile_mode(compile)
    if compile in (True, "inductor") and kwargs:
        raise ConfigError("compile records positional arguments only; pass the model's arguments positionally")
    loss = Trace_ELBO() if loss is None else loss
    optim = pyro_vi_optim.Adam({"lr": 1e-3}) if optim is None else optim
    saving = _Checkpoints(checkpoint, checkpoint_every, checkpoint_config, loss, optim, state, data_parallel)
    if checkpoint is not None and not resume:
        arguments.check_fresh_checkpoint(Path(checkpoint), overwrite, data_parallel)
    if resume:
        resumed = _Resumed(saving, loaded_checkpoint, num_steps, state)
        run = resumed.run
    else:
        resumed, run = None, resuming.Run(step=0, losses=[], skipped=0)
        if seed is not None:
            pyro.set_rng_seed(seed)
    if data_parallel is not None:
        data_parallel.seed_ranks()
    step = make_step(model, guide, loss, optim, compile, steps_left=num_steps - run.step, callback=callback,
                     kwargs=kwargs, data_parallel=data_parallel)
    schedule = _Schedule(optim, scheduler_every)
    if resumed is not None and run.step >= num_steps and num_steps > 0:
        resumed.restore_only(model, guide, loss, args, kwargs)  # nothing left to train: the trained values still go in
    interrupt, first_step, stopped_early = DeferredInterrupt(), run.step, False
    bar = _progress_bar(progress and saving.is_main, num_steps, run.step)
    start = time.perf_counter()
    try:
        with interrupt:
            while run.step < num_steps:
                step_args, step_kwargs = step_values(args, kwargs, run.step)
                if run.step == first_step:  # Pyro's checks, the checkpoint's params restored: the call's first step only
                    result = _first_step(step, resumed, model, guide, loss, args, kwargs, step_args, step_kwargs)
                else:
                    result = step(step_args, step_kwargs)
                if result.loss is None:
                    if on_nan == "raise":
                        raise _diverged(run.step + 1, checkpoint)
                    run.skipped += 1
                run.step += 1
                run.losses.append(math.nan if result.loss is None else result.loss)
                schedule.after(run)
                stopped_early = callback is not None and bool(callback(run.step, result.loss))
                if bar is not None:
                    _show(bar, run.step, num_steps, result.loss)
                if interrupt.requested if data_parallel is None else data_parallel.any(interrupt.requested):
                    saving.save(run)
                    raise _interrupted(run.step, num_steps, checkpoint)
                if stopped_early:
                    break
                if saving.due(run.step) and run.step < num_steps:
                    saving.save(run)
        if run.step > first_step:  # a resumed run with nothing left to do leaves its checkpoint as it is
            saving.save(run)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    taken = run.step - first_step
    report = step.report if step.compiled else CompileReport(False, 0, taken)
    params = {name: value.detach().clone() for name, value in pyro.get_param_store().items()}
    return FitResult(params, list(run.losses), run.step, taken, seconds, taken / seconds if seconds > 0 else 0.0,
                     run.skipped, stopped_early, report.compiled_steps, report,
                     model=model, guide=guide, args=tuple(args), kwargs=dict(kwargs))


def _first_step(step, resumed, model, guide, loss, args, kwargs, step_args, step_kwargs):
    """A call's first step: Pyro's validation on (as configured), a resumed run's params restored as
    the model creates them (after the warm-up draws), the subsample plates checked."""
    restorer = resuming.Restore({} if resumed is None else resumed.pending, active=resumed is not None)
    if resumed is not None:
        resuming.warm_up(model, guide, loss, step_args, step_kwargs, restorer, step.plain.validate if step.compiled
                         else step.validate, resumed.checkpoint_params)
    result = step(step_args, step_kwargs, first=True, restorer=restorer)
    check_subsamples([*args, *kwargs.values()], step_args + list(step_kwargs.values()), restorer.plates)
    if resumed is not None:
        resuming.refuse_unused(resumed.pending, resumed.path)
    return result


class _Checkpoints:
    """Where and when a run writes its checkpoint, and what identifies the run in it."""

    def __init__(self, path, every, config: dict | None, loss, optim, state: dict | None, data_parallel):
        self.path, self.optim, self.state = path, optim, state
        self.is_main = data_parallel is None or data_parallel.is_main
        # What identifies the run: the caller's description, else the loss's and optimizer's types.
        self.config = (
            {"model": dict(config.get("model", {})), "train": dict(config.get("train", {}))}
            if config is not None
            else {"model": {}, "train": {"loss": type(loss).__name__, "optim": type(optim).__name__}}
        )
        self.due = every if callable(every) else (lambda step: every and step % every == 0)

    def save(self, run: resuming.Run) -> None:
        if self.path is not None and self.is_main:
            checkpoints.save(self.path, self.config, {**run.as_dict(), "state": dict(self.state or {})}, self.optim)


class _Resumed:
    """A resumed run: its run state, optimizer state and RNG states put back; its params pending,
    restored in place as the model and guide create them on the call's first step."""

    def __init__(self, saving: _Checkpoints, loaded: dict | None, num_steps: int, state: dict | None):
        saved = checkpoints.load(saving.path, expected_config=saving.config, loaded=loaded)
        self.path = saving.path
        self.run = resuming.restore_run(saved, saving.optim, state, num_steps, saving.path)
        self.pending = dict(saved["param_store"]["params"])
        self.checkpoint_params = dict(self.pending)
        pyro.clear_param_store()

    def restore_only(self, model, guide, loss, args, kwargs) -> None:
        """Nothing left to train: put the checkpoint's values into the params the model and guide
        create (modules included), so the caller evaluates the trained model, not a fresh one."""
        step_args, step_kwargs = step_values(args, kwargs, self.run.step - 1)
        restorer = resuming.Restore(self.pending, active=True)
        resuming.warm_up(model, guide, loss, step_args, step_kwargs, restorer, pyro.infer.is_validation_enabled(),
                         self.checkpoint_params)
        resuming.refuse_unused(self.pending, self.path)


class _Schedule:
    """A ``PyroLRScheduler`` stepped every ``every`` steps (``ReduceLROnPlateau`` given the mean loss)."""

    def __init__(self, optim, every: int):
        self.optim, self.every = optim, every
        self.on = isinstance(optim, pyro.optim.PyroLRScheduler)
        self.plateau = self.on and optim.pt_scheduler_constructor is torch.optim.lr_scheduler.ReduceLROnPlateau

    def after(self, run: resuming.Run) -> None:
        if not self.on or run.step % self.every:
            return
        if not self.plateau:
            self.optim.step()
            return
        recent = [x for x in run.losses[-self.every:] if not math.isnan(x)]
        if recent:
            self.optim.step(sum(recent) / len(recent))


def _progress_bar(show: bool, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="svi", leave=False) if show else None


def _show(bar, step: int, num_steps: int, loss: float | None) -> None:
    bar.update(1)
    if loss is not None and (step % 10 == 0 or step == num_steps):
        bar.set_postfix(loss=f"{loss:.4g}", refresh=False)


def _diverged(step: int, checkpoint) -> TrainingDivergedError:
    error = TrainingDivergedError(
        f"the loss or a gradient became NaN/inf at step {step}; the parameters are those of the last good step"
        + (f" and checkpoint {str(checkpoint)!r} holds an earlier good step"
           if checkpoint is not None and Path(checkpoint).is_file() else "")
        + "; lower the learning rate or check the data"
    )
    error.step = step
    return error


def _interrupted(step: int, num_steps: int, checkpoint) -> TrainingInterrupted:
    error = TrainingInterrupted(
        f"interrupted at step {step} of {num_steps}"
        + (f"; checkpoint saved to {str(checkpoint)!r}: resume from it to continue" if checkpoint is not None else "")
    )
    error.step, error.checkpoint = step, checkpoint
    return error


