"""Choose the device once: ``auto`` (CUDA when present), ``cpu`` or ``cuda``."""

from __future__ import annotations

import torch

from pyro_vi.errors import ConfigError, DeviceError

__all__ = ["DEVICES", "resolve_device"]

DEVICES = ("auto", "cpu", "cuda")  # the choices of every --device


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Return the ``torch.device`` for ``name``.

    Raises:
        DeviceError: ``cuda`` was asked for and CUDA is not available.
        ConfigError: an unknown device name.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name} was requested but CUDA is not available here; use --device cpu or auto")
        return torch.device(name)
    raise ConfigError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
