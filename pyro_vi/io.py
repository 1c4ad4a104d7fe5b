"""Atomic file output: a file is either absent, or complete; never half-written.

Writes go to a temporary file in the same directory, are flushed and fsynced, then renamed over
the target (``os.replace`` is atomic on POSIX), so a crash or a failed write leaves the previous
version intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from pyro_vi.errors import OutputError


def prepare_output_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check it is a writable directory.

    Raises:
        OutputError: if ``path`` is a file or cannot be written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"output path {str(path)!r} is a file, not a directory; pass a directory with --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create output directory {str(path)!r} ({error.strerror}); choose another --out") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {str(path)!r} is not writable; choose another --out")
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(file)`` on a temporary file, fsync it and rename it onto ``path``."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(descriptor, mode) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=False, default=_to_builtin) + "\n"
    atomic_write(path, lambda file: file.write(text), mode="w")


def save_figure(figure, path: str | os.PathLike, **kwargs) -> None:
    """Save a matplotlib figure atomically (format from the suffix)."""
    path = Path(path)
    atomic_write(path, lambda file: figure.savefig(file, format=path.suffix.lstrip("."), **kwargs))


def _to_builtin(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialize {type(value).__name__} to JSON")
