"""Adam per run for :func:`pyro_vi.engine.many.fit_many`: the update on ``(R, ...)`` stacked params.

The update is elementwise, so on stacked tensors it is each run's own update; a per-run step count
and a mask leave a frozen or skipped run exactly as it was. ClippedAdam's clipping is elementwise
too (``grad.clamp(-clip_norm, clip_norm)``), and its learning rate decays per run step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pyro
import pyro.optim
import torch
from torch import Tensor

from pyro_vi.engine.many_step import CannotBatch

__all__ = ["AdamSettings", "BatchedAdam", "adam_settings"]


class AdamSettings(NamedTuple):
    """Adam's hyperparameters; ``clip_norm``/``lrd``/``centered`` for ClippedAdam (``clipped``)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    clipped: bool = False
    clip_norm: float = math.inf
    lrd: float = 1.0
    centered: bool = False


def adam_settings(optim) -> AdamSettings:
    """The settings of ``optim`` (``None``: fit's default Adam, lr 1e-3).

    Raises:
        CannotBatch: an optimizer other than Adam or ClippedAdam with one dict of options (per-param
            options, norm clipping through ``clip_args``, amsgrad, schedulers).
    """
    from pyro_vi.engine import optim as pyro_vi_optim

    if optim is None:
        return AdamSettings(1e-3, 0.9, 0.999, 1e-8, 0.0)
    constructor = getattr(optim, "pt_optim_constructor", None)
    options = getattr(optim, "pt_optim_args", None)
    clip_args = getattr(optim, "pt_clip_args", {})
    if not isinstance(optim, pyro.optim.PyroOptim) or isinstance(optim, pyro.optim.PyroLRScheduler) or callable(options) or clip_args:
        raise CannotBatch(f"optimizer {type(optim).__name__} is not Adam or ClippedAdam with one dict of options")
    if constructor is torch.optim.Adam or type(optim) is pyro_vi_optim.Adam:
        if options.get("amsgrad") or options.get("maximize"):
            raise CannotBatch("Adam with amsgrad or maximize is not batched")
        beta1, beta2 = options.get("betas", (0.9, 0.999))
        return AdamSettings(float(options.get("lr", 1e-3)), beta1, beta2, options.get("eps", 1e-8), options.get("weight_decay", 0.0))
    if constructor is pyro.optim.clipped_adam.ClippedAdam:
        beta1, beta2 = options.get("betas", (0.9, 0.999))
        return AdamSettings(float(options.get("lr", 1e-3)), beta1, beta2, options.get("eps", 1e-8), options.get("weight_decay", 0.0),
                            True, options.get("clip_norm", 10.0), options.get("lrd", 1.0), bool(options.get("centered_variance")))
    raise CannotBatch(f"optimizer {getattr(constructor, '__name__', type(optim).__name__)} is not Adam or ClippedAdam")


class BatchedAdam:
    """Adam on stacked ``(R, ...)`` tensors with a step count per run; a masked run is untouched.

    The arithmetic is torch's single-tensor Adam (``ClippedAdam``'s where ``settings.clipped``)."""

    def __init__(self, settings: AdamSettings, values: tuple[Tensor, ...]):
        self.settings = settings
        self.exp_avg = [torch.zeros_like(v) for v in values]
        self.exp_avg_sq = [torch.zeros_like(v) for v in values]
        self.steps = torch.zeros(values[0].shape[0], dtype=torch.int64)

    def update(self, values: tuple[Tensor, ...], grads: tuple[Tensor, ...], active: Tensor) -> tuple[Tensor, ...]:
        """The params after one step of every ``active`` run; the others' as they were."""
        s = self.settings
        self.steps = self.steps + active.to(torch.int64)
        step = self.steps.to(torch.float64)
        bias1, bias2 = 1 - s.beta1 ** step, 1 - s.beta2 ** step
        if s.clipped:
            lr = s.lr * s.lrd ** step
            step_size, correction = lr * bias2.sqrt() / bias1, None
        else:
            step_size, correction = s.lr / bias1, bias2.sqrt()
        updated = []
        for i, (value, grad) in enumerate(zip(values, grads)):
            shape = (-1,) + (1,) * (value.dim() - 1)
            mask = active.view(shape)
            if s.clipped:
                grad = grad.clamp(-s.clip_norm, s.clip_norm)
            if s.weight_decay:
                grad = grad + s.weight_decay * value
            exp_avg = self.exp_avg[i].lerp(grad, 1 - s.beta1) if not s.clipped else self.exp_avg[i] * s.beta1 + grad * (1 - s.beta1)
            deviation = grad - exp_avg if s.centered else grad
            exp_avg_sq = self.exp_avg_sq[i] * s.beta2 + deviation * deviation * (1 - s.beta2)
            if correction is None:
                denominator = exp_avg_sq.sqrt() + s.eps
            else:
                denominator = exp_avg_sq.sqrt() / correction.to(value.dtype).view(shape) + s.eps
            new = value - step_size.to(value.dtype).view(shape) * exp_avg / denominator
            self.exp_avg[i] = torch.where(mask, exp_avg, self.exp_avg[i])
            self.exp_avg_sq[i] = torch.where(mask, exp_avg_sq, self.exp_avg_sq[i])
            updated.append(torch.where(mask, new, value))
        return tuple(updated)

    def state(self, names: list[str]) -> dict:
        """``{name: {"state": {0: {"exp_avg", "exp_avg_sq"}}}}`` plus the step counts (checkpoints)."""
        return {name: {"state": {0: {"exp_avg": m, "exp_avg_sq": v}}, "param_groups": []}
                for name, m, v in zip(names, self.exp_avg, self.exp_avg_sq)}

    def load(self, names: list[str], state: dict, steps: Tensor) -> None:
        """Put back what :meth:`state` returned and the step counts."""
        self.exp_avg = [state[name]["state"][0]["exp_avg"].clone() for name in names]
        self.exp_avg_sq = [state[name]["state"][0]["exp_avg_sq"].clone() for name in names]
        self.steps = steps.clone()
