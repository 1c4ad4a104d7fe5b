"""Checkpoint files: versioned, carrying their config, written atomically, checked on load; and
the one way a checkpoint's params go back into the param store.

* :func:`save` / :func:`load`         write and read a file (layout and checks:
  :mod:`~pyro_vi.engine.checkpoint_format`); a file is read once per run: :func:`load` takes an
  already loaded checkpoint (``loaded=``) and only checks its config again
* :func:`restore_param`, :func:`restore_params`   a checkpoint's values into the param store, in
  place where the param exists (so an ``nn.Module`` registered with ``pyro.module`` holds them)
* :func:`check_params`, :func:`expected_params`, :func:`module_params`, :func:`check_permutation`,
  :func:`check_run`                   checks a trainer makes against its own model

``save`` refuses to write non-finite parameters or optimizer state; ``load`` refuses a file that is
not exactly what ``save`` writes (format 2: tensors and plain values only, ``weights_only=True``).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Iterable

import pyro
import torch
import torch.distributed
from torch import Tensor

from pyro_vi.engine import checkpoint_format as file_format
from pyro_vi.engine import rng
from pyro_vi.engine.checkpoint_format import FORMAT_VERSION, KEYS
from pyro_vi.errors import CheckpointError, OutputError
from pyro_vi.io import atomic_write

__all__ = [
    "FORMAT_VERSION",
    "KEYS",
    "save",
    "load",
    "check_config",
    "restore_param",
    "restore_params",
    "check_params",
    "expected_params",
    "module_params",
    "check_permutation",
    "check_run",
]


# --------------------------------------------------------------------------------------------
# Writing.


def save(path: str | os.PathLike, config: dict, run: dict, optimizer) -> None:
    """Write a checkpoint atomically: the previous one survives any failure of this write.

    Args:
        path: the file to write.
        config: ``{"model": ..., "train": ...}``: what identifies the run.
        run: the trainer's run state (tensors and plain values).
        optimizer: the Pyro optimizer, whose ``get_state()`` is saved.

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
    bad = file_format.first_non_finite(optimizer_state, "optimizer")
    if bad is not None:
        raise CheckpointError(f"{bad} holds NaN/inf, so it was not saved to {str(path)!r} ({kept}); lower the learning rate")
    payload = {
        "format_version": FORMAT_VERSION,
        "config": file_format.plain(config, "config"),
        "param_store": {
            "params": params,
            "constraints": {name: file_format.constraint_spec(name, c) for name, c in store["constraints"].items()},
        },
        "optimizer": optimizer_state,
        "rng": rng.get_state(),
        "run": file_format.plain(dict(run), "run"),
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


# --------------------------------------------------------------------------------------------
# Reading.


def load(
    path: str | os.PathLike, expected_config: dict | None = None, broadcast: bool = True, loaded: dict | None = None
) -> dict:
    """Read and check a checkpoint.

    In a data-parallel run (an initialized ``torch.distributed`` group of several ranks) with
    ``broadcast``, this is a collective that every rank must call: rank 0, the one that writes
    checkpoints, reads the file and sends it (or its error) to the others, so OUT need not be on a
    filesystem shared between machines. ``broadcast=False`` reads the local file on any rank.

    Args:
        path: the checkpoint file.
        expected_config: the run's config; a checkpoint made with another one is refused.
        broadcast: see above.
        loaded: what an earlier ``load`` of ``path`` returned on this rank (e.g. a command's
            preflight): not read again, only its config checked against ``expected_config``.

    Returns:
        The checkpoint dict, constraints mapped back to constraint objects.

    Raises:
        CheckpointError: missing, truncated, corrupt or unsafe file, a newer or older format, an
            entry missing or of the wrong type, an unusable RNG state, NaN/inf or non-float
            parameters, or a config that differs from ``expected_config`` (other than the epochs).
    """

    def read() -> dict:
        if loaded is None:
            return _read(path, expected_config)
        check_config(loaded, expected_config, path)
        return loaded

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not (broadcast and distributed and torch.distributed.get_world_size() > 1):
        return read()
    box: list = [None]
    if torch.distributed.get_rank() == 0:
        try:
            box = [read()]
        except CheckpointError as error:
            box = [error]
    torch.distributed.broadcast_object_list(box, src=0)
    if isinstance(box[0], CheckpointError):
        raise box[0]
    return box[0]


def check_config(saved: dict, expected_config: dict | None, path: str | os.PathLike | None = None, data: str | None = None) -> None:
    """Refuse a loaded checkpoint made with another config than ``expected_config`` (``None``: any).

    Args:
        data: what the run trains on, for the message when the data's content fingerprint
            (``expected_config["model"]["data_fingerprint"]``) differs from the checkpoint's.

    Raises:
        CheckpointError: other data (same shapes, other values), or the options that differ,
            other than those a resumed run may change.
    """
    if expected_config is None:
        return
    difference = file_format.config_difference(saved["config"], expected_config)
    if difference:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was made with a different configuration ({difference}); "
            "use the same options as the original run, or a new --out"
        )
    # The data's content: compared when the checkpoint and the run both have a fingerprint (a
    # checkpoint of an older pyro_vi, or a caller that gives none, is compared by shapes only).
    key = file_format.DATA_FINGERPRINT
    old, new = saved["config"].get("model", {}).get(key), expected_config.get("model", {}).get(key)
    if old is not None and new is not None and old != new:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was trained on other data than {data or 'this run'}"
            " (its content fingerprint differs); resume with the data it was trained on, or start over "
            "(--overwrite, or a new --out)"
        )


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
        file_format.validate(saved)
    except file_format.Invalid as error:
        raise CheckpointError(f"checkpoint {str(path)!r}: {error}; it is damaged or was edited, restore a good copy") from None
    check_config(saved, expected_config, path)
    return saved


# --------------------------------------------------------------------------------------------
# Restoring params: the one way a checkpoint's values go back into the param store.


def restore_param(name: str, value: Tensor) -> None:
    """Copy a checkpoint's unconstrained ``value`` into the store's param ``name``, in place.

    In place, so an ``nn.Module`` registered with ``pyro.module`` (whose own ``nn.Parameter`` is the
    store's tensor) and a ``PyroModule`` hold the restored values, and an optimizer keeps its
    tensor. The engine calls it as the model and guide create each param on a resumed run;
    :func:`restore_params` for a whole checkpoint.

    Raises:
        CheckpointError: the checkpoint's value has another shape or dtype than the param.
    """
    target = pyro.get_param_store().get_param(name).unconstrained()
    if target.shape != value.shape or value.dtype != target.dtype:
        raise CheckpointError(
            f"checkpoint param {name!r} has shape {tuple(value.shape)} and dtype {value.dtype}; the model makes it "
            f"{tuple(target.shape)} {target.dtype}; resume with the model and options that wrote it"
        )
    with torch.no_grad():
        target.copy_(value.to(dtype=target.dtype, device=target.device))


def restore_params(saved: dict, device: torch.device | str | None = None) -> None:
    """Put a loaded checkpoint's params into the param store: in place (:func:`restore_param`)
    into each param that already exists (register modules with ``pyro.module`` first), as a new
    entry with the checkpoint's constraint, on ``device``, otherwise (bit for bit: the stored
    unconstrained tensor, no transform round trip).

    Raises:
        CheckpointError: a value of another shape or dtype than the existing param.
    """
    store = pyro.get_param_store()
    values, constraints = saved["param_store"]["params"], saved["param_store"]["constraints"]
    for name, value in values.items():
        if name in store:
            restore_param(name, value)
        else:
            fresh = value.to(device if device is not None else value.device).detach().clone().requires_grad_()
            store.set_state({"params": {name: fresh}, "constraints": {name: constraints[name]}})


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
    saved_store = store.get_state()
    store.clear()
    try:
        with rng.preserved(), torch.no_grad(), poutine.block():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            poutine.replay(model, trace=guide_trace)(*args, **kwargs)
            return {name: (tuple(value.shape), value.dtype) for name, value in store.get_state()["params"].items()}
    finally:
        store.clear()
        store.set_state(saved_store)


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
