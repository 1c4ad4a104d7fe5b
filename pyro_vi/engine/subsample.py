"""Per-step arguments and minibatches the Pyro way, with the engine's plate checks.

``fit`` evaluates every argument that is a :class:`PerStep` once per step (with the step number) and
gives the value to the model and the guide alike. :class:`EpochSubsample` is the one most runs want:
each step's minibatch indices, every point once per epoch, in an order drawn from the seed alone.
The model passes them to its data plate (``pyro.plate("data", N, subsample=indices)``) and indexes
its data with them.

Two checks run on the first step of a call, where a mistake would otherwise pass in silence or as
a shape error deep inside Pyro:

* :func:`check_subsamples`: an ``EpochSubsample`` argument must reach a plate of its size (else the
  minibatch's log-likelihood is scaled by 1 instead of N/B);
* :func:`explain_plate_mismatch`: an observed site whose data do not fit its plate becomes a
  one-line ``DataError`` naming the plate.
"""

from __future__ import annotations

from typing import Any, Callable

import pyro
import torch
from pyro import poutine
from torch import Tensor

from pyro_vi.errors import ConfigError, DataError

__all__ = ["PerStep", "EpochSubsample", "step_values", "check_subsamples", "explain_plate_mismatch"]


class PerStep:
    """An argument of ``fit`` recomputed at every step: ``value = per_step(step)``.

    Wrap any function of the step number (``PerStep(lambda step: ...)``), or subclass it. Values are
    computed in argument order, once per step, and the same value goes to the model and the guide.
    They must be functions of the step and the global RNG only, so that resuming reproduces them.
    """

    def __init__(self, function: Callable[[int], Any] | None = None):
        self._function = function

    def __call__(self, step: int) -> Any:
        """The argument's value at step ``step`` (counted from 0)."""
        return self._function(step)


class EpochSubsample(PerStep):
    """The indices of step ``step``'s minibatch: every point once per epoch, in an order drawn from
    ``(seed, epoch)`` alone (so a resumed run, and every rank of a distributed one, agree).

    Pass it to ``fit`` as an argument and give it to the data plate:
    ``with pyro.plate("data", len(x), subsample=indices): ...x[indices]...``.
    The last, smaller batch of an epoch is dropped (``drop_last=True``, the default: each epoch
    skips ``num_data % batch_size`` points, drawn afresh each epoch) unless told otherwise; in a
    data-parallel run ``drop_last=False`` needs that last batch to split evenly over the ranks.
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
            last, ranks = num_data % batch_size, data_parallel.world_size
            if not drop_last and last % ranks:
                # Each rank takes B[r::W]: an uneven last batch gives a rank fewer points (or none:
                # Pyro's plate then divides by zero while the other ranks wait in the all-reduce).
                raise ConfigError(
                    f"EpochSubsample(num_data={num_data}, batch_size={batch_size}, drop_last=False): each epoch's last "
                    f"batch has {last} points, which do not split evenly over {ranks} processes; use drop_last=True "
                    f"(skips {last} points an epoch, different ones each epoch) or a batch size leaving a multiple of {ranks}"
                )
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
        """The minibatch's indices at step ``step`` (this rank's shard in a data-parallel run)."""
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


def step_values(args: tuple | list, kwargs: dict, step: int) -> tuple[list, dict]:
    """The arguments of step ``step``: each ``PerStep`` replaced by its value, the rest unchanged."""
    step_args = [value(step) if isinstance(value, PerStep) else value for value in args]
    step_kwargs = {key: value(step) if isinstance(value, PerStep) else value for key, value in kwargs.items()}
    return step_args, step_kwargs


def check_subsamples(arguments: list, values: list, plates: set) -> None:
    """An ``EpochSubsample`` argument must reach a plate of its size: a model whose plate ignores
    the indices would scale the minibatch's log-likelihood by 1 instead of N/B (under-weighting the
    data against the prior) without a word.

    Args:
        arguments: ``fit``'s arguments, positional then keyword.
        values: their values at the step checked, in the same order.
        plates: ``(name, size, full size)`` of every plate the step's sample sites ran in (ints, or
            0-d tensors, as a JIT-traced step leaves them; full size ``None`` without subsampling).

    Raises:
        ConfigError: no plate subsamples ``num_data`` points a batch at a time.
    """
    plates = {(name, int(size), None if full is None else int(full)) for name, size, full in plates}
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


def explain_plate_mismatch(error: ValueError, model: Callable, args, kwargs) -> None:
    """Raise a one-line ``DataError`` naming the plate if ``error`` is an observed site whose data do
    not fit its plate (Pyro reports it as a broadcasting or plate shape error); else return.

    Raises:
        DataError: the observed site, its data's shape and its plates.
    """
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
