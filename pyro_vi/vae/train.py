"""Epochs of image minibatches for the VAE family, on the general engine (``pyro_vi.engine``).

The VAE's model and guide take ``(x, indices, num_data, kl_weight)``. This module is the VAE's data
path and schedule, nothing more: each step's ``indices`` come from ``engine.EpochSubsample`` (every
image once per epoch, order from the seed), ``x`` is those images binarized afresh
(``binarization``: dynamic | threshold | none), and ``kl_weight`` rises linearly over
``kl_warmup_epochs`` (KL annealing), and the learning rate follows ``lr_schedule`` over the run's steps. After each epoch, the mean training ELBO and ``evaluate``'s
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
from pyro_vi.engine.step import reads_only
from pyro_vi.vae.data import BINARIZATIONS, binarize, validate_images
from pyro_vi.vae.model import VAE
from pyro_vi.errors import ConfigError, DataError, TrainingDivergedError

__all__ = ["TrainConfig", "LR_SCHEDULES", "ImageFitResult", "Preflight", "fit"]


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
    # Replay the step as a recorded tensor program (pyro_vi.engine.compile.record): same values and gradients,
    # no Pyro tracing per step. None: where it applies and pays (fit's default); True: always, or a
    # one-line ConfigError; "inductor": as True, compiled to fused kernels; False: never.
    compile: bool | str | None = None
    # Learning rate of each step: constant, or from learning_rate down to final_learning_rate at the
    # end of the run's epochs (cosine: half a cosine wave; exponential: a constant factor per step).
    lr_schedule: str = "constant"  # constant | cosine | exponential
    final_learning_rate: float = 0.0  # cosine: >= 0; exponential: > 0; constant: unused (leave 0)

    def validate(self, num_data: int) -> None:
        """Check every option for ``num_data`` training points (NumPy integers become ints).

        Raises:
            ConfigError: the first bad option, in one line.
        """
        for name in ("epochs", "batch_size", "seed", "checkpoint_every_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ConfigError(f"{name.replace('_', ' ')} must be an integer, got {value!r} ({type(value).__name__})")
            setattr(self, name, int(value))  # NumPy integers too
        for name in ("learning_rate", "kl_warmup_epochs", "final_learning_rate"):
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
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown learning-rate schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if self.lr_schedule == "constant" and self.final_learning_rate != 0:
            raise ConfigError(
                f"a final learning rate ({self.final_learning_rate}) needs a schedule to reach it; "
                f"choose lr_schedule {' or '.join(LR_SCHEDULES[1:])}, or leave the final learning rate at 0"
            )
        if not (0 <= self.final_learning_rate <= self.learning_rate):
            raise ConfigError(
                f"final learning rate must be from 0 to the learning rate {self.learning_rate}, got {self.final_learning_rate}"
            )
        if self.lr_schedule == "exponential" and self.final_learning_rate <= 0:
            raise ConfigError("an exponential decay never reaches 0: give a positive final learning rate, e.g. learning_rate / 100")
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
        """The KL weight of step ``step`` of epoch ``epoch`` (both from 0): rising linearly from 0 to 1
        over ``kl_warmup_epochs``, 1 without a warm-up."""
        if self.kl_warmup_epochs <= 0:
            return 1.0
        # Weight of step ``step`` (0-based) counts that step as done, so the first is > 0:
        # poutine.scale needs a positive scale.
        return min(1.0, (epoch + (step + 1) / steps_per_epoch) / self.kl_warmup_epochs)

    def learning_rate_factor(self, step: int, num_steps: int) -> float:
        """The learning rate of step ``step`` (0-based) of a ``num_steps`` run, over ``learning_rate``.

        With ``t = step / num_steps`` and ``f = final_learning_rate / learning_rate``: constant 1;
        cosine ``f + (1 - f) (1 + cos(pi t)) / 2``; exponential ``f ** t``. Steps past the run's end
        stay at ``f``.
        """
        if self.lr_schedule == "constant":
            return 1.0
        progress = min(step / num_steps, 1.0)
        final = self.final_learning_rate / self.learning_rate
        if self.lr_schedule == "cosine":
            return final + (1.0 - final) * (1.0 + math.cos(math.pi * progress)) / 2.0
        return final**progress

    def checkpoint_config(self) -> dict:
        """The options a checkpoint records (and a resumed run must match, epochs and the like aside).

        A scheduled run adds its horizon, ``lr_schedule_epochs``: its learning rates depend on the
        run's epochs, so resuming it with other epochs is refused. A constant-rate run records no
        schedule keys, so its checkpoints match those written before schedules existed.
        """
        config = dataclasses.asdict(self)
        if self.lr_schedule == "constant":
            del config["lr_schedule"], config["final_learning_rate"]
        else:
            config["lr_schedule_epochs"] = self.epochs
        return config


LR_SCHEDULES = ("constant", "cosine", "exponential")


def _default_optimizer(config: TrainConfig, num_steps: int, device: torch.device) -> pyro.optim.PyroOptim:
    """Adam at ``config.learning_rate``, scheduled by ``config.lr_schedule`` over ``num_steps``."""
    if config.lr_schedule == "constant":
        return optim.Adam({"lr": config.learning_rate})

    def factor(step: int) -> float:  # a plain function: LambdaLR's checkpoint state leaves it out
        return config.learning_rate_factor(step, num_steps)

    # The engine steps the scheduler after every step (scheduler_every=1) and checkpoints its state
    # with the optimizer's, so a resumed run continues the same rates. Pyro keeps one Adam per
    # parameter: the fused kernel makes each of those steps one call (on CPU, 784-400-50's eight
    # parameters: 2.7 ms a step instead of 6.3 ms for the unfused loop, measured under load).
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    return pyro.optim.PyroLRScheduler(
        torch.optim.lr_scheduler.LambdaLR,
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": config.learning_rate, **fused}, "lr_lambda": factor},
    )


class ImageFitResult(NamedTuple):
    """What a run did: per-epoch history and throughput."""

    history: list[dict]
    epochs: int  # epochs completed
    steps: int  # optimizer steps taken in this call
    seconds: float  # wall time of this call
    images_per_second: float  # training throughput (evaluation excluded)
    skipped_steps: int  # steps of the whole run dropped for NaN/inf (on_nan="skip")
    compiled_steps: int = 0  # steps of this call taken by the recorded program (TrainConfig.compile)


class Preflight(NamedTuple):
    """What a caller checked before training, so ``fit`` does not do it twice.

    Attributes:
        data_checked: ``validate_data`` (e.g. ``VAE.validate``) already ran on the training images:
            ``fit`` skips its full-data scans (the dtype and grad checks still run).
        checkpoint: with ``resume``, the checkpoint as ``engine.checkpoint.load`` returned it (the
            file is not read again); ``None``: ``fit`` reads it.
    """

    data_checked: bool = False
    checkpoint: dict | None = None


def fit(
    model: Callable,
    guide: Callable,
    train_images: Tensor,
    config: TrainConfig = TrainConfig(),
    *,
    loss=None,
    optimizer: pyro.optim.PyroOptim | None = None,
    evaluate: Callable[[int], dict] | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    checkpoint_config: dict | None = None,
    validate_data: Callable[[Tensor], None] | None = None,
    progress: bool = True,
    data_parallel: distributed.DataParallel | None = None,
    preflight: Preflight | None = None,
) -> ImageFitResult:
    """Maximize the ELBO of ``model``/``guide`` on ``train_images``, epoch by epoch of minibatches.

    Args:
        model, guide: callables taking ``(x, indices, num_data, kl_weight)``.
        train_images: ``(num_data, pixels)`` on the training device.
        config: loop options.
        loss: a Pyro ELBO object (default ``Trace_ELBO()``).
        optimizer: a Pyro optimizer (default ``pyro_vi.engine.optim.Adam(lr=config.learning_rate)``;
            with ``config.lr_schedule``, a ``pyro.optim.PyroLRScheduler`` around ``torch.optim.Adam``,
            stepped every step). Pass no optimizer with a schedule.
        evaluate: called after each epoch with the epoch number; its dict joins the history.
        checkpoint_path: where to write checkpoints (atomically); ``None`` writes none.
        resume: continue from ``checkpoint_path``.
        overwrite: without ``resume``, replace a checkpoint already at ``checkpoint_path``.
        checkpoint_config: what identifies the model and data; a checkpoint whose config differs
            is refused on resume.
        validate_data: called once with ``train_images`` before training (default: the
            ``validate`` method of the object ``model`` is a method of, e.g. ``VAE.validate``).
        progress: show a tqdm progress bar.
        data_parallel: this process's rank of a data-parallel run (``pyro_vi.engine.distributed``).
        preflight: what a caller's preflight already did (``pyro-vi vae``'s): the data scanned, the
            checkpoint read (see :class:`Preflight`); ``None``: ``fit`` does both itself.

    Returns:
        ImageFitResult. History entries hold ``epoch``, ``train_elbo`` (per datapoint, mean over the
        epoch's good steps, with the KL weight of that epoch), ``kl_weight``, ``seconds`` and what
        ``evaluate`` returned.

    Raises:
        DataError, ConfigError, OutputError, CheckpointError: as ``engine.fit``.
        TrainingDivergedError: a NaN/inf loss or gradient (with ``on_nan="raise"``).
        TrainingInterrupted: Ctrl-C or SIGTERM, after the checkpoint is written.
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a pyro_vi.TrainConfig, got a {type(config).__name__}; pass e.g. TrainConfig(epochs=10)")
    owner = getattr(model, "__self__", None)
    if validate_data is None:
        validate_data = getattr(owner, "validate", None)  # e.g. VAE.validate
    preflight = Preflight() if preflight is None else preflight
    if not preflight.data_checked:  # once, before training: the steps stay free of full-data scans
        if getattr(validate_data, "__func__", None) is not VAE.validate:  # VAE.validate runs validate_images itself
            validate_images(train_images, name="train_images")  # shape, emptiness, NaN/inf: a DataError up front
        if validate_data is not None:
            validate_data(train_images)
    network_dtype = next(owner.parameters()).dtype if isinstance(owner, torch.nn.Module) and any(True for _ in owner.parameters()) else None
    if network_dtype is not None and train_images.dtype != network_dtype:
        raise DataError(
            f"train_images are {train_images.dtype} but the networks are {network_dtype}; "
            f"convert one to the other (images.to({network_dtype}) or model.to({train_images.dtype}))"
        )
    if train_images.requires_grad:
        raise DataError("train_images require grad; pass train_images.detach() (training must not write the data's .grad)")
    num_data = train_images.shape[0]
    config.validate(num_data)
    if optimizer is not None and config.lr_schedule != "constant":
        raise ConfigError("lr_schedule makes its own optimizer; pass either an optimizer or a learning-rate schedule")
    indices = engine.EpochSubsample(num_data, config.batch_size, config.seed, train_images.device, data_parallel=data_parallel)
    steps_per_epoch = indices.steps_per_epoch
    if optimizer is None:
        optimizer = _default_optimizer(config, config.epochs * steps_per_epoch, train_images.device)

    def images(step: int) -> Tensor:
        return binarize(train_images[indices(step)], config.binarization)

    def kl_weight(step: int):
        epoch, position = indices.epoch_of(step)
        weight = config.kl_weight(epoch, position, steps_per_epoch)
        return train_images.new_tensor(weight) if config.compile is not False else weight  # a tensor: a recording reads it

    # The run's own state, saved in every checkpoint: the history and the current epoch's sums.
    state: dict = {"history": [], "epoch_loss": 0.0, "epoch_good_steps": 0, "epoch_skipped": 0, "evaluate_seconds": 0.0}
    if resume and preflight.checkpoint is not None:  # the engine checks the entries' types; here their content
        _check_saved_state(preflight.checkpoint["run"].get("state", {}), checkpoint_path)
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
            callback=reads_only(end_of_step),  # it logs and evaluates: the default compile applies
            checkpoint=checkpoint_path,
            checkpoint_every=checkpoint_due,
            checkpoint_config={"train": config.checkpoint_config(), "model": checkpoint_config or {}},
            resume=resume,
            overwrite=overwrite,
            loaded_checkpoint=preflight.checkpoint,
            state=state,
            on_nan=config.on_nan,
            progress=progress,
            compile="auto" if config.compile is None else config.compile,  # the family records where it pays
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
        compiled_steps=result.compiled_steps,
    )


def _check_saved_state(saved: dict, path) -> None:
    """A checkpoint's history holds one dict of numbers per epoch; its counts are integers >= 0.

    Raises:
        CheckpointError: the first entry that is not.
    """
    from pyro_vi.errors import CheckpointError

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {str(path)!r}: run state {what}; it is damaged or was edited, restore a good copy or start over")

    history = saved.get("history", [])
    for index, record in enumerate(history if isinstance(history, list) else []):
        if not isinstance(record, dict) or not all(
                isinstance(key, str) and (value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)))
                for key, value in record.items()):
            raise bad(f"'history' entry {index + 1} is not a dict of numbers")
        if record.get("epoch") != index + 1:
            raise bad(f"'history' entry {index + 1} is for epoch {record.get('epoch')!r}")
    for key in ("epoch_good_steps", "epoch_skipped"):
        if isinstance(saved.get(key), int) and saved[key] < 0:
            raise bad(f"{key!r} is {saved[key]}, below 0")
