"""Epochs of image minibatches for the VAE family, on the general engine (``pyro_vi.engine``).

The VAE's model and guide take ``(x, indices, num_data, kl_weight)``. This module is the VAE's data
path and schedule, nothing more: each step's ``indices`` come from ``engine.EpochSubsample`` (every
image once per epoch, order from the seed), ``x`` is those images binarized afresh
(``binarization``: dynamic | threshold | none), and ``kl_weight`` rises linearly over
``kl_warmup_epochs`` (KL annealing). After each epoch, the mean training ELBO and ``evaluate``'s
numbers join the history, which the engine saves in its checkpoints: the loop's guarantees (NaN/inf
check before the update, atomic checkpoints, exact resume, deferred Ctrl-C that checkpoints and
raises ``TrainingInterrupted``, data parallelism) are the engine's.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from pathlib import Path
from typing import Callable, NamedTuple

import pyro
import pyro.optim
import torch
from pyro.infer import Trace_ELBO
from torch import Tensor

from pyro_vi import engine
from pyro_vi.engine import distributed
from pyro_vi.engine import optim
from pyro_vi.vae.data import BINARIZATIONS, binarize, validate_images
from pyro_vi.errors import ConfigError, DataError, TrainingDivergedError


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
    # Record the Trace_ELBO of the first step as a tensor program and replay it (pyro_vi.engine.compiled):
    # same values and gradients, no Pyro tracing per step; needs a static, reparameterized model.
    compile: bool = False

    def validate(self, num_data: int) -> None:
        for name in ("epochs", "batch_size", "seed", "checkpoint_every_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ConfigError(f"{name.replace('_', ' ')} must be an integer, got {value!r} ({type(value).__name__})")
            setattr(self, name, int(value))  # NumPy integers too
        for name in ("learning_rate", "kl_warmup_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ConfigError(f"{name.replace('_', ' ')} must be a number, got {value!r} ({type(value).__name__})")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be a positive integer, got {getattr(self, name)}")
        if self.batch_size > num_data:
            raise ConfigError(f"batch size {self.batch_size} is larger than the {num_data} training points; lower it")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ConfigError(f"learning rate must be positive and finite, got {self.learning_rate}")
        if not (self.kl_warmup_epochs >= 0 and math.isfinite(self.kl_warmup_epochs)):
            raise ConfigError(f"KL warm-up must be >= 0 epochs and finite, got {self.kl_warmup_epochs}")
        if not 0 <= self.seed <= 2**32 - 1:  # NumPy's seed range
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


class ImageFitResult(NamedTuple):
    """What a run did: per-epoch history and throughput."""

    history: list[dict]
    epochs: int  # epochs completed
    steps: int  # optimizer steps taken in this call
    seconds: float  # wall time of this call
    images_per_second: float  # training throughput (evaluation excluded)
    skipped_steps: int  # steps of the whole run dropped for NaN/inf (on_nan="skip")


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
) -> ImageFitResult:
    """Maximize the ELBO of ``model``/``guide`` on ``train_images``, epoch by epoch of minibatches.

    Args:
        model, guide: callables taking ``(x, indices, num_data, kl_weight)``.
        train_images: ``(num_data, pixels)`` on the training device.
        config: loop options.
        loss: a Pyro ELBO object (default ``Trace_ELBO()``).
        optimizer: a Pyro optimizer (default ``pyro_vi.engine.optim.Adam(lr=config.learning_rate)``).
        evaluate: called after each epoch with the epoch number; its dict joins the history.
        modules: unused (kept for callers): the engine restores ``pyro.module`` parameters in place.
        checkpoint_path: where to write checkpoints (atomically); ``None`` writes none.
        resume: continue from ``checkpoint_path``.
        overwrite: without ``resume``, replace a checkpoint already at ``checkpoint_path``.
        checkpoint_config: what identifies the model and data; a checkpoint whose config differs
            is refused on resume.
        validate_data: called once with ``train_images`` before training (default: the
            ``validate`` method of the object ``model`` is a method of, e.g. ``VAE.validate``).
        progress: show a tqdm progress bar.
        data_parallel: this process's rank of a data-parallel run (``pyro_vi.engine.distributed``).

    Returns:
        ImageFitResult. History entries hold ``epoch``, ``train_elbo`` (per datapoint, mean over the
        epoch's good steps, with the KL weight of that epoch), ``kl_weight``, ``seconds`` and what
        ``evaluate`` returned.

    Raises:
        DataError, ConfigError, OutputError, CheckpointError: as ``engine.fit``.
        TrainingDivergedError: a NaN/inf loss or gradient (with ``on_nan="raise"``).
        TrainingInterrupted: Ctrl-C or SIGTERM, after the checkpoint is written.
    """
    validate_images(train_images, name="train_images")  # shape, emptiness, NaN/inf: a DataError up front
    owner = getattr(model, "__self__", None)
    network_dtype = next(owner.parameters()).dtype if isinstance(owner, torch.nn.Module) and any(True for _ in owner.parameters()) else None
    if network_dtype is not None and train_images.dtype != network_dtype:
        raise DataError(
            f"train_images are {train_images.dtype} but the networks are {network_dtype}; "
            f"convert one to the other (images.to({network_dtype}) or model.to({train_images.dtype}))"
        )
    if train_images.requires_grad:
        raise DataError("train_images require grad; pass train_images.detach() (training must not write the data's .grad)")
    if validate_data is None:
        validate_data = getattr(getattr(model, "__self__", None), "validate", None)  # e.g. VAE.validate
    if validate_data is not None:
        validate_data(train_images)  # once: the steps stay free of full-data scans
    num_data = train_images.shape[0]
    config.validate(num_data)
    optimizer = optim.Adam({"lr": config.learning_rate}) if optimizer is None else optimizer
    indices = engine.EpochSubsample(num_data, config.batch_size, config.seed, train_images.device, data_parallel=data_parallel)
    steps_per_epoch = indices.steps_per_epoch

    def images(step: int) -> Tensor:
        return binarize(train_images[indices(step)], config.binarization)

    def kl_weight(step: int):
        epoch, position = indices.epoch_of(step)
        weight = config.kl_weight(epoch, position, steps_per_epoch)
        return train_images.new_tensor(weight) if config.compile else weight  # a tensor: the recording reads it

    # The run's own state, saved in every checkpoint: the history and the current epoch's sums.
    state: dict = {"history": [], "epoch_loss": 0.0, "epoch_good_steps": 0, "epoch_skipped": 0, "evaluate_seconds": 0.0}
    start = time.perf_counter()

    def end_of_step(step: int, loss_value: float | None) -> None:
        if loss_value is None:
            state["epoch_skipped"] += 1
        else:
            state["epoch_loss"] += loss_value
            state["epoch_good_steps"] += 1
        if step % steps_per_epoch:
            return
        epoch = step // steps_per_epoch
        record = {
            "epoch": epoch,
            # Mean over the epoch's good steps: skipped steps of this epoch only (not the whole run's).
            "train_elbo": -state["epoch_loss"] / max(1, state["epoch_good_steps"]) / num_data,
            "kl_weight": config.kl_weight(epoch - 1, steps_per_epoch - 1, steps_per_epoch),
            "skipped_steps": state["epoch_skipped"],
            "seconds": time.perf_counter() - start,
        }
        if evaluate is not None:
            evaluate_start = time.perf_counter()
            record.update(evaluate(epoch))
            state["evaluate_seconds"] += time.perf_counter() - evaluate_start
        state["history"] = state["history"] + [record]
        state.update(epoch_loss=0.0, epoch_good_steps=0, epoch_skipped=0)

    every = config.checkpoint_every_steps

    def checkpoint_due(step: int) -> bool:
        return step % steps_per_epoch == 0 or bool(every and step % every == 0)

    try:
        result = engine.fit(
            model,
            guide,
            engine.PerStep(images),
            indices,
            num_data,
            engine.PerStep(kl_weight),
            num_steps=config.epochs * steps_per_epoch,
            loss=Trace_ELBO() if loss is None else loss,
            optim=optimizer,
            seed=config.seed,
            callback=end_of_step,
            checkpoint=checkpoint_path,
            checkpoint_every=checkpoint_due,
            checkpoint_config={"train": dataclasses.asdict(config), "model": checkpoint_config or {}},
            resume=resume,
            overwrite=overwrite,
            state=state,
            on_nan=config.on_nan,
            progress=progress,
            compile=config.compile,
            data_parallel=data_parallel,
        )
    except TrainingDivergedError as diverged:
        epoch, position = divmod(diverged.step - 1, steps_per_epoch)
        raise TrainingDivergedError(
            str(diverged).replace(f"at step {diverged.step}", f"at epoch {epoch + 1}, step {position + 1}", 1)
        ) from None
    train_seconds = max(result.seconds - state.get("evaluate_seconds", 0.0), 1e-12)
    # Images per second of this call: each step takes one global batch (all ranks together).
    images_per_second = result.steps_this_call * config.batch_size / train_seconds if result.steps_this_call else 0.0
    return ImageFitResult(
        history=state["history"],
        epochs=result.steps // steps_per_epoch,
        steps=result.steps_this_call,
        seconds=result.seconds,
        images_per_second=images_per_second,
        skipped_steps=result.skipped_steps,
    )
