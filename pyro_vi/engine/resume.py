"""Resuming a run bit for bit: the run state, the params as the model creates them, the warm-up.

A resumed ``fit`` reads the checkpoint once, then (all of it on the first step of the call):

1. :func:`restore_run`: the step count and losses, the optimizer state, every RNG's state and the
   caller's ``state`` dict come back as the checkpoint has them;
2. :class:`Restore`: as the model and guide create each param, its checkpointed value is copied in
   (``checkpoint.restore_param``: in place, so ``pyro.module`` modules and ``PyroModule`` instances
   train on the restored values);
3. :func:`warm_up`: the run's first ``loss_and_grads`` call, whose extra random draws (a random
   init, the ELBO's plate-nesting guess, a JIT compile) must not shift the resumed run, is taken
   once without an update; params and RNG states are put back afterwards;
4. :func:`refuse_missing` / :func:`refuse_unused`: the checkpoint must hold exactly the params the
   model and guide create.
"""

from __future__ import annotations

from typing import Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch import Tensor

from pyro_vi.engine import checkpoint as checkpoints
from pyro_vi.engine import rng
from pyro_vi.engine.subsample import explain_plate_mismatch
from pyro_vi.errors import CheckpointError, ConfigError

__all__ = ["Run", "restore_run", "Restore", "warm_up", "refuse_missing", "refuse_unused"]


class Run:
    """The engine's own run state (mutated in place: the per-step cost stays constant).

    Attributes:
        step: steps completed.
        losses: the loss of every step (NaN: skipped).
        skipped: steps skipped for a NaN/inf loss or gradient.
    """

    __slots__ = ("step", "losses", "skipped")

    def __init__(self, step: int, losses: list, skipped: int):
        self.step = step
        self.losses = losses
        self.skipped = skipped

    def as_dict(self) -> dict:
        """The run state as a checkpoint stores it."""
        return {"step": self.step, "losses": list(self.losses), "skipped": self.skipped}


def restore_run(saved: dict, optim, state: dict | None, num_steps: int, path) -> Run:
    """Put back the run state, the optimizer state, every RNG's state and the caller's ``state``.

    Raises:
        CheckpointError: the checkpoint has no run state of ``fit``'s (another command wrote it).
        ConfigError: the checkpoint is past ``num_steps``.
    """
    run = saved["run"]
    if not isinstance(run, dict) or not isinstance(run.get("step"), int) or not isinstance(run.get("losses"), list):
        raise CheckpointError(f"checkpoint {str(path)!r} was not written by pyro_vi.fit (no step count); resume it with the command that wrote it")
    if run["step"] > num_steps:
        raise ConfigError(
            f"checkpoint {str(path)!r} is at step {run['step']}, past num_steps={num_steps}; "
            "ask for at least as many steps as it has done"
        )
    if state is not None:
        _check_state(run.get("state", {}), state, path)
    optim.set_state(saved["optimizer"])
    rng.set_state(saved["rng"])
    if state is not None:  # an entry the checkpoint lacks (an older trainer's) keeps its initial value
        defaults = dict(state)
        state.clear()
        state.update({**defaults, **run.get("state", {})})
    return Run(run["step"], list(run["losses"]), int(run.get("skipped", 0)))


def _check_state(saved: dict, template: dict, path) -> None:
    """When the caller's initial ``state`` has entries, the checkpoint's ``state`` may hold only those,
    each of the same type (a float may be an int; an int is not a bool)."""
    if not template:
        return
    for key, default in template.items():
        value = saved.get(key, _MISSING)
        if value is _MISSING:
            continue
        kinds = (int, float) if type(default) is float else (type(default),)
        if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, kinds):
            raise CheckpointError(
                f"checkpoint {str(path)!r}: run state {key!r} is a {type(value).__name__}, not a {type(default).__name__}; "
                "it is damaged, was edited or was written by another trainer: restore a good copy, or start over"
            )
    extra = sorted(set(saved) - set(template))
    if extra:
        raise CheckpointError(f"checkpoint {str(path)!r}: run state {extra[0]!r} is not one this trainer keeps; it was written "
                              "by another trainer or edited: resume it with the command that wrote it, or start over")


_MISSING = object()


class Restore(Messenger):
    """Copy checkpointed values into params, in place, as the model and guide create them.

    ``pending`` loses each name it restores (``restored`` gains it); ``plates`` collects
    ``(name, size, full size)`` of every plate a sample site runs in (for the subsample check; the
    sizes as Pyro gives them, tensors under a JIT trace, where converting them would be a warning).
    With ``active=False`` it only collects the plates.
    """

    def __init__(self, pending: dict[str, Tensor], active: bool):
        super().__init__()
        self.pending, self.active, self.restored = pending, active, set()
        self.plates: set[tuple] = set()

    def _postprocess_message(self, msg) -> None:
        if msg["type"] == "sample":
            for frame in msg["cond_indep_stack"]:
                self.plates.add((frame.name, frame.size, frame.full_size))
        super()._postprocess_message(msg)

    def _pyro_param(self, msg) -> None:
        name = msg["name"]
        if not self.active or name not in self.pending:
            return
        store = pyro.get_param_store()
        if name not in store:
            if len(msg["args"]) < 2:
                return
            # Created as the model would (its init, its constraint), then overwritten in place.
            store.setdefault(name, msg["args"][1], msg["kwargs"].get("constraint", torch.distributions.constraints.real))
        checkpoints.restore_param(name, self.pending.pop(name))
        self.restored.add(name)


def warm_up(model: Callable, guide: Callable, loss, args, kwargs, restorer: Restore, validate: bool, checkpoint_params: dict) -> None:
    """Take the run's first ``loss_and_grads`` call once, without an update, then put the params
    and the RNG states back as the checkpoint has them.

    The first call of a run draws random numbers that later calls do not (a random param init such
    as AutoGuides' ``init_to_median`` or ``pyro.param(name, lambda: torch.randn(...))``, the ELBO's
    ``max_plate_nesting`` guess, a JIT compile); drawn after the checkpoint's RNG state they would
    shift every later draw of the resumed run. (A loss's own state kept in the param store, e.g.
    TraceGraph's decaying-average baselines, is put back with the params.)
    """
    with rng.preserved():
        with pyro.validation_enabled(validate), restorer, poutine.trace(param_only=True) as capture:
            try:
                loss.loss_and_grads(model, guide, *args, **kwargs)
            except ValueError as error:
                explain_plate_mismatch(error, model, args, kwargs)
                raise
        store = pyro.get_param_store()
        for site in capture.trace.nodes.values():
            site["value"].unconstrained().grad = None
        for name, value in checkpoint_params.items():
            if name in store:
                checkpoints.restore_param(name, value)


def refuse_missing(restorer: Restore, names) -> None:
    """After the first resumed step every param the step read must have come from the checkpoint.

    Raises:
        CheckpointError: the first param the checkpoint has no value for.
    """
    missing = sorted(name for name in names if name not in restorer.restored)
    if missing:
        raise CheckpointError(
            f"the checkpoint has no value for param {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; it was written by another model or guide, or edited: resume with the one that wrote it, or start over"
        )


def refuse_unused(pending: dict, checkpoint) -> None:
    """After the first resumed step every checkpointed param must have been restored.

    Raises:
        CheckpointError: the checkpoint holds params the model and guide do not create.
    """
    if pending:
        raise CheckpointError(
            f"checkpoint {str(checkpoint)!r} holds params the model and guide do not create "
            f"({', '.join(sorted(pending)[:5])}); resume with the model and guide that wrote it"
        )
