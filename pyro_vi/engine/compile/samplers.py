"""Reparameterized samplers a recorded program can replay and differentiate: Dirichlet, Beta, Gamma.

A recorded program (``pyro_vi.engine.compile.record``) keeps the tensor operations a step runs and replays
them under autograd. torch draws a Dirichlet (and so a Beta, a two-component Dirichlet) in an
``autograd.Function`` whose forward is ``aten._sample_dirichlet`` and whose backward is the implicit
reparameterization gradient ``_dirichlet_grad``. A recording sees the forward only, and replayed
alone ``_sample_dirichlet`` has no derivative. Inside :func:`traceable` the same sampler is spelled
with differentiable operations::

    x = _sample_dirichlet(stop(alpha))                  # the very draw torch makes, same RNG use
    G = _dirichlet_grad(x, stop(alpha), stop(sum alpha))  # torch's implicit gradient dx_i/dalpha_i
    d = alpha - stop(alpha)                              # zero, with derivative one
    x' = x + d G - x sum_i(d_i G_i)

whose value is ``x`` (``d`` is exactly zero) and whose vector-Jacobian product is torch's
``_Dirichlet_backward``, ``G * (g - sum_j x_j g_j)``, operation for operation: a run that samples
through it draws the same numbers and gets the same gradients as torch's, bit for bit.

Gamma needs nothing: ``aten._standard_gamma`` has a derivative (``_standard_gamma_grad``) that
autograd applies to the replayed operation. (estimators/vectorized.py takes another route under
``vmap``: a Dirichlet as normalized independent gammas, the same distribution but a different
pathwise gradient per draw; here the guarantee is equality with the plain run, so torch's own
gradient is kept.)
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.distributions.dirichlet as torch_dirichlet
from torch import Tensor

__all__ = ["dirichlet_rsample", "traceable"]


def dirichlet_rsample(concentration: Tensor) -> Tensor:
    """A Dirichlet draw equal to ``torch.distributions.Dirichlet(concentration).rsample()`` (same
    random numbers, value and gradient), made of operations that a recording can replay."""
    alpha = concentration.detach()
    x = torch._sample_dirichlet(alpha)
    total = alpha.sum(-1, True).expand_as(alpha)
    slope = torch._dirichlet_grad(x, alpha, total)  # dx_i / dalpha_i with the other x_j moving to sum to one
    shift = (concentration - alpha) * slope  # zero; its derivative is the slope
    return x + shift - x * shift.sum(-1, True)


class _TraceableDirichlet:
    """Stands in for torch's ``_Dirichlet`` autograd.Function: ``apply`` is ``dirichlet_rsample``."""

    apply = staticmethod(dirichlet_rsample)


@contextlib.contextmanager
def traceable() -> Iterator[None]:
    """Within the block, Dirichlet and Beta ``rsample`` (torch's and Pyro's) use
    :func:`dirichlet_rsample`; torch's sampler is put back afterwards."""
    original = torch_dirichlet._Dirichlet
    torch_dirichlet._Dirichlet = _TraceableDirichlet
    try:
        yield
    finally:
        torch_dirichlet._Dirichlet = original
