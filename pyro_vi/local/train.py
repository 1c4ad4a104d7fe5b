"""Training a decoder with per-datapoint (mean-field) guides: joint SVI and Hoffman-style SVI.

With a ``LocalGuide`` every datapoint n owns (loc_n, scale_n). For each minibatch B::

    joint    (local_steps = 0):  one gradient step on the decoder and on {loc_n, scale_n : n in B}
    hoffman  (local_steps = K):  K steps on {loc_n, scale_n : n in B} with the decoder fixed,
                                 then one step on the decoder with those q_n fixed
                                 (Hoffman et al. 2013's stochastic VI, local optimization by Adam)

The objective is Pyro's ``Trace_ELBO`` of ``vae.model`` with the local guide (the plate scales it
to the full data). Local rows have their own Adam moments and step counts, updated only when the
row is in the minibatch ("lazy" Adam): a dense optimizer's momentum would keep moving the q_n of
points that are not in the batch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, NamedTuple

import pyro
import torch
from pyro.infer import Trace_ELBO
from torch import Tensor

from pyro_vi import engine
from pyro_vi.engine import optim
from pyro_vi.vae.data import BINARIZATIONS, binarize, validate_images
from pyro_vi.errors import ConfigError, TrainingDivergedError
from pyro_vi.local.model import LocalGuide

__all__ = ["LocalFitResult", "LocalTrainConfig", "fit_local"]


@dataclasses.dataclass
class LocalTrainConfig:
    """Options of ``fit_local``: the loop, both learning rates, and joint (``local_steps=0``) or
    Hoffman-style (``local_steps=K``) SVI."""

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3  # the decoder's Adam step size
    local_learning_rate: float = 1e-2  # the local (loc, log scale) Adam step size
    local_steps: int = 0  # K: 0 = joint SVI; K > 0 = Hoffman-style
    num_particles: int = 1  # draws of z per datapoint per gradient (vectorized)
    binarization: str = "dynamic"
    seed: int = 0

    def validate(self, num_data: int) -> None:
        """Check every option for ``num_data`` training points.

        Raises:
            ConfigError: the first bad option, in one line.
        """
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be a positive integer, got {getattr(self, name)}")
        if self.batch_size > num_data:
            raise ConfigError(f"batch size {self.batch_size} is larger than the {num_data} training points; lower it")
        for name in ("learning_rate", "local_learning_rate"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ConfigError(f"{name.replace('_', ' ')} must be positive, got {getattr(self, name)}")
        if not isinstance(self.num_particles, int) or self.num_particles <= 0:
            raise ConfigError(f"number of particles must be a positive integer, got {self.num_particles}")
        if not isinstance(self.local_steps, int) or self.local_steps < 0:
            raise ConfigError(f"local steps must be a non-negative integer, got {self.local_steps}")
        if self.binarization not in BINARIZATIONS:
            raise ConfigError(f"unknown binarization {self.binarization!r}; choose one of {', '.join(BINARIZATIONS)}")


class LocalFitResult(NamedTuple):
    """What ``fit_local`` did: per-epoch history, steps taken and wall time."""

    history: list[dict]  # per epoch: epoch, train_elbo (nats per datapoint), seconds, + evaluate()
    steps: int  # decoder steps
    local_steps: int  # local-parameter steps (= steps when joint)
    seconds: float


def fit_local(
    vae,
    guide: LocalGuide,
    train_images: Tensor,
    config: LocalTrainConfig = LocalTrainConfig(),
    evaluate: Callable[[int], dict] | None = None,
) -> LocalFitResult:
    """Fit ``vae``'s decoder (and its learned ``x_scale``, if any) with one Gaussian q_n per point.

    Runs on the engine (``pyro_vi.engine.fit``): one engine step is one gradient of the minibatch's
    ELBO. Joint SVI takes one step per minibatch, moving globals and the batch's q_n together;
    Hoffman-style SVI takes K + 1 steps per minibatch on the same binarized batch: K moving the
    batch's q_n only, then one moving the globals only.

    Args:
        vae: the VAE (its encoder is not used).
        guide: a ``LocalGuide`` with ``num_data == len(train_images)``.
        train_images: (num_data, pixels) on the training device.
        config: loop options; ``config.local_steps`` chooses joint or Hoffman-style SVI.
        evaluate: called after each epoch with the epoch number; its dict joins the history.
    """
    validate_images(train_images, name="train_images")
    num_data = train_images.shape[0]
    config.validate(num_data)
    if guide.num_data != num_data:
        raise ConfigError(f"the local guide has {guide.num_data} q's for {num_data} training points; build it with num_data={num_data}")
    pyro.set_rng_seed(config.seed)
    loc, scale = guide.params(train_images)
    local_params = (loc.unconstrained(), scale.unconstrained())
    passes = config.local_steps + 1  # engine steps per minibatch
    batches = engine.EpochSubsample(num_data, config.batch_size, config.seed, train_images.device)
    cache: dict = {"batch": None, "x": None}

    def indices(step: int) -> Tensor:
        return batches(step // passes)

    def images(step: int) -> Tensor:  # binarized once per minibatch: its K + 1 passes see the same x
        if cache["batch"] != step // passes:
            cache["batch"], cache["x"] = step // passes, binarize(train_images[indices(step)], config.binarization)
        return cache["x"]

    def model(x, batch_indices, num_data):
        pyro.module("decoder", vae.decoder)
        return vae.model(x, batch_indices, num_data)

    optimizer = _LocalAndGlobal(local_params, config, passes, indices)
    steps_per_epoch = batches.steps_per_epoch * passes
    history, epoch_loss, start = [], [0.0], time.perf_counter()

    def after_step(step: int, loss: float | None) -> None:
        if step % passes == 0:  # the minibatch's last pass: the globals' step
            epoch_loss[0] += loss
        if step % steps_per_epoch == 0:
            epoch = step // steps_per_epoch
            record = {"epoch": epoch, "train_elbo": -epoch_loss[0] / batches.steps_per_epoch / num_data,
                      "seconds": time.perf_counter() - start}
            if evaluate is not None:
                record.update(evaluate(epoch))
            history.append(record)
            epoch_loss[0] = 0.0

    try:
        engine.fit(
            model, guide, engine.PerStep(images), engine.PerStep(indices), num_data,
            num_steps=config.epochs * steps_per_epoch,
            loss=Trace_ELBO(num_particles=config.num_particles, vectorize_particles=True, max_plate_nesting=1),
            optim=optimizer, callback=after_step, progress=False,
        )
    except TrainingDivergedError:
        raise TrainingDivergedError("the loss or a gradient became NaN/inf; lower the learning rate or the local learning rate") from None
    minibatches = config.epochs * batches.steps_per_epoch
    return LocalFitResult(history, minibatches, minibatches * max(1, config.local_steps), time.perf_counter() - start)


class _LocalAndGlobal:
    """The optimizer of ``fit_local``: lazy row Adam on the q_n of the step's minibatch, Adam
    (``pyro_vi.engine.optim.Adam``) on every other param (the decoder, a learned ``x_scale``).

    Engine step ``t`` is pass ``t % passes`` of its minibatch: with ``passes == 1`` (joint) both
    move; otherwise passes ``0 .. passes - 2`` move the q_n only and the last moves the globals only.
    """

    def __init__(self, local_params, config: LocalTrainConfig, passes: int, indices: Callable[[int], Tensor]):
        self.local = [_LazyRowAdam(p, config.local_learning_rate) for p in local_params]
        self.local_ids = {id(p) for p in local_params}
        self.globals = optim.Adam({"lr": config.learning_rate})
        self.passes, self.indices, self.step = passes, indices, 0

    def __call__(self, params) -> None:
        phase = self.step % self.passes
        rows = self.indices(self.step)
        if self.passes == 1 or phase < self.passes - 1:
            for optimizer in self.local:
                optimizer.step(rows)
        if phase == self.passes - 1:
            self.globals([p for p in params if id(p) not in self.local_ids])
        self.step += 1


class _LazyRowAdam:
    """Adam on the rows of a (num_data, dim) tensor, touching only the rows of each step."""

    def __init__(self, param: Tensor, learning_rate: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.param, self.learning_rate, self.betas, self.eps = param, learning_rate, betas, eps
        self.first_moment = torch.zeros_like(param)
        self.second_moment = torch.zeros_like(param)
        self.count = torch.zeros(param.shape[0], dtype=param.dtype, device=param.device)

    @torch.no_grad()
    def step(self, rows: Tensor) -> None:
        beta1, beta2 = self.betas
        grad = self.param.grad[rows]
        self.count[rows] += 1
        count = self.count[rows].unsqueeze(-1)
        first = self.first_moment[rows].mul_(beta1).add_(grad, alpha=1 - beta1)
        second = self.second_moment[rows].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        self.first_moment[rows], self.second_moment[rows] = first, second
        step = self.learning_rate * (first / (1 - beta1**count)) / ((second / (1 - beta2**count)).sqrt() + self.eps)
        self.param[rows] -= step
