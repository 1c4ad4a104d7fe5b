"""The SVI training loop: minibatches from device-resident data, checkpoints, exact resume.

One step is Pyro's ``SVI.step`` spelled out (trace the params, ``loss_and_grads``, optimizer step,
zero the grads) with one addition: a NaN/inf loss or gradient is caught *before* the optimizer
touches the parameters. The model and guide take ``(x, indices, num_data, kl_weight)``; any Pyro
ELBO (or pyro_vi estimator) is the loss. With Pyro's validation on, only the first step of each
``fit`` call runs Pyro's checks (site shapes, model/guide match, distribution arguments); later
steps skip them, as the NaN/inf check covers what can change from step to step.

Checkpoints hold the param store, the optimizer state, the RNG states of torch/Python/NumPy, the
position inside the epoch (permutation and step) and the history, written atomically; resuming from
one continues the run bit for bit (on CPU) as if it had never stopped. Ctrl-C is deferred to the
end of the current step, then a checkpoint is written.
"""

from __future__ import annotations

import dataclasses
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
from torch import Tensor

from pyro_vi import checkpoint as checkpoints
from pyro_vi import compiled
from pyro_vi import distributed
from pyro_vi import optim
from pyro_vi.data import BINARIZATIONS, binarize, validate_images
from pyro_vi.errors import ConfigError, OutputError, TrainingDivergedError


@dataclasses.dataclass
class TrainConfig:
    """Options of the loop (the model's own options live with the model)."""

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    kl_warmup_epochs: float = 0.0  # linear warm-up of the KL weight from 0 to 1
    binarization: str = "dynamic"  # applied to each minibatch: dynamic | threshold | none
    seed: int = 0
    checkpoint_every_steps: int = 0  # 0: checkpoint at the end of each epoch only
    on_nan: str = "raise"  # raise | skip (skip a step whose loss or gradient is not finite)
    # Record the Trace_ELBO of the first step as a tensor program and replay it (pyro_vi.compiled):
    # same values and gradients, no Pyro tracing per step; needs a static, reparameterized model.
    compile: bool = False

    def validate(self, num_data: int) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be a positive integer, got {value}")
        if self.batch_size > num_data:
            raise ConfigError(f"batch size {self.batch_size} is larger than the {num_data} training points; lower it")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ConfigError(f"learning rate must be positive, got {self.learning_rate}")
        if not (self.kl_warmup_epochs >= 0 and math.isfinite(self.kl_warmup_epochs)):
            raise ConfigError(f"KL warm-up must be >= 0 epochs and finite, got {self.kl_warmup_epochs}")
        if not (isinstance(self.seed, int) and 0 <= self.seed <= 2**32 - 1):  # NumPy's seed range
            raise ConfigError(f"seed must be an integer from 0 to 2**32 - 1, got {self.seed}")
        if self.binarization not in BINARIZATIONS:
            raise ConfigError(f"unknown binarization {self.binarization!r}; choose one of {', '.join(BINARIZATIONS)}")
        if self.on_nan not in ("raise", "skip"):
            raise ConfigError(f"on_nan must be 'raise' or 'skip', got {self.on_nan!r}")
        if self.checkpoint_every_steps < 0:
            raise ConfigError(f"checkpoint_every_steps must be >= 0, got {self.checkpoint_every_steps}")

    def kl_weight(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        if self.kl_warmup_epochs <= 0:
            return 1.0
        # Weight of step ``step`` (0-based) counts that step as done, so the first is > 0:
        # poutine.scale needs a positive scale.
        return min(1.0, (epoch + (step + 1) / steps_per_epoch) / self.kl_warmup_epochs)


class FitResult(NamedTuple):
    """What a run did: per-epoch history and throughput."""

    history: list[dict]
    epochs: int  # epochs completed
    steps: int  # optimizer steps taken in this call
    seconds: float  # wall time of this call
    images_per_second: float  # training throughput (evaluation excluded)
    skipped_steps: int
    interrupted: bool


def fit(
    model: Callable,
    guide: Callable,
    train_images: Tensor,
    config: TrainConfig = TrainConfig(),
    *,
    loss=None,
    optimizer: pyro.optim.PyroOptim | None = None,
    evaluate: Callable[[int], dict] | None = None,
    modules: dict[str, torch.nn.Module] | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    checkpoint_config: dict | None = None,
    validate_data: Callable[[Tensor], None] | None = None,
    progress: bool = True,
    data_parallel: distributed.DataParallel | None = None,
) -> FitResult:
    """Maximize the ELBO of ``model``/``guide`` on ``train_images`` with minibatch SVI.

    Args:
        model, guide: callables taking ``(x, indices, num_data, kl_weight)``.
        train_images: ``(num_data, pixels)`` on the training device.
        config: loop options.
        loss: a Pyro ELBO object (default ``Trace_ELBO()``).
        optimizer: a Pyro optimizer (default ``pyro_vi.optim.Adam(lr=config.learning_rate)``: Pyro's
            Adam update in one foreach call over all parameters).
        evaluate: called after each epoch with the epoch number; its dict joins the history.
        modules: the ``nn.Module``s registered with ``pyro.module`` by name, re-bound to the
            restored param store on resume.
        checkpoint_path: where to write checkpoints (atomically); ``None`` writes none.
        resume: continue from ``checkpoint_path``.
        overwrite: without ``resume``, replace a checkpoint already at ``checkpoint_path``
            (otherwise that is an ``OutputError``: a forgotten ``resume`` must not lose a run).
        checkpoint_config: what identifies the model and data; a checkpoint whose config differs
            is refused on resume.
        validate_data: called once with ``train_images`` before training, raising ``DataError``
            if they do not suit the model (e.g. ``VAE.validate``: pixels per row, the likelihood's
            support). Default: the ``validate`` method of the object ``model`` is a method of, if any.
        progress: show a tqdm progress bar.
        data_parallel: this process's rank of a data-parallel run (``pyro_vi.distributed``): it
            takes its shard of each global batch, gradients are averaged over ranks before the
            optimizer step, and only rank 0 writes checkpoints. ``None``: one process.

    Returns:
        FitResult. History entries hold ``epoch``, ``train_elbo`` (per datapoint, with the KL
        weight of that epoch), ``kl_weight``, ``seconds`` and what ``evaluate`` returned.

    Raises:
        DataError: ``train_images`` is not a non-empty, finite ``(num_data, pixels)`` float tensor.
        ConfigError: an option of ``config`` cannot work.
        OutputError: ``checkpoint_path`` already holds a checkpoint and neither ``resume`` nor
            ``overwrite`` is set.
        TrainingDivergedError: a NaN/inf loss or gradient (with ``on_nan="raise"``); the
            parameters and the last checkpoint are those of the last good step.
    """
    from tqdm.auto import tqdm

    validate_images(train_images, name="train_images")  # shape, emptiness, NaN/inf: a DataError up front
    if validate_data is None:
        validate_data = getattr(getattr(model, "__self__", None), "validate", None)  # e.g. VAE.validate
    if validate_data is not None:
        validate_data(train_images)  # once: the steps stay free of full-data scans
    num_data = train_images.shape[0]
    config.validate(num_data)
    if data_parallel is not None:
        data_parallel.validate(config.batch_size)
    if checkpoint_path is not None and not (resume or overwrite):
        exists = Path(checkpoint_path).exists()
        if data_parallel is not None:
            exists = data_parallel.broadcast(exists)  # rank 0 alone writes: its file is the one at stake
        if exists:
            raise OutputError(
                f"{str(checkpoint_path)!r} already holds a checkpoint; pass resume=True to continue it "
                "or overwrite=True to start over"
            )
    loss = Trace_ELBO() if loss is None else loss
    optimizer = optim.Adam({"lr": config.learning_rate}) if optimizer is None else optimizer
    validate_steps = pyro.infer.is_validation_enabled()  # if on: the first step checks, later steps skip it
    device = train_images.device
    steps_per_epoch = num_data // config.batch_size  # drop the ragged last batch
    saved_config = {"train": dataclasses.asdict(config), "model": checkpoint_config or {}}

    state = _RunState(history=[], epoch=0, step=0, permutation=None, epoch_loss=0.0)
    if resume:
        state = _restore(checkpoint_path, saved_config, optimizer, modules, device)
    else:
        pyro.set_rng_seed(config.seed)
    if data_parallel is not None:
        data_parallel.seed_ranks()  # the same data order on every rank, its own noise

    def save() -> None:
        if checkpoint_path is not None and (data_parallel is None or data_parallel.is_main):
            checkpoints.save(checkpoint_path, saved_config, state._asdict(), optimizer)

    compiled_loss = None  # with config.compile: the recorded loss, after the first (plain) step
    interrupt = _DeferredInterrupt()
    start, train_seconds, images_seen, steps_taken, skipped = time.perf_counter(), 0.0, 0, 0, 0
    with interrupt:
        while state.epoch < config.epochs:
            if state.permutation is None:
                if data_parallel is None:
                    permutation = torch.randperm(num_data, device=device)
                else:
                    permutation = data_parallel.permutation(num_data, config.seed, state.epoch, device)
                state = state._replace(permutation=permutation, step=0, epoch_loss=0.0)
            epoch_start = time.perf_counter()
            bar = (
                tqdm(total=steps_per_epoch, initial=state.step, desc=f"epoch {state.epoch + 1}/{config.epochs}", leave=False)
                if progress
                else _NoProgressBar()  # a disabled tqdm still costs ~20 us per epoch: tiny models notice
            )
            while state.step < steps_per_epoch:
                indices = state.permutation[state.step * config.batch_size : (state.step + 1) * config.batch_size]
                if data_parallel is not None:
                    indices = data_parallel.shard(indices)
                x = binarize(train_images[indices], config.binarization)
                kl_weight = config.kl_weight(state.epoch, state.step, steps_per_epoch)
                reduce = None if data_parallel is None else data_parallel.reduce
                if config.compile:  # a tensor, so the recorded program reads each step's weight
                    kl_weight = x.new_tensor(kl_weight)
                step_args = (x, indices, num_data, kl_weight)
                if compiled_loss is not None:
                    step_loss = _compiled_step(compiled_loss, optimizer, step_args, reduce)
                else:
                    with pyro.validation_enabled(validate_steps and steps_taken == 0):
                        step_loss = _step(model, guide, loss, optimizer, step_args, reduce)
                    if config.compile:  # params exist now: record the step's program once
                        compiled_loss = compiled.recorded_loss(model, guide, step_args, loss)
                if step_loss is None:
                    if config.on_nan == "raise":
                        bar.close()
                        raise TrainingDivergedError(
                            f"the loss or a gradient became NaN/inf at epoch {state.epoch + 1}, step {state.step + 1}; "
                            "parameters are those of the last good step"
                            + (
                                f" and the last good checkpoint {checkpoint_path} is intact"
                                if checkpoint_path is not None and Path(checkpoint_path).exists()
                                else ""
                            )
                            + "; lower the learning rate or check the data"
                        )
                    skipped += 1
                else:
                    state = state._replace(epoch_loss=state.epoch_loss + step_loss)
                state = state._replace(step=state.step + 1)
                steps_taken += 1
                images_seen += x.shape[0] * (1 if data_parallel is None else data_parallel.world_size)  # global
                bar.update(1)
                if progress and state.step % 10 == 0 and step_loss is not None:
                    bar.set_postfix(loss=f"{step_loss / num_data:.3f}")
                stop = interrupt.requested if data_parallel is None else data_parallel.any(interrupt.requested)
                if stop:
                    train_seconds += time.perf_counter() - epoch_start
                    bar.close()
                    save()
                    return _result(state, steps_taken, start, train_seconds, images_seen, skipped, True)
                if config.checkpoint_every_steps and steps_taken % config.checkpoint_every_steps == 0:
                    save()
            bar.close()
            train_seconds += time.perf_counter() - epoch_start
            record = {
                "epoch": state.epoch + 1,
                "train_elbo": -state.epoch_loss / max(1, steps_per_epoch - skipped) / num_data,
                "kl_weight": config.kl_weight(state.epoch, steps_per_epoch - 1, steps_per_epoch),
                "seconds": time.perf_counter() - start,
            }
            if evaluate is not None:
                record.update(evaluate(state.epoch + 1))
            state = state._replace(history=state.history + [record], epoch=state.epoch + 1, permutation=None, step=0)
            save()
    return _result(state, steps_taken, start, train_seconds, images_seen, skipped, False)


class _RunState(NamedTuple):
    history: list
    epoch: int  # epochs completed
    step: int  # steps done in the current epoch
    permutation: Tensor | None  # the current epoch's order of the data
    epoch_loss: float  # sum of step losses in the current epoch


def _step(model, guide, loss, optimizer, args, reduce=None) -> float | None:
    """One SVI step; returns the loss, or ``None`` (and no update) if anything is not finite.

    ``reduce(loss, grads)``, if given, averages the loss and the gradients over data-parallel ranks
    (in place) before the check, so every rank takes, or skips, the same step."""
    with poutine.trace(param_only=True) as capture:
        value = loss.loss_and_grads(model, guide, *args)
    params = [site["value"].unconstrained() for site in capture.trace.nodes.values()]
    return _apply(optimizer, params, value, reduce)


def _compiled_step(compiled_loss, optimizer, args, reduce=None) -> float | None:
    """``_step`` with the recorded program (``pyro_vi.compiled``) in place of ``loss_and_grads``."""
    value = compiled_loss(*args)
    value.backward()
    return _apply(optimizer, compiled_loss.params, float(value.detach()), reduce)


def _apply(optimizer, params, value, reduce) -> float | None:
    grads = [p.grad for p in params if p.grad is not None]
    if reduce is not None:
        value = reduce(value, grads)
    finite = math.isfinite(value) and (not grads or bool(torch.isfinite(torch.stack([g.sum() for g in grads]).sum())))
    if finite:
        optimizer(params)
    for p in params:  # drop the gradients, not zero them: the next backward writes them instead of adding
        p.grad = None
    return float(value) if finite else None


def _result(state, steps, start, train_seconds, images, skipped, interrupted) -> FitResult:
    return FitResult(
        history=state.history,
        epochs=state.epoch,
        steps=steps,
        seconds=time.perf_counter() - start,
        images_per_second=images / train_seconds if train_seconds > 0 else 0.0,
        skipped_steps=skipped,
        interrupted=interrupted,
    )


def _restore(path, saved_config, optimizer, modules, device) -> _RunState:
    saved = checkpoints.load(path, expected_config=saved_config)
    pyro.clear_param_store()
    store = pyro.get_param_store()
    params = {name: value.to(device).detach().requires_grad_() for name, value in saved["param_store"]["params"].items()}
    store.set_state({"params": params, "constraints": saved["param_store"]["constraints"]})
    for name, module in (modules or {}).items():
        pyro.module(name, module, update_module_params=True)
    optimizer.set_state(saved["optimizer"])
    checkpoints.set_rng_state(saved["rng"])
    run = saved["run"]
    permutation = run["permutation"].to(device) if run["permutation"] is not None else None
    return _RunState(run["history"], run["epoch"], run["step"], permutation, run["epoch_loss"])


class _DeferredInterrupt:
    """Turn Ctrl-C into a flag checked between steps, so a step is never cut in half.

    SIGTERM (a scheduler's preemption, torchrun stopping its workers) is treated the same way."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous: Any = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in self._SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for number, previous in (self._previous or {}).items():
            signal.signal(number, previous)
        return False


class _NoProgressBar:
    """What the loop calls on a tqdm bar, doing nothing (``progress=False``)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass
