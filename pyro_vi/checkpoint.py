"""Checkpoint files: versioned, carrying their config, written atomically, checked on load.

A checkpoint is one ``torch.save`` dict::

    format_version  int, FORMAT_VERSION at writing time
    config          {"train": ..., "model": ...}: what produced it
    param_store     pyro.get_param_store().get_state()
    optimizer       the Pyro optimizer's get_state()
    rng             RNG states of torch (CPU and CUDA), Python and NumPy
    run             epoch, step in epoch, permutation, running loss, history
"""

from __future__ import annotations

import io
import os
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import pyro
import torch
import torch.distributed

from pyro_vi.errors import CheckpointError, OutputError
from pyro_vi.io import atomic_write

FORMAT_VERSION = 1

# Train options that may change between a run and its resumption.
_RESUMABLE_CHANGES = {"epochs", "checkpoint_every_steps", "on_nan", "compile"}  # compile: same numbers


def get_rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str | os.PathLike, config: dict, run: dict, optimizer) -> None:
    """Write a checkpoint atomically: the previous one survives any failure of this write.

    Raises:
        OutputError: the write failed (disk full, permissions); the previous checkpoint is intact.
    """
    payload = {
        "format_version": FORMAT_VERSION,
        "config": config,
        "param_store": pyro.get_param_store().get_state(),
        "optimizer": optimizer.get_state(),
        "rng": get_rng_state(),
        "run": {key: value for key, value in run.items()},
    }
    path = Path(path)
    buffer = io.BytesIO()  # serialize first: torch.save hides a failed write (disk full) in a RuntimeError
    torch.save(payload, buffer)
    try:
        atomic_write(path, lambda file: file.write(buffer.getbuffer()))
    except OSError as error:
        raise OutputError(
            f"could not write checkpoint {str(path)!r} ({error.strerror or error}); the previous checkpoint is "
            "intact; free some space or choose another --out, then rerun with --resume"
        ) from None
    # A process killed (kill -9) inside atomic_write leaves its temporary file behind.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def load(path: str | os.PathLike, expected_config: dict | None = None, broadcast: bool = True) -> dict:
    """Read and check a checkpoint.

    In a data-parallel run (an initialized ``torch.distributed`` group of several ranks) with
    ``broadcast``, this is a collective that every rank must call: rank 0, the one that writes
    checkpoints, reads the file and sends it (or its error) to the others, so OUT need not be on a
    filesystem shared between machines. ``broadcast=False`` reads the local file on any rank.

    Raises:
        CheckpointError: missing, truncated or corrupt file, a newer format, or a config that
            differs from ``expected_config`` (other than the number of epochs).
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
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupt ({type(error).__name__}); "
            "delete it to start over, or restore a good copy"
        ) from None
    if not isinstance(saved, dict) or "format_version" not in saved:
        raise CheckpointError(f"{str(path)!r} is not a pyro_vi checkpoint; pass a file written by pyro-vi")
    if saved["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format {saved['format_version']}, newer than this pyro_vi's "
            f"{FORMAT_VERSION}; upgrade pyro_vi to read it"
        )
    if expected_config is not None:
        difference = _config_difference(saved["config"], expected_config)
        if difference:
            raise CheckpointError(
                f"checkpoint {str(path)!r} was made with a different configuration ({difference}); "
                "use the same options as the original run, or a new --out"
            )
    return saved


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
