"""``fit_many``: R independent SVI runs of one model and guide, advanced together as one batched step.

Run ``r`` is seeded from ``(seed, r)`` (:func:`run_seeds`: one seed for its initial params, one for
its noise). Its params are created as ``fit(seed=...)`` creates them: the param store cleared, the
global generators seeded, the guide run and the model replayed against it; the R runs' params are
then stacked along a leading run dimension and every step is one ``vmap`` pass over them
(:mod:`pyro_vi.engine.many_step`)::

    grads, losses = vmap(grad_and_value(loss of one run))(params, per-run noise)
    per run: finite loss and gradients ? Adam update : freeze the run (on_nan="raise") or skip the step

Where the batched step does not apply (a loss that reads values with ``.item()``, an estimator that
keeps state between steps, an optimizer other than Adam/ClippedAdam, a model ``vmap`` cannot follow:
data-dependent control flow, enumeration), the R runs are trained one after another with
:func:`pyro_vi.fit`, each seeded as its batched counterpart would be initialized, and the result's
``fallback_reason`` says why (also as a :class:`BatchingFallback` warning). Either way the runs are
independent draws of the same training procedure, so results agree in distribution.

A run whose loss or gradient turns NaN/inf is frozen at its last good params (``on_nan="raise"``;
its later losses are NaN, ``diverged`` marks it) or skips that step (``on_nan="skip"``); the other
runs carry on untouched. Checkpoints hold the whole batch (stacked params, Adam state, each run's
generator), so ``resume=True`` continues bit for bit; Ctrl-C / SIGTERM writes one at the end of the
current step and raises ``TrainingInterrupted``.

Modules registered with ``pyro.module`` start every run from the weights the module holds (only
``pyro.param`` initial values, AutoGuides' included, are drawn per run).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyro
import torch
from torch import Tensor
from torch.distributions import transform_to

from pyro_vi._interrupt import DeferredInterrupt
from pyro_vi.engine import arguments, many_adam, many_step, params, rng
from pyro_vi.engine import checkpoint as checkpoints
from pyro_vi.engine.many_sequential import sequential
from pyro_vi.errors import CheckpointError, ConfigError, TrainingDivergedError, TrainingInterrupted

__all__ = ["BatchingFallback", "ManyResult", "fit_many", "run_seeds"]


class BatchingFallback(UserWarning):
    """``fit_many`` trains its runs one after another: the batched step does not apply (the message says why)."""


class ManyResult(NamedTuple):
    """What ``fit_many`` did.

    Attributes:
        params: every param, constrained, stacked over runs: name -> tensor of shape ``(R, ...)``.
        losses: ``(R, num_steps)`` float64 losses; NaN for a skipped step and after a run froze.
        seconds: wall time of this call.
        batched: whether the runs were advanced as one batched step.
        fallback_reason: why not (``None`` when batched).
        seeds: each run's ``(init seed, noise seed)`` (:func:`run_seeds`).
        diverged: ``(R,)`` bool, runs frozen by a NaN/inf (``on_nan="raise"``).
        skipped_steps: ``(R,)`` steps each run skipped (``on_nan="skip"``).
        steps: steps of the batch completed (resumed ones included).
        steps_this_call: steps taken by this call.
        times: ``(num_steps,)`` float64: wall seconds from the call's start to the end of each step (one
            after another: the sum over runs of each run's own seconds to that step, what the R runs
            cost to reach it); 0 for the steps a resumed call did not take.
        per_run_streams: every random draw of a run came from its own generator (so a run's numbers do
            not depend on the batch it shares); ``False`` when a sampler outside Gaussians and Gammas
            drew from the global generator.
    """

    params: dict
    losses: Tensor
    seconds: float
    batched: bool
    fallback_reason: str | None
    seeds: list
    diverged: Tensor
    skipped_steps: Tensor
    steps: int
    steps_this_call: int
    per_run_streams: bool
    times: Tensor


def run_seeds(seed: int, runs: int) -> list[tuple[int, int]]:
    """Run ``r``'s ``(init seed, noise seed)``, from NumPy's ``SeedSequence([seed, r])``: independent
    streams, and run r's seeds do not depend on how many runs there are."""
    return [tuple(int(s) for s in np.random.SeedSequence([seed, r]).generate_state(2)) for r in range(runs)]


def fit_many(
    model: Callable,
    guide: Callable,
    *args,
    runs: int,
    num_steps: int,
    loss=None,
    optim=None,
    seed: int = 0,
    on_nan: str = "raise",
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    batched: bool | None = None,
    **kwargs,
) -> ManyResult:
    """Train ``runs`` independent SVI runs of ``model``/``guide``, batched where the model allows.

    Args:
        model, guide: any Pyro model and guide (AutoGuides included), called as ``fit`` calls them.
        \\*args, \\*\\*kwargs: passed unchanged to both at every step.
        runs: how many runs (R).
        num_steps: steps of every run.
        loss: ``Trace_ELBO()`` (default) or a pyro_vi estimator; batched unless it keeps state.
        optim: ``pyro_vi.engine.optim.Adam`` / ``pyro.optim.Adam`` / ``pyro.optim.ClippedAdam`` with one
            dict of options (batched), or any Pyro optimizer (one run after another); default Adam lr 1e-3.
        seed: run ``r`` is seeded from ``(seed, r)``.
        on_nan: a run whose loss or gradient is NaN/inf is frozen (``"raise"``; ``TrainingDivergedError``
            if every run froze) or skips the step (``"skip"``).
        progress: a tqdm bar with the mean loss of the runs still training.
        checkpoint: where to write the batch's checkpoint (one-after-another runs: one file per run,
            ``NAME.runR.pt``); ``None``: none.
        checkpoint_every: also write one every this many steps (0: at the end and on interrupt).
        resume: continue from ``checkpoint``.
        overwrite: without ``resume``, replace a checkpoint already there.
        batched: ``None`` batch where possible; ``True`` batch or raise ``ConfigError``; ``False``
            one run after another.

    Returns:
        ManyResult.

    Raises:
        ConfigError, CheckpointError, OutputError: bad options or checkpoint.
        TrainingDivergedError: every run diverged (``on_nan="raise"``).
        TrainingInterrupted: Ctrl-C or SIGTERM, after the checkpoint is written.
    """
    arguments.check_fit_options(num_steps, on_nan, seed, 1, checkpoint_every, checkpoint, resume)
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ConfigError(f"runs must be a positive integer, got {runs!r}")
    if seed is None:
        raise ConfigError("fit_many needs an integer seed (run r is seeded from (seed, r))")
    seeds = run_seeds(int(seed), runs)
    reason, step = None, None
    if batched is False:
        reason = "batched=False"
    else:
        try:
            step = _Batch.build(model, guide, args, kwargs, loss, optim, seeds)
        except many_step.CannotBatch as refusal:
            reason = str(refusal)
    if reason is not None:
        if batched:
            raise ConfigError(f"fit_many cannot batch this model: {reason}; pass batched=None to run one after another")
        if batched is None:
            warnings.warn(f"fit_many runs the {runs} runs one after another: {reason}", BatchingFallback, stacklevel=2)
        return ManyResult(**sequential(model, guide, args, kwargs, runs, num_steps, loss, optim, seeds, on_nan, progress,
                           checkpoint, checkpoint_every, resume, overwrite, reason))
    try:
        return step.train(num_steps, on_nan, progress, checkpoint, checkpoint_every, resume, overwrite, seed)
    except many_step.CannotBatch as refusal:  # vmap refused the model on the first pass: nothing was changed
        if batched:
            raise ConfigError(f"fit_many cannot batch this model: {refusal}; pass batched=None to run one after another") from None
        warnings.warn(f"fit_many runs the {runs} runs one after another: {refusal}", BatchingFallback, stacklevel=2)
        return ManyResult(**sequential(model, guide, args, kwargs, runs, num_steps, loss, optim, seeds, on_nan, progress,
                           checkpoint, checkpoint_every, resume, overwrite, str(refusal)))


# -- the batched runs ----------------------------------------------------------------------------


class _Batch:
    """Stacked params, their Adam state and each run's generator, advanced by one batched step."""

    def __init__(self, step, names, constraints, values, adam, generators, loss, optim, seeds):
        self.step, self.names, self.constraints, self.seeds = step, names, constraints, seeds
        self.values, self.adam, self.generators = values, adam, generators
        self.config = {"model": {}, "train": {"loss": type(loss).__name__, "optim": type(optim).__name__,
                                              "runs": len(generators), "batched": True}}

    @classmethod
    def build(cls, model, guide, args, kwargs, loss, optim, seeds) -> _Batch:
        """Each run's params as ``fit`` would create them, stacked, and the checked step.

        Raises:
            many_step.CannotBatch: the loss, optimizer or model does not allow the batched step.
        """
        settings = many_adam.adam_settings(optim)
        many_step.loss_function(loss)  # refuses early, before any run is initialized
        outer = params.snapshot()
        per_run, names, modules = [], None, {}
        try:
            for init_seed, _ in seeds:
                pyro.clear_param_store()
                pyro.set_rng_seed(init_seed)
                with params.recording_modules() as recorded, torch.no_grad():
                    try:
                        found, _ = params.discover(model, guide, *args, **kwargs)
                    except ConfigError:
                        raise
                    except Exception as error:
                        raise many_step.CannotBatch(f"the model raised on its first call ({type(error).__name__})") from error
                modules.update(recorded)
                if names is not None and found != names:
                    raise many_step.CannotBatch("the runs create different params")
                names = found
                per_run.append([params.unconstrained(name).detach().clone() for name in names])
            constraints = [params.constraint(name) for name in names]
            values = tuple(torch.stack([run[i] for run in per_run]) for i in range(len(names)))
            step = many_step.BatchedStep(model, guide, args, kwargs, loss, names, modules)
            step.probe(tuple(v[-1] for v in values))  # on the last run's params (the store holds them)
            slot = params.StoreSlot()  # the store the batched step runs in: the params' names and constraints
            slot._state = params.snapshot()
        finally:
            params.restore(outer)
        generators = [torch.Generator(device=values[0].device).manual_seed(noise_seed) for _, noise_seed in seeds]
        batch = cls(step, names, constraints, values, many_adam.BatchedAdam(settings, values), generators, loss, optim, seeds)
        batch.slot = slot
        return batch

    def _noise(self) -> tuple[Tensor, Tensor]:
        dtype = self.values[0].dtype if self.values[0].is_floating_point() else torch.get_default_dtype()
        device = self.values[0].device
        normals = torch.stack([torch.randn(self.step.num_normals, generator=g, dtype=dtype, device=device) for g in self.generators])
        uniforms = torch.stack([torch.rand(self.step.num_uniforms, generator=g, dtype=dtype, device=device) for g in self.generators])
        return normals, uniforms

    def _save(self, path, step, losses, diverged, skipped) -> None:
        slot = params.StoreSlot()
        with slot.active():
            pyro.clear_param_store()
            store = pyro.get_param_store()
            for name, constraint, value in zip(self.names, self.constraints, self.values):
                store.set_state({"params": {name: value.detach()}, "constraints": {name: constraint}})
            # fit's "losses"/"skipped" are one run's list and count; the batch's are per run, under their own keys
            run = {"step": step, "batch_losses": losses[:, :step].clone(), "diverged": diverged.clone(), "batch_skipped": skipped.clone(),
                   "adam_steps": self.adam.steps.clone(), "generators": torch.stack([g.get_state() for g in self.generators]),
                   "randomness": self.step.randomness}
            checkpoints.save(path, self.config, run, _StateOf(self.adam.state(self.names)))

    def _load(self, path, num_steps) -> tuple[int, Tensor, Tensor, Tensor]:
        saved = checkpoints.load(path, expected_config=self.config)
        run = saved["run"]
        stored = saved["param_store"]["params"]
        if sorted(stored) != sorted(self.names) or any(stored[n].shape != v.shape for n, v in zip(self.names, self.values)):
            raise ConfigError(f"checkpoint {str(path)!r} holds other params than this batch; resume with the model that wrote it")
        _check_batch_run(path, run, len(self.generators))
        self.values = tuple(stored[name].clone() for name in self.names)
        self.adam.load(self.names, saved["optimizer"], run["adam_steps"])
        for generator, state in zip(self.generators, run["generators"]):
            generator.set_state(state.clone())  # a row of the stacked states is a view; set_state wants its own storage
        self.step.randomness = run["randomness"]
        self.step.per_run_streams = run["randomness"] == "error"
        rng.set_state(saved["rng"])
        losses = torch.full((len(self.generators), max(num_steps, run["step"])), math.nan, dtype=torch.float64)
        losses[:, :run["step"]] = run["batch_losses"]
        return run["step"], losses, run["diverged"].clone(), run["batch_skipped"].clone()

    def train(self, num_steps, on_nan, progress, checkpoint, checkpoint_every, resume, overwrite, seed) -> ManyResult:
        from tqdm.auto import tqdm

        runs = len(self.generators)
        if checkpoint is not None and not resume:
            arguments.check_fresh_checkpoint(Path(checkpoint), overwrite, None)
        if resume:
            done, losses, diverged, skipped = self._load(checkpoint, num_steps)
        else:
            done, diverged = 0, torch.zeros(runs, dtype=torch.bool)
            losses = torch.full((runs, num_steps), math.nan, dtype=torch.float64)
            skipped = torch.zeros(runs, dtype=torch.int64)
            pyro.set_rng_seed(int(seed))  # the global stream, for samplers the tape does not cover
        first = done
        interrupt = DeferredInterrupt()
        bar = tqdm(total=num_steps, initial=done, desc=f"svi x{runs}", leave=False) if progress else None
        start, times = time.perf_counter(), []
        try:
            with interrupt, self.slot.active(), many_step.taped_samplers():
                while done < num_steps:
                    normals, uniforms = self._noise()
                    try:
                        grads, values = self.step.gradients(self.values, normals, uniforms)
                    except many_step.CannotBatch as refusal:
                        if done == first and not resume:
                            raise
                        raise RuntimeError(f"the batched step failed at step {done + 1}: {refusal}") from refusal
                    values = values.detach().to(torch.float64)
                    finite = torch.isfinite(values)
                    for grad in grads:
                        finite &= torch.isfinite(grad.reshape(runs, -1)).all(-1)
                    active = finite & ~diverged
                    self.values = self.adam.update(self.values, tuple(g.detach() for g in grads), active)
                    losses[:, done] = torch.where(active, values, torch.full_like(values, math.nan))
                    if on_nan == "raise":
                        diverged |= ~finite
                    else:
                        skipped += (~finite & ~diverged).to(torch.int64)
                    done += 1
                    times.append(time.perf_counter() - start)
                    if bar is not None:
                        bar.update(1)
                        if done % 10 == 0 or done == num_steps:
                            alive = losses[:, done - 1][active]
                            bar.set_postfix(loss=f"{alive.mean().item():.4g}" if len(alive) else "nan", refresh=False)
                    if bool(diverged.all()):
                        raise TrainingDivergedError(
                            f"every one of the {runs} runs became NaN/inf (the last at step {done}); lower the learning rate or check the data"
                        )
                    if interrupt.requested:
                        if checkpoint is not None:
                            self._save(checkpoint, done, losses, diverged, skipped)
                        interrupted = TrainingInterrupted(
                            f"interrupted at step {done} of {num_steps}"
                            + (f"; checkpoint saved to {str(checkpoint)!r}: resume from it to continue" if checkpoint is not None else "")
                        )
                        interrupted.step, interrupted.checkpoint = done, checkpoint
                        raise interrupted
                    if checkpoint is not None and checkpoint_every and done % checkpoint_every == 0 and done < num_steps:
                        self._save(checkpoint, done, losses, diverged, skipped)
            if checkpoint is not None and done > first:
                self._save(checkpoint, done, losses, diverged, skipped)
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - start
        constrained = {name: transform_to(c)(v).detach() for name, c, v in zip(self.names, self.constraints, self.values)}
        return ManyResult(constrained, losses[:, :num_steps], seconds, True, None, self.seeds, diverged, skipped, done,
                          done - first, self.step.per_run_streams, torch.tensor([0.0] * first + times, dtype=torch.float64)[:num_steps])


def _check_batch_run(path, run: dict, runs: int) -> None:
    """The batch's own run entries, each of its type and shape, before any is used."""
    step = run.get("step")
    expected = {"batch_losses": ((runs, step), torch.float64), "diverged": ((runs,), torch.bool),
                "batch_skipped": ((runs,), torch.int64), "adam_steps": ((runs,), torch.int64)}
    for key, (shape, dtype) in expected.items():
        value = run.get(key)
        if not torch.is_tensor(value) or tuple(value.shape) != shape or value.dtype != dtype:
            raise CheckpointError(f"checkpoint {str(path)!r}: run {key!r} is not a {shape} {dtype} tensor; "
                                  "it is damaged or was not written by fit_many with this many runs")
    states = run.get("generators")
    if not torch.is_tensor(states) or states.dtype != torch.uint8 or states.dim() != 2 or states.shape[0] != runs \
            or run.get("randomness") not in ("error", "different"):
        raise CheckpointError(f"checkpoint {str(path)!r}: its generator states are damaged or for another number of runs")


class _StateOf:
    """What ``checkpoint.save`` asks of an optimizer: ``get_state()``."""

    def __init__(self, state: dict):
        self._state = state

    def get_state(self) -> dict:
        return self._state
