"""Checks of ``fit``'s arguments, made before any work: one ``PyroVIError`` line naming the argument
and what to pass."""

from __future__ import annotations

from pathlib import Path

from pyro_vi.errors import ConfigError, OutputError

__all__ = ["check_fit_options", "check_fresh_checkpoint"]

ON_NAN = ("raise", "skip")


def check_fit_options(num_steps, on_nan, seed, scheduler_every, checkpoint_every, checkpoint, resume) -> None:
    """``ConfigError`` naming the first of ``fit``'s options that is out of its range."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ConfigError(f"num_steps must be a non-negative integer, got {num_steps!r}")
    if on_nan not in ON_NAN:
        raise ConfigError(f"on_nan must be 'raise' or 'skip', got {on_nan!r}")
    if seed is not None and (isinstance(seed, bool) or not hasattr(seed, "__index__") or not 0 <= int(seed) <= 2**32 - 1):
        raise ConfigError(f"seed must be an integer from 0 to 2**32 - 1 (NumPy's range), got {seed!r}")
    if isinstance(scheduler_every, bool) or not isinstance(scheduler_every, int) or scheduler_every <= 0:
        raise ConfigError(f"scheduler_every must be a positive integer, got {scheduler_every!r}")
    if not callable(checkpoint_every) and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0):
        raise ConfigError(f"checkpoint_every must be a non-negative integer of steps, got {checkpoint_every!r}")
    if resume and checkpoint is None:
        raise ConfigError("resume needs the checkpoint path to continue from; pass checkpoint=PATH")


def check_fresh_checkpoint(path: Path, overwrite: bool, data_parallel) -> None:
    """A fresh run must not replace a run's checkpoint by accident, and must be able to write one."""
    exists = path.exists()
    if data_parallel is not None:
        exists = data_parallel.broadcast(exists)  # rank 0 alone writes: its file is the one at stake
    if exists and not overwrite:
        raise OutputError(f"{str(path)!r} already holds a checkpoint; pass resume=True to continue it or overwrite=True to start over")
    if data_parallel is None or data_parallel.is_main:
        if path.is_dir():
            raise OutputError(f"checkpoint path {str(path)!r} is a directory; pass a file path")
        if not path.parent.is_dir():
            raise OutputError(f"the directory of checkpoint {str(path)!r} does not exist; create it or choose another path")
