"""Exceptions for user errors.

Every error a user can cause (bad data, bad options, a broken checkpoint) is a ``PyroVIError``;
its message is one line saying what was wrong and what to do. The CLI prints that line and exits
non-zero without a traceback; the Python API raises the precise subclass.
"""

__all__ = [
    "PyroVIError", "ConfigError", "DataError", "DataNotFoundError", "CheckpointError", "DeviceError",
    "TrainingDivergedError", "OutputError", "TrainingInterrupted",
]


class PyroVIError(Exception):
    """Base class of the errors a user can cause and fix."""


class ConfigError(PyroVIError, ValueError):
    """An option has a value that cannot work (e.g. a negative learning rate)."""


class DataError(PyroVIError, ValueError):
    """Data are missing, malformed, or outside the likelihood's support."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset could not be found locally nor downloaded."""


class CheckpointError(PyroVIError):
    """A checkpoint is truncated, corrupt, from a newer format or another configuration."""


class DeviceError(PyroVIError, RuntimeError):
    """The requested device is not available."""


class TrainingDivergedError(PyroVIError, FloatingPointError):
    """The loss or a gradient became NaN/inf; the last good checkpoint is kept."""


class OutputError(PyroVIError, OSError):
    """The output location cannot be written."""


class TrainingInterrupted(PyroVIError, KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training; the checkpoint (if any) was written first.

    A ``KeyboardInterrupt``, so a script stops (exit status 130) instead of carrying on with a
    half-trained model."""
