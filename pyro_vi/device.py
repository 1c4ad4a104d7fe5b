"""Choose the device once: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

import torch

from pyro_vi.errors import ConfigError, DeviceError

__all__ = ["DEVICES", "check_device_name", "resolve_device"]

DEVICES = ("auto", "cpu", "cuda", "cuda:N")  # what every --device accepts (N: a GPU's index)


def check_device_name(name: str) -> str:
    """``name`` if it is one of :data:`DEVICES` (``cuda:N`` with N a non-negative integer), whether or
    not that device is present here (:func:`resolve_device` checks that).

    Raises:
        ConfigError: any other name.
    """
    if name in ("auto", "cpu", "cuda"):
        return name
    prefix, _, index = name.partition(":")
    if prefix == "cuda" and index.isdigit() and index.isascii():
        return f"cuda:{int(index)}"
    raise ConfigError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N (N: the GPU's index)")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Return the ``torch.device`` for ``name`` (``auto``: CUDA when present, else CPU).

    Raises:
        DeviceError: ``cuda`` or ``cuda:N`` was asked for and CUDA (or GPU N) is not available.
        ConfigError: an unknown device name.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {name} was requested but CUDA is not available here; use --device cpu or auto")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name} was requested but this machine has {torch.cuda.device_count()} GPU(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device
