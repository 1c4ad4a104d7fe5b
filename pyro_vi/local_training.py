"""Training a decoder with per-datapoint (mean-field) guides: joint SVI and Hoffman-style SVI.

With a ``LocalGuide`` every datapoint n owns (loc_n, scale_n). For each minibatch B:

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

from pyro_vi.data import BINARIZATIONS, binarize, validate_images
from pyro_vi.errors import ConfigError, TrainingDivergedError
from pyro_vi.models.local import LocalGuide

__all__ = ["LocalFitResult", "LocalTrainConfig", "fit_local"]


@dataclasses.dataclass
class LocalTrainConfig:
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3  # the decoder's Adam step size
    local_learning_rate: float = 1e-2  # the local (loc, log scale) Adam step size
    local_steps: int = 0  # K: 0 = joint SVI; K > 0 = Hoffman-style
    num_particles: int = 1  # draws of z per datapoint per gradient (vectorized)
    binarization: str = "dynamic"
    seed: int = 0

    def validate(self, num_data: int) -> None:
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
    """Fit ``vae``'s decoder together with one Gaussian q_n per training point.

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
    device = train_images.device
    loc, scale = guide.params(train_images)
    local_optimizers = [_LazyRowAdam(p.unconstrained(), config.local_learning_rate) for p in (loc, scale)]
    pyro.module("decoder", vae.decoder)
    decoder_optimizer = torch.optim.Adam(vae.decoder.parameters(), lr=config.learning_rate)
    elbo = Trace_ELBO(num_particles=config.num_particles, vectorize_particles=True, max_plate_nesting=1)
    steps_per_epoch = num_data // config.batch_size
    history, steps, local_steps, start = [], 0, 0, time.perf_counter()

    def loss_and_grads(x, indices) -> float:
        for p in (*vae.decoder.parameters(), loc.unconstrained(), scale.unconstrained()):
            p.grad = None
        loss = elbo.differentiable_loss(vae.model, guide, x, indices, num_data)
        if not torch.isfinite(loss):
            raise TrainingDivergedError("the loss became NaN/inf; lower --learning-rate or --local-learning-rate")
        loss.backward()
        return float(loss.detach())

    for epoch in range(config.epochs):
        permutation = torch.randperm(num_data, device=device)
        epoch_loss = 0.0
        for step in range(steps_per_epoch):
            indices = permutation[step * config.batch_size : (step + 1) * config.batch_size]
            x = binarize(train_images[indices], config.binarization)
            for _ in range(config.local_steps):  # Hoffman: the batch's q_n, decoder fixed
                loss_and_grads(x, indices)
                for optimizer in local_optimizers:
                    optimizer.step(indices)
                local_steps += 1
            epoch_loss += loss_and_grads(x, indices)
            decoder_optimizer.step()
            if config.local_steps == 0:  # joint: the same gradient moves the q_n too
                for optimizer in local_optimizers:
                    optimizer.step(indices)
                local_steps += 1
            steps += 1
        record = {"epoch": epoch + 1, "train_elbo": -epoch_loss / steps_per_epoch / num_data,
                  "seconds": time.perf_counter() - start}
        if evaluate is not None:
            record.update(evaluate(epoch + 1))
        history.append(record)
    return LocalFitResult(history, steps, local_steps, time.perf_counter() - start)


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
