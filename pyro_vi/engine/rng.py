"""Save and restore every random number generator a Pyro run draws from: Python's ``random``,
NumPy's global state, torch's CPU generator and, when CUDA is initialized, every CUDA device's.

``get_state()`` returns a dict of tensors and plain values (checkpoint format 2 stores it with
``torch.save`` and loads it with ``weights_only=True``); ``set_state`` puts it back; ``preserved()``
is a block after which the streams are where they were before it (for work, such as recording a
program or measuring a gradient, that must not shift the run's random draws).
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch

__all__ = ["get_state", "set_state", "preserved", "python_state", "numpy_state", "torch_state", "set_torch_state"]


def get_state() -> dict:
    """Every generator's state: ``{"python": (version, internal tensor, gauss_next), "numpy": {...},
    "torch": ByteTensor, "cuda": [ByteTensor per device]}`` (``cuda`` when CUDA is available)."""
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


def set_state(state: dict) -> None:
    """Restore what :func:`get_state` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(python_state(state["python"]))
    np.random.set_state(numpy_state(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def torch_state() -> tuple:
    """torch's generators only (the CPU one and, once CUDA is initialized, every device's): what a
    tensor program draws from. Cheaper than :func:`get_state` (no Python or NumPy state)."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)


def set_torch_state(state: tuple) -> None:
    """Restore what :func:`torch_state` returned."""
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def python_state(saved: dict) -> tuple:
    """``get_state()["python"]`` as the tuple ``random.setstate`` takes."""
    return saved["version"], tuple(int(v) for v in saved["internal"].tolist()), saved["gauss_next"]


def numpy_state(saved: dict) -> tuple:
    """``get_state()["numpy"]`` as the tuple ``np.random.set_state`` takes."""
    keys = saved["keys"].numpy().astype(np.uint32)
    return "MT19937", keys, saved["position"], saved["has_gauss"], saved["cached_gaussian"]


@contextlib.contextmanager
def preserved() -> Iterator[dict]:
    """Every generator is back where it was when the block ends (normally or by an exception)."""
    state = get_state()
    try:
        yield state
    finally:
        set_state(state)
