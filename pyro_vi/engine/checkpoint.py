"""Checkpoint files: versioned, carrying their config, written atomically, checked on load.

A checkpoint is one ``torch.save`` dict of tensors and plain values only (no pickled objects), read
back with ``torch.load(weights_only=True)``, so a crafted file cannot run code::

    format_version  int, FORMAT_VERSION at writing time
    config          {"train": ..., "model": ...}: what produced it
    param_store     {"params": {name: tensor}, "constraints": {name: constraint spec}}
    optimizer       the Pyro optimizer's get_state(): {param name: torch optimizer state dict}
    rng             RNG states of torch (CPU and CUDA), Python and NumPy, as tensors and numbers
    run             epoch, step in epoch, permutation, running loss, history

A constraint is stored as its name in ``pyro.distributions.constraints`` (``"positive"``) or, for
the parametrized ones, ``{"type": "interval", "args": [0.0, 1.0]}``; ``load`` maps it back. Loading
checks every entry (presence, types, RNG state sizes, float and finite parameters); ``save``
refuses to write non-finite parameters or optimizer state.
"""

from __future__ import annotations

import io
import os
import random
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyro
import pyro.distributions.constraints as constraints
import torch
import torch.distributed

from pyro_vi.errors import CheckpointError, OutputError
from pyro_vi.io import atomic_write

FORMAT_VERSION = 2  # 2: weights-only (tensors and plain values); 1 pickled constraint and NumPy objects

KEYS = ("format_version", "config", "param_store", "optimizer", "rng", "run")

# Train options that may change between a run and its resumption.
_RESUMABLE_CHANGES = {"epochs", "checkpoint_every_steps", "on_nan", "compile"}  # compile: same numbers

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
# RNG state, as tensors and numbers.


def get_rng_state() -> dict:
    """RNG states of torch (CPU, and CUDA if present), Python and NumPy, in a weights-only form."""
    version, internal, gauss_next = random.getstate()
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``get_rng_state`` returned (checked by ``load``)."""
    torch.set_rng_state(state["torch"])
    random.setstate(_python_state(state["python"]))
    np.random.set_state(_numpy_state(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state(saved: dict) -> tuple:
    return saved["version"], tuple(int(v) for v in saved["internal"].tolist()), saved["gauss_next"]


def _numpy_state(saved: dict) -> tuple:
    keys = saved["keys"].numpy().astype(np.uint32)
    return "MT19937", keys, saved["position"], saved["has_gauss"], saved["cached_gaussian"]


# --------------------------------------------------------------------------------------------
# Writing.


def save(path: str | os.PathLike, config: dict, run: dict, optimizer) -> None:
    """Write a checkpoint atomically: the previous one survives any failure of this write.

    Raises:
        CheckpointError: a parameter or optimizer state is NaN/inf, or something is not a tensor
            or plain value; nothing is written.
        OutputError: the write failed (disk full, permissions); the previous file is untouched.
    """
    path = Path(path)
    kept = "the previous checkpoint is intact" if path.is_file() else "no checkpoint was written"
    store = pyro.get_param_store().get_state()
    params = {name: value.detach() for name, value in store["params"].items()}
    for name, value in params.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"parameter {name!r} holds NaN/inf, so it was not saved to {str(path)!r} ({kept}); "
                "lower the learning rate or check the data"
            )
    optimizer_state = optimizer.get_state()
    bad = _first_non_finite(optimizer_state, "optimizer")
    if bad is not None:
        raise CheckpointError(f"{bad} holds NaN/inf, so it was not saved to {str(path)!r} ({kept}); lower the learning rate")
    payload = {
        "format_version": FORMAT_VERSION,
        "config": _plain(config, "config"),
        "param_store": {"params": params, "constraints": {name: _constraint_spec(name, c) for name, c in store["constraints"].items()}},
        "optimizer": optimizer_state,
        "rng": get_rng_state(),
        "run": _plain(dict(run), "run"),
    }
    buffer = io.BytesIO()  # serialize first: torch.save hides a failed write (disk full) in a RuntimeError
    torch.save(payload, buffer)
    try:
        atomic_write(path, lambda file: file.write(buffer.getbuffer()))
    except OSError as error:
        raise OutputError(
            f"could not write checkpoint {str(path)!r} ({error.strerror or error}); {kept}; "
            "free some space or choose another --out, then rerun" + (" with --resume" if kept.startswith("the") else "")
        ) from None
    # A process killed (kill -9) inside atomic_write leaves its temporary file behind.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def _constraint_spec(name: str, constraint) -> Any:
    for known, value in _NAMED_CONSTRAINTS.items():
        if constraint is value:
            return known
    if isinstance(constraint, constraints.independent):
        return {"type": "independent", "args": [_constraint_spec(name, constraint.base_constraint),
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


def _first_non_finite(value: Any, where: str) -> str | None:
    if torch.is_tensor(value):
        return where if value.is_floating_point() and not bool(torch.isfinite(value).all()) else None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _first_non_finite(item, f"{where}.{key}")
        if found is not None:
            return found
    return None


def _plain(value: Any, where: str) -> Any:
    """``value`` as what ``torch.load(weights_only=True)`` reads back: tensors, Python numbers,
    str, None, lists, tuples and dicts (NumPy scalars become Python numbers, subclasses their base)."""
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
        return {key: _plain(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise CheckpointError(f"checkpoint entry {where} is a {type(value).__name__}; store tensors, numbers, strings, lists or dicts")


# --------------------------------------------------------------------------------------------
# Reading.


def load(path: str | os.PathLike, expected_config: dict | None = None, broadcast: bool = True) -> dict:
    """Read and check a checkpoint.

    In a data-parallel run (an initialized ``torch.distributed`` group of several ranks) with
    ``broadcast``, this is a collective that every rank must call: rank 0, the one that writes
    checkpoints, reads the file and sends it (or its error) to the others, so OUT need not be on a
    filesystem shared between machines. ``broadcast=False`` reads the local file on any rank.

    Returns:
        The checkpoint dict, constraints mapped back to constraint objects.

    Raises:
        CheckpointError: missing, truncated, corrupt or unsafe file, a newer or older format, an
            entry missing or of the wrong type, an unusable RNG state, NaN/inf or non-float
            parameters, or a config that differs from ``expected_config`` (other than the epochs).
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not (broadcast and distributed and torch.distributed.get_world_size() > 1):
        return _read(path, expected_config)
    box: list = [None]
    if torch.distributed.get_rank() == 0:
        try:
            box = [_read(path, expected_config)]
        except CheckpointError as error:
            box = [error]
    torch.distributed.broadcast_object_list(box, src=0)
    if isinstance(box[0], CheckpointError):
        raise box[0]
    return box[0]


def _read(path: str | os.PathLike | None, expected_config: dict | None) -> dict:
    path = Path(path) if path is not None else None
    if path is None or not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {str(path)!r}; check the path (pyro-vi vae writes OUT/checkpoint.pt), "
            "or to --resume, run once without --resume first"
        )
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 - a hostile file can raise anything from the unpickler
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if unsafe:
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds Python objects ({unsafe.group(1)}), not only tensors and numbers "
                "(a file of an older pyro_vi, or a crafted one); it was not loaded because reading it could run code"
            ) from None
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupt ({type(error).__name__}); "
            "delete it to start over, or restore a good copy"
        ) from None
    if not isinstance(saved, dict) or "format_version" not in saved:
        raise CheckpointError(f"{str(path)!r} is not a pyro_vi checkpoint; pass a file written by pyro-vi")
    version = saved["format_version"]
    if type(version) is not int:
        raise CheckpointError(f"checkpoint {str(path)!r} has format_version {version!r}, not an integer; it is damaged")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format {version}, newer than this pyro_vi's "
            f"{FORMAT_VERSION}; upgrade pyro_vi to read it"
        )
    if version < FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has format {version}, older than this pyro_vi's {FORMAT_VERSION}; train again")
    try:
        _validate(saved)
    except _Invalid as error:
        raise CheckpointError(f"checkpoint {str(path)!r}: {error}; it is damaged or was edited, restore a good copy") from None
    if expected_config is not None:
        difference = _config_difference(saved["config"], expected_config)
        if difference:
            raise CheckpointError(
                f"checkpoint {str(path)!r} was made with a different configuration ({difference}); "
                "use the same options as the original run, or a new --out"
            )
    return saved


class _Invalid(Exception):
    """What is wrong with a checkpoint's content (the path is added by ``_read``)."""


def _require(container: dict, key: str, kind, where: str):
    if key not in container:
        raise _Invalid(f"{where}{key!r} is missing")
    value = container[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Invalid(f"{where}{key!r} is a {type(value).__name__}, not a {getattr(kind, '__name__', kind)}")
    return value


def _validate(saved: dict) -> None:
    """Check every entry, and map the constraint specs back to objects (in place)."""
    for key in KEYS:
        _require(saved, key, (int if key == "format_version" else dict), "entry ")
    config = saved["config"]
    for section in ("model", "train"):
        if section in config and not isinstance(config[section], dict):
            raise _Invalid(f"config {section!r} is a {type(config[section]).__name__}, not a dict")
    store = saved["param_store"]
    params = _require(store, "params", dict, "param_store ")
    specs = _require(store, "constraints", dict, "param_store ")
    for name, value in params.items():
        if not isinstance(name, str) or not torch.is_tensor(value):
            raise _Invalid(f"parameter {name!r} is a {type(value).__name__}, not a tensor")
        if not value.is_floating_point():
            raise _Invalid(f"parameter {name!r} has dtype {value.dtype}, not a floating-point dtype")
        if not bool(torch.isfinite(value).all()):
            raise _Invalid(f"parameter {name!r} holds NaN/inf")
    if set(specs) != set(params):
        name = sorted(set(specs) ^ set(params))[0]
        raise _Invalid(f"parameter {name!r} has " + ("a constraint but no value" if name in specs else "no constraint"))
    store["constraints"] = {name: _constraint(name, spec) for name, spec in specs.items()}
    for name, state in saved["optimizer"].items():
        if not isinstance(name, str) or not isinstance(state, dict):
            raise _Invalid(f"optimizer state of {name!r} is a {type(state).__name__}, not a dict")
        if name not in params:
            raise _Invalid(f"optimizer state for {name!r}, which is not a parameter")
        bad = _first_non_finite(state, f"optimizer state of {name!r}")
        if bad is not None:
            raise _Invalid(f"{bad} holds NaN/inf")
    _validate_rng(saved["rng"])


def _constraint(name: str, spec: Any):
    if isinstance(spec, str) and spec in _NAMED_CONSTRAINTS:
        return _NAMED_CONSTRAINTS[spec]
    if isinstance(spec, dict) and isinstance(spec.get("args"), list):
        kind, args = spec.get("type"), spec["args"]
        if kind == "independent" and len(args) == 2 and type(args[1]) is int and args[1] >= 0:
            return constraints.independent(_constraint(name, args[0]), args[1])
        if kind in _PARAMETRIZED:
            family, fields = _PARAMETRIZED[kind]
            if len(args) == len(fields) and all(type(a) in (int, float) for a in args):
                return family(*args)
    raise _Invalid(f"parameter {name!r} has an unknown constraint {spec!r}")


def _validate_rng(rng: dict) -> None:
    try:
        torch.Generator().set_state(_require(rng, "torch", torch.Tensor, "rng "))
    except (RuntimeError, TypeError) as error:
        raise _Invalid(f"rng 'torch' is not a CPU generator state ({str(error).splitlines()[0]})") from None
    python, numpy = _require(rng, "python", dict, "rng "), _require(rng, "numpy", dict, "rng ")
    try:
        for name, words, size in (("python", python.get("internal"), 625), ("numpy", numpy.get("keys"), 624)):
            if not torch.is_tensor(words) or words.dtype != torch.int64 or tuple(words.shape) != (size,):
                raise ValueError(f"{name} words are not {size} int64 numbers")
            if bool(((words < 0) | (words > 2**32 - 1)).any()):
                raise ValueError(f"{name} words are not 32-bit")
        random.Random().setstate(_python_state(python))
        np.random.RandomState().set_state(_numpy_state(numpy))
    except (KeyError, TypeError, ValueError, OverflowError, RuntimeError, IndexError) as error:
        raise _Invalid(f"rng Python/NumPy state is unusable ({error})") from None
    cuda = rng.get("cuda", [])
    if not isinstance(cuda, list) or not all(torch.is_tensor(s) and s.dtype == torch.uint8 for s in cuda):
        raise _Invalid("rng 'cuda' is not a list of byte tensors")


def _config_difference(saved: dict, expected: dict) -> str:
    changes = []
    for section in ("model", "train"):
        old, new = saved.get(section, {}), expected.get(section, {})
        for key in sorted(set(old) | set(new)):
            if section == "train" and key in _RESUMABLE_CHANGES:
                continue
            if old.get(key) != new.get(key):
                changes.append(f"{key}: {old.get(key)!r} in the checkpoint, {new.get(key)!r} now")
    return "; ".join(changes)


# --------------------------------------------------------------------------------------------
# Checks a trainer makes against its own model.


def check_params(
    saved: dict, expected: dict[str, tuple[Iterable[int], torch.dtype | None]], path: str | os.PathLike | None = None,
    optional: Iterable[str] = (),
) -> None:
    """Check a loaded checkpoint's parameters against the ones the model and guide create.

    Args:
        saved: what ``load`` returned.
        expected: ``{param name: (shape, dtype)}``; dtype ``None`` accepts any float dtype.
        path: the checkpoint's path, for the message.
        optional: names that may be absent (e.g. a param created lazily).

    Raises:
        CheckpointError: a parameter missing, one the model does not have, or of another shape or dtype.
    """
    params = saved["param_store"]["params"]
    where = f"checkpoint {str(path)!r}" if path is not None else "the checkpoint"
    hint = "it is from another model or was edited; pass the right checkpoint or start over"
    optional = set(optional)
    for name, (shape, dtype) in expected.items():
        if name not in params:
            if name in optional:
                continue
            raise CheckpointError(f"{where} has no parameter {name!r}; {hint}")
        value = params[name]
        if tuple(value.shape) != tuple(shape):
            raise CheckpointError(f"{where}: parameter {name!r} has shape {tuple(value.shape)}, the model's is {tuple(shape)}; {hint}")
        if dtype is not None and value.dtype != dtype:
            raise CheckpointError(f"{where}: parameter {name!r} has dtype {value.dtype}, the model's is {dtype}; {hint}")
    extra = sorted(set(params) - set(expected))
    if extra:
        raise CheckpointError(f"{where} has parameter {extra[0]!r}, which the model does not create; {hint}")


def expected_params(model, guide, *args, **kwargs) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``check_params``'s ``expected`` for any model/guide pair: the params that one run of the
    guide, then the model replayed on it, creates (names, unconstrained shapes, dtypes).

    Runs them on an empty param store and puts the store and all RNG states back afterwards, so
    an exact resume is not disturbed; params that already exist keep their values.
    """
    from pyro import poutine

    store = pyro.get_param_store()
    saved_store, saved_rng = store.get_state(), get_rng_state()
    store.clear()
    try:
        with torch.no_grad(), poutine.block():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            poutine.replay(model, trace=guide_trace)(*args, **kwargs)
        return {name: (tuple(value.shape), value.dtype) for name, value in store.get_state()["params"].items()}
    finally:
        store.clear()
        store.set_state(saved_store)
        set_rng_state(saved_rng)


def module_params(name: str, module: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``check_params``'s ``expected`` for ``pyro.module(name, module)``: its param-store names,
    shapes and dtypes."""
    from pyro.params.param_store import param_with_module_name

    return {param_with_module_name(name, key): (tuple(p.shape), p.dtype) for key, p in module.named_parameters()}


def check_permutation(saved: dict, num_data: int, path: str | os.PathLike | None = None, key: str = "permutation") -> None:
    """Check ``saved["run"][key]`` is ``None`` or a permutation of ``range(num_data)``.

    Raises:
        CheckpointError: another type, length or content.
    """
    permutation = saved["run"].get(key)
    if permutation is None:
        return
    where = f"checkpoint {str(path)!r}" if path is not None else "the checkpoint"
    if not torch.is_tensor(permutation) or permutation.dtype != torch.int64 or permutation.dim() != 1:
        raise CheckpointError(f"{where}: run {key!r} is not a 1-D int64 tensor; it is damaged or was edited")
    if permutation.numel() != num_data or not torch.equal(permutation.sort().values, torch.arange(num_data)):
        raise CheckpointError(
            f"{where}: run {key!r} is not a permutation of the {num_data} data points (length {permutation.numel()}); "
            "it is from other data or was edited"
        )


def check_run(saved: dict, expected: dict[str, type | tuple[type, ...]], path: str | os.PathLike | None = None) -> None:
    """Check ``saved["run"]`` holds each key of ``expected`` with a value of that type (``int``
    excludes ``bool``; ``float`` accepts ``int``).

    Raises:
        CheckpointError: a key missing or of another type.
    """
    where = f"checkpoint {str(path)!r}" if path is not None else "the checkpoint"
    run = saved["run"]
    for key, kind in expected.items():
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds:
            kinds = (*kinds, int)
        value = run.get(key, _MISSING)
        ok = value is not _MISSING and isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            state = "missing" if value is _MISSING else f"a {type(value).__name__}"
            raise CheckpointError(f"{where}: run {key!r} is {state}; it is damaged or was edited")


_MISSING = object()
