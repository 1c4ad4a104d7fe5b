"""What a checkpoint file holds (format 2), and the check of every entry on load.

A checkpoint is one ``torch.save`` dict of tensors and plain values only (no pickled objects), read
back with ``torch.load(weights_only=True)``, so a crafted file cannot run code::

    format_version  int, FORMAT_VERSION at writing time
    config          {"train": ..., "model": ...}: what produced it
    param_store     {"params": {name: tensor}, "constraints": {name: constraint spec}}
    optimizer       the Pyro optimizer's get_state(): {param name: torch optimizer state dict}
    rng             pyro_vi.engine.rng.get_state(): torch (CPU and CUDA), Python and NumPy
    run             the trainer's run state (step, losses, its own state)

A constraint is stored as its name in ``pyro.distributions.constraints`` (``"positive"``) or, for
the parametrized ones, ``{"type": "interval", "args": [0.0, 1.0]}``; :func:`constraint_from_spec`
maps it back. :func:`validate` checks every entry and raises :class:`Invalid` with what is wrong
(``checkpoint.load`` adds the path): presence and types; every tensor's storage against its shape
(a stride-0 view of 1e11 elements is refused before anything reads it); float and finite
parameters; each parameter's optimizer state (entries with one number per element: its shape and
dtype; the step: one finite number >= 0; finite settings); the RNG states; the run's ``step``,
``losses`` (one number a step, NaN for a skipped one) and ``skipped`` (the NaN count).
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pyro.distributions.constraints as constraints
import torch

from pyro_vi.engine import rng
from pyro_vi.errors import CheckpointError

__all__ = [
    "FORMAT_VERSION",
    "KEYS",
    "RESUMABLE_CHANGES",
    "Invalid",
    "constraint_spec",
    "constraint_from_spec",
    "plain",
    "first_non_finite",
    "validate",
    "validate_run",
    "config_difference",
    "DATA_FINGERPRINT",
]

FORMAT_VERSION = 2  # 2: weights-only (tensors and plain values); 1 pickled constraint and NumPy objects

KEYS = ("format_version", "config", "param_store", "optimizer", "rng", "run")

# Train options that may change between a run and its resumption.
RESUMABLE_CHANGES = {"epochs", "checkpoint_every_steps", "on_nan", "compile"}  # compile: same numbers

# The config key (in "model") of the data's content fingerprint: a resume on other data is refused.
DATA_FINGERPRINT = "data_fingerprint"

# torch.optim state entries holding one number per element of their parameter (its shape and dtype).
_ELEMENTWISE_STATE = frozenset({"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "grad_avg",
                                "acc_delta", "sum", "ax", "prev", "step_size", "exp_inf"})

# Constraint objects by name (pyro's module re-exports torch's), and the parametrized families.
_NAMED_CONSTRAINTS = {
    name: value for name in sorted(dir(constraints))
    if isinstance(value := getattr(constraints, name), constraints.Constraint)
}
_PARAMETRIZED = {
    "greater_than": (constraints.greater_than, ("lower_bound",)),
    "greater_than_eq": (constraints.greater_than_eq, ("lower_bound",)),
    "less_than": (constraints.less_than, ("upper_bound",)),
    "interval": (constraints.interval, ("lower_bound", "upper_bound")),
    "half_open_interval": (constraints.half_open_interval, ("lower_bound", "upper_bound")),
    "integer_interval": (constraints.integer_interval, ("lower_bound", "upper_bound")),
}


# --------------------------------------------------------------------------------------------
# Writing: plain values and constraint specs.


def constraint_spec(name: str, constraint) -> Any:
    """The stored form of param ``name``'s constraint: its name, or ``{"type": ..., "args": [...]}``.

    Raises:
        CheckpointError: a constraint with no stored form (tensor-valued bounds, a custom class).
    """
    for known, value in _NAMED_CONSTRAINTS.items():
        if constraint is value:
            return known
    if isinstance(constraint, constraints.independent):
        return {"type": "independent", "args": [constraint_spec(name, constraint.base_constraint),
                                                 int(constraint.reinterpreted_batch_ndims)]}
    for kind, (family, fields) in _PARAMETRIZED.items():
        if type(constraint) is family:
            try:
                return {"type": kind, "args": [float(getattr(constraint, field)) for field in fields]}
            except (TypeError, ValueError, RuntimeError):
                break  # tensor-valued bounds
    raise CheckpointError(
        f"parameter {name!r} has constraint {constraint!r}, which a checkpoint cannot store; use a constraint "
        "from pyro.distributions.constraints with scalar bounds"
    )


def first_non_finite(value: Any, where: str) -> str | None:
    """The path (``where.key.index``) of the first float tensor in ``value`` holding NaN/inf, else ``None``."""
    if torch.is_tensor(value):
        return where if value.is_floating_point() and not bool(torch.isfinite(value).all()) else None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = first_non_finite(item, f"{where}.{key}")
        if found is not None:
            return found
    return None


def plain(value: Any, where: str) -> Any:
    """``value`` as what ``torch.load(weights_only=True)`` reads back: tensors, Python numbers,
    str, None, lists, tuples and dicts (NumPy scalars become Python numbers, subclasses their base).

    Raises:
        CheckpointError: an entry of another type, or a dict key that is not a str or int.
    """
    if value is None or torch.is_tensor(value):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, dict):
        for key in value:
            if type(key) not in (str, int):
                raise CheckpointError(f"checkpoint entry {where} has a key of type {type(key).__name__}; use str keys")
        return {key: plain(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise CheckpointError(f"checkpoint entry {where} is a {type(value).__name__}; store tensors, numbers, strings, lists or dicts")


# --------------------------------------------------------------------------------------------
# Reading: the check of every entry.


class Invalid(Exception):
    """What is wrong with a checkpoint's content (``checkpoint.load`` adds the path)."""


def _require(container: dict, key: str, kind, where: str):
    if key not in container:
        raise Invalid(f"{where}{key!r} is missing")
    value = container[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Invalid(f"{where}{key!r} is a {type(value).__name__}, not a {getattr(kind, '__name__', kind)}")
    return value


def validate(saved: dict) -> None:
    """Check every entry of a format-2 checkpoint, and map the constraint specs back to
    constraint objects (in place).

    Raises:
        Invalid: the first entry missing, of the wrong type, non-finite or unusable.
    """
    for key in KEYS:
        _require(saved, key, (int if key == "format_version" else dict), "entry ")
    for where, value in _tensors(saved, "checkpoint"):  # before anything reads a tensor's elements
        _check_storage(value, where)
    config = saved["config"]
    for section in ("model", "train"):
        if section in config and not isinstance(config[section], dict):
            raise Invalid(f"config {section!r} is a {type(config[section]).__name__}, not a dict")
    store = saved["param_store"]
    params = _require(store, "params", dict, "param_store ")
    specs = _require(store, "constraints", dict, "param_store ")
    for name, value in params.items():
        if not isinstance(name, str) or not torch.is_tensor(value):
            raise Invalid(f"parameter {name!r} is a {type(value).__name__}, not a tensor")
        if not value.is_floating_point():
            raise Invalid(f"parameter {name!r} has dtype {value.dtype}, not a floating-point dtype")
        if not bool(torch.isfinite(value).all()):
            raise Invalid(f"parameter {name!r} holds NaN/inf")
    if set(specs) != set(params):
        name = sorted(set(specs) ^ set(params))[0]
        raise Invalid(f"parameter {name!r} has " + ("a constraint but no value" if name in specs else "no constraint"))
    store["constraints"] = {name: constraint_from_spec(name, spec) for name, spec in specs.items()}
    for name, state in saved["optimizer"].items():
        if not isinstance(name, str) or not isinstance(state, dict):
            raise Invalid(f"optimizer state of {name!r} is a {type(state).__name__}, not a dict")
        if name not in params:
            raise Invalid(f"optimizer state for {name!r}, which is not a parameter")
        bad = first_non_finite(state, f"optimizer state of {name!r}")
        if bad is not None:
            raise Invalid(f"{bad} holds NaN/inf")
        _validate_optimizer_state(name, state, params[name])
    _validate_rng(saved["rng"])
    validate_run(saved["run"])


def _tensors(value: Any, where: str):
    """``(path, tensor)`` of every tensor in nested dicts, lists and tuples."""
    if torch.is_tensor(value):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{where}[{index}]")


def _check_storage(value: torch.Tensor, where: str) -> None:
    """A tensor must own as many elements as its shape says: a view that repeats elements (stride
    0, overlapping strides) of a small storage would unfold into memory on its first copy."""
    if value.layout != torch.strided:
        raise Invalid(f"{where} is a {value.layout} tensor; a checkpoint holds dense tensors")
    needed = value.numel() * value.element_size()
    held = value.untyped_storage().nbytes() - value.storage_offset() * value.element_size()
    if needed > held:
        raise Invalid(
            f"{where} claims shape {tuple(value.shape)} ({value.numel():.3g} elements) over a storage of "
            f"{max(0, held) // max(1, value.element_size())} elements (a view that repeats elements)"
        )


def _validate_optimizer_state(name: str, state: dict, param: torch.Tensor) -> None:
    """One parameter's torch optimizer state dict (``{"state": {index: {key: value}}, "param_groups":
    [...]}``, or ``{"scheduler": ..., "optimizer": that}`` under an LR scheduler) against the parameter."""
    where = f"optimizer state of {name!r}"
    if "scheduler" in state:
        state = state.get("optimizer")
        if not isinstance(state, dict):
            raise Invalid(f"{where} has a scheduler but no optimizer dict")
    slots = state.get("state", {})
    groups = state.get("param_groups", [])
    if not isinstance(slots, dict) or not isinstance(groups, list):
        raise Invalid(f"{where} is not a torch optimizer state dict ('state' a dict, 'param_groups' a list)")
    for index, entries in slots.items():
        if not isinstance(entries, dict):
            raise Invalid(f"{where}: entry {index!r} is a {type(entries).__name__}, not a dict")
        for key, value in entries.items():
            if key == "step":
                number = value if not torch.is_tensor(value) else (value.item() if value.numel() == 1 else None)
                if isinstance(number, bool) or not isinstance(number, (int, float)) or not number >= 0:
                    raise Invalid(f"{where}: 'step' is {_brief(value)}, not one number >= 0")
            elif key in _ELEMENTWISE_STATE:
                if not torch.is_tensor(value) or tuple(value.shape) != tuple(param.shape) or value.dtype != param.dtype:
                    raise Invalid(f"{where}: {key!r} is {_brief(value)}; the parameter is {tuple(param.shape)} {param.dtype}")
            elif torch.is_tensor(value) and value.numel() > max(1, param.numel()):
                raise Invalid(f"{where}: {key!r} has {value.numel()} elements, more than the parameter's {param.numel()}")
    for group in groups:
        if not isinstance(group, dict):
            raise Invalid(f"{where}: a param group is a {type(group).__name__}, not a dict")
        for key, value in group.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise Invalid(f"{where}: setting {key!r} is {value}")
            if key == "lr" and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise Invalid(f"{where}: learning rate {value!r} is not a number >= 0")


def _brief(value: Any) -> str:
    if torch.is_tensor(value):
        return f"a {tuple(value.shape)} {value.dtype} tensor"
    return f"{value!r}"[:40] if isinstance(value, (int, float, str)) else f"a {type(value).__name__}"


def validate_run(run: dict) -> None:
    """The engine's run state, where present: ``step`` an int >= 0, ``losses`` a list of ``step``
    numbers (no inf; NaN marks a skipped step), ``skipped`` an int from 0 to ``step`` equal to the
    NaN count, ``state`` a dict. (A trainer's own ``state`` entries: ``resume.restore_run``.)

    Raises:
        Invalid: the first field of the wrong type or out of range.
    """
    step = run.get("step", 0)
    if "step" in run and (type(step) is not int or step < 0):
        raise Invalid(f"run 'step' is {_brief(step)}, not an integer >= 0")
    if "losses" in run:
        losses = run["losses"]
        if not isinstance(losses, list):
            raise Invalid(f"run 'losses' is {_brief(losses)}, not a list")
        if len(losses) != step:
            raise Invalid(f"run 'losses' holds {len(losses)} values for {step} steps")
        for index, value in enumerate(losses):
            if type(value) not in (int, float) or math.isinf(value):
                raise Invalid(f"run 'losses' entry {index + 1} is {_brief(value)}, not a finite number (NaN: skipped)")
    if "skipped" in run:
        skipped = run["skipped"]
        if type(skipped) is not int or not 0 <= skipped <= step:
            raise Invalid(f"run 'skipped' is {_brief(skipped)}, not an integer from 0 to the {step} steps")
        if isinstance(run.get("losses"), list):
            nans = sum(1 for value in run["losses"] if math.isnan(value))
            if nans != skipped:
                raise Invalid(f"run 'skipped' is {skipped} but 'losses' marks {nans} skipped steps (NaN)")
    if "state" in run and not isinstance(run["state"], dict):
        raise Invalid(f"run 'state' is {_brief(run['state'])}, not a dict")


def constraint_from_spec(name: str, spec: Any):
    """The constraint object of a stored spec (the inverse of :func:`constraint_spec`).

    Raises:
        Invalid: a spec no constraint has.
    """
    if isinstance(spec, str) and spec in _NAMED_CONSTRAINTS:
        return _NAMED_CONSTRAINTS[spec]
    if isinstance(spec, dict) and isinstance(spec.get("args"), list):
        kind, args = spec.get("type"), spec["args"]
        if kind == "independent" and len(args) == 2 and type(args[1]) is int and args[1] >= 0:
            return constraints.independent(constraint_from_spec(name, args[0]), args[1])
        if kind in _PARAMETRIZED:
            family, fields = _PARAMETRIZED[kind]
            if len(args) == len(fields) and all(type(a) in (int, float) for a in args):
                return family(*args)
    raise Invalid(f"parameter {name!r} has an unknown constraint {spec!r}")


def _validate_rng(state: dict) -> None:
    """The RNG entry must be one ``rng.set_state`` can restore (tried on throwaway generators)."""
    try:
        torch.Generator().set_state(_require(state, "torch", torch.Tensor, "rng "))
    except (RuntimeError, TypeError) as error:
        raise Invalid(f"rng 'torch' is not a CPU generator state ({str(error).splitlines()[0]})") from None
    python, numpy = _require(state, "python", dict, "rng "), _require(state, "numpy", dict, "rng ")
    try:
        for name, words, size in (("python", python.get("internal"), 625), ("numpy", numpy.get("keys"), 624)):
            if not torch.is_tensor(words) or words.dtype != torch.int64 or tuple(words.shape) != (size,):
                raise ValueError(f"{name} words are not {size} int64 numbers")
            if bool(((words < 0) | (words > 2**32 - 1)).any()):
                raise ValueError(f"{name} words are not 32-bit")
        random.Random().setstate(rng.python_state(python))
        np.random.RandomState().set_state(rng.numpy_state(numpy))
    except (KeyError, TypeError, ValueError, OverflowError, RuntimeError, IndexError) as error:
        raise Invalid(f"rng Python/NumPy state is unusable ({error})") from None
    cuda = state.get("cuda", [])
    if not isinstance(cuda, list) or not all(torch.is_tensor(s) and s.dtype == torch.uint8 for s in cuda):
        raise Invalid("rng 'cuda' is not a list of byte tensors")


def config_difference(saved: dict, expected: dict) -> str:
    """The options in which a checkpoint's config differs from ``expected`` ("" if none), the
    train options a resumed run may change (:data:`RESUMABLE_CHANGES`) left out."""
    changes = []
    for section in ("model", "train"):
        old, new = saved.get(section, {}), expected.get(section, {})
        for key in sorted(set(old) | set(new)):
            if section == "train" and key in RESUMABLE_CHANGES:
                continue
            if section == "model" and key == DATA_FINGERPRINT:
                continue  # checkpoint.check_config compares it, when both sides have one
            if old.get(key) != new.get(key):
                changes.append(f"{key}: {old.get(key)!r} in the checkpoint, {new.get(key)!r} now")
    return "; ".join(changes)
