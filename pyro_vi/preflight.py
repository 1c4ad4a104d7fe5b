"""Checks before any work: sizes that cannot be allocated are refused in one line.

A size option such as ``--hidden-dims 400000000`` would otherwise fail deep inside PyTorch's
allocator (a traceback), or, for a count that grows a result step by step (``--replicates``), run
until the machine swaps. ``check_allocation`` compares the memory a run will need with what the
device has and raises a ``ConfigError`` naming the option.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import torch

from pyro_vi.errors import ConfigError

__all__ = ["FLOAT32_BYTES", "available_bytes", "check_allocation", "check_counts", "mlp_floats", "vae_floats", "check_vae"]

FLOAT32_BYTES = 4


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Memory a run can still allocate on ``device``: free GPU memory, or the host's available
    memory (``MemAvailable``, bounded by a cgroup limit); physical memory if neither is known."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    available = None
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return 2**63 - 1  # unknown: do not refuse
    try:
        with open("/sys/fs/cgroup/memory.max") as file:
            limit = file.read().strip()
        if limit.isdigit():
            available = min(available, int(limit))
    except OSError:
        pass
    return available


def check_allocation(num_floats: float, what: str, device: torch.device | str = "cpu", bytes_per_float: int = FLOAT32_BYTES) -> None:
    """Refuse a run needing ``num_floats`` numbers of ``bytes_per_float`` bytes at once when they
    exceed the memory available on ``device``.

    Args:
        num_floats: how many numbers the run holds at its peak (a float, so products cannot overflow).
        what: the option(s) responsible, as the user wrote them, e.g. ``"--hidden-dims 400000000"``.

    Raises:
        ConfigError: one line with the size needed and the size available.
    """
    needed = float(num_floats) * bytes_per_float
    available = available_bytes(device)
    if not math.isfinite(needed) or needed > available:
        raise ConfigError(
            f"{what} needs {_size(needed)} of memory, more than the {_size(available)} available on "
            f"{torch.device(device).type}; lower it"
        )


def check_counts(counts: dict[str, tuple[float, float]], device: torch.device | str = "cpu") -> None:
    """``check_allocation`` for each count option: ``{"--replicates 200": (count, numbers held per unit)}``.

    A count such as ``--elbo-samples 10**30`` keeps one number per unit at least (a list of losses,
    a tensor of draws): refused here in one line instead of running until killed.

    Raises:
        ConfigError: the first option whose count times its numbers per unit does not fit.
    """
    for what, (count, per_unit) in counts.items():
        check_allocation(float(count) * max(1.0, float(per_unit)), what, device)


def mlp_floats(sizes: Sequence[int]) -> float:
    """Weights and biases of a fully connected net with layer sizes ``sizes``."""
    sizes = [float(size) for size in sizes]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def vae_floats(x_dim: int, z_dim: int, hidden_dims: Sequence[int], batch_size: int = 1, num_particles: int = 1) -> float:
    """Peak numbers held by one SVI step of ``models.vae.VAE`` with Adam: each parameter four
    times (value, gradient, two moments) and the activations of encoder and decoder, kept for
    the backward pass, for ``batch_size * num_particles`` points (about three per unit)."""
    hidden = [float(h) for h in hidden_dims]
    params = mlp_floats([x_dim, *hidden, 2 * z_dim]) + mlp_floats([z_dim, *reversed(hidden), x_dim])
    activations = float(batch_size) * float(num_particles) * 3.0 * (2.0 * sum(hidden) + 4.0 * z_dim + 2.0 * x_dim)
    return 4.0 * params + activations


def check_vae(
    x_dim: int, z_dim: int, hidden_dims: Sequence[int], batch_size: int = 1, num_particles: int = 1,
    device: torch.device | str = "cpu", what: str | None = None,
) -> None:
    """``check_allocation`` for training a VAE of these sizes.

    Raises:
        ConfigError: the VAE, its Adam state and one step's activations do not fit.
    """
    if what is None:
        what = (f"a VAE with --z-dim {z_dim}, --hidden-dims {','.join(map(str, hidden_dims))}, "
                f"--batch-size {batch_size} and --particles {num_particles}")
    check_allocation(vae_floats(x_dim, z_dim, hidden_dims, batch_size, num_particles), what, device)


def _size(num_bytes: float) -> str:
    if not math.isfinite(num_bytes):
        return "unbounded memory"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes / 1e3:.1f} kB"
