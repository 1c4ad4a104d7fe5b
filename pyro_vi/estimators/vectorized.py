"""The gradient lab's replicates in one batched pass: ``vmap(grad(loss))`` over the replicate index.

The loss is the estimator's ``differentiable_loss`` as a function of the unconstrained param
tensors: for one call each param-store entry, each parameter of a module registered with
``pyro.module`` (through ``torch.func.functional_call``) and each parameter a ``PyroModule`` holds
itself (its nn.Parameters and its PyroParams' ``*_unconstrained`` tensors) is swapped for the
functional input, with :mod:`pyro_vi.engine.params` doing every swap. ``torch.func.vmap(...,
randomness="different")`` then draws different noise per replicate, once the samplers that draw in
place are made out-of-place for the block (``_out_of_place_noise``).

``torch.func.grad`` returns zeros for an input the loss never reaches, so before the batched pass
one probe compares, param by param, which params the plain autograd loop and the functional inputs
reach; a param the swap missed raises (and :func:`~pyro_vi.estimators.variance.gradient_variance`
falls back to the loop).
"""

from __future__ import annotations

import contextlib
import sys

import pyro
import pyro.ops.special
import torch
from torch import Tensor, nn

from pyro_vi.engine import params
from pyro_vi.estimators import exact

__all__ = ["gradients"]

_MEMORY_PER_PASS = 256e6  # bytes of gradients one batched pass may hold (float32, with headroom x4)


def gradients(estimator, model, guide, args, kwargs, names, tensors, modules, num_replicates, chunk_size=None) -> list:
    """Gradients of ``num_replicates`` independent estimates, drawn in batched passes.

    Args:
        estimator: a :class:`~pyro_vi.estimators.GradientEstimator` (already checked on the pair).
        model, guide, args, kwargs: the pair and its arguments.
        names, tensors: the params to differentiate and their unconstrained tensors
            (:func:`pyro_vi.engine.params.discover`).
        modules: the modules recorded while discovering them
            (:func:`pyro_vi.engine.params.recording_modules`).
        num_replicates: estimates to draw.
        chunk_size: replicates per batched pass (default: as many as fit in about 256 MB).

    Returns:
        One list per pass of ``(size, *param.shape)`` float64 gradients, one per param.

    Raises:
        RuntimeError: a param the loop differentiates is not reached through its functional input;
            anything ``vmap`` refuses propagates as raised.
    """
    module_keys = _module_keys(modules, names, tensors)  # param name -> functional_call key
    pyro_module_owners = _pyro_module_owners(modules, names, tensors)  # param name -> [(PyroModule, key)]
    runner = _Runner(modules)

    def loss(values: tuple[Tensor, ...]) -> Tensor:
        functional, stored, swaps = {}, {}, {}
        for name, value in zip(names, values):
            if name in module_keys:
                functional[module_keys[name]] = value
                continue
            stored[name] = value
            # A PyroModule computes with its own attribute; a PyroParam reads the store only while
            # the store holds the very tensor the module holds: swap both.
            for module, key in pyro_module_owners.get(name, ()):
                swaps.setdefault(id(module), (module, {}))[1][key] = value
        with params.substituted(stored), params.module_parameters_swapped(swaps):
            return torch.func.functional_call(
                runner, functional, (lambda: estimator.differentiable_loss(model, guide, *args, **kwargs),), strict=False
            )

    values = tuple(t.detach() for t in tensors)
    if chunk_size is None:
        size = sum(t.numel() for t in tensors)
        chunk_size = max(1, min(num_replicates, int(_MEMORY_PER_PASS / (4 * 4 * max(size, 1)))))
    snapshot = params.snapshot()
    chunks = []
    try:
        _check_functional_inputs_are_reached(loss, values, estimator, model, guide, args, kwargs, names, tensors, snapshot)
        gradient = torch.func.grad(loss)
        with _out_of_place_noise(), pyro.validation_enabled(False):
            batched = torch.func.vmap(lambda _: gradient(values), randomness="different")
            done = 0
            while done < num_replicates:
                size = min(chunk_size, num_replicates - done)
                grads = batched(torch.arange(size))
                chunks.append([g.detach().double() for g in grads])
                done += size
    finally:
        params.restore(snapshot)
    return chunks


def _check_functional_inputs_are_reached(loss, values, estimator, model, guide, args, kwargs, names, tensors, snapshot):
    """Raise if a param the loop differentiates gets no gradient through its functional input.

    ``torch.func.grad`` returns zeros for an input the loss never touches, so a param the swap
    missed (a module we did not see, a tensor cached before the call) would look like an exactly
    zero gradient. One unbatched evaluation of each path shows which params each reaches.
    """
    loop_loss = estimator.differentiable_loss(model, guide, *args, **kwargs)
    loop_reached = _reached(loop_loss, tensors)
    params.restore(snapshot)
    leaves = tuple(value.clone().requires_grad_(True) for value in values)
    functional_reached = _reached(loss(leaves), leaves)
    params.restore(snapshot)
    missed = [name for name, by_loop, by_functional in zip(names, loop_reached, functional_reached) if by_loop and not by_functional]
    if missed:
        raise RuntimeError(
            f"params {', '.join(missed)} get gradients in the loop but none through the functional inputs "
            "(they are not swapped); vmap would report zeros for them"
        )


def _reached(loss: Tensor, inputs) -> list[bool]:
    if not getattr(loss, "requires_grad", False):
        return [False] * len(inputs)
    grads = torch.autograd.grad(loss, list(inputs), allow_unused=True)
    return [grad is not None for grad in grads]


# -- where each param lives ----------------------------------------------------------------------


def _registered(modules: dict[str, nn.Module]) -> list[nn.Module]:
    """The modules passed to ``pyro.module`` (not the recorded PyroModules)."""
    return [module for key, module in modules.items() if not key.startswith(params.PYRO_MODULE_PREFIX)]


class _Runner(nn.Module):
    """Holds the recorded modules so ``functional_call`` can swap all their parameters at once."""

    def __init__(self, modules: dict[str, nn.Module]):
        super().__init__()
        self.nets = nn.ModuleList(_registered(modules))

    def forward(self, function):
        return function()


def _module_keys(modules, names, tensors) -> dict[str, str]:
    """Param-store name -> ``functional_call`` key in ``_Runner``, for the parameters of modules
    registered with ``pyro.module`` (store names ``module$$$key``)."""
    registered = _registered(modules)
    index = {id(module): i for i, module in enumerate(registered)}
    owners = params.owners({str(i): module for i, module in enumerate(registered)})
    keys = {}
    for name, tensor in zip(names, tensors):
        if "$$$" in name:
            if id(tensor) not in owners:
                raise RuntimeError(f"module parameter {name} not found among the recorded modules")
            module, key = owners[id(tensor)][0]
            keys[name] = f"nets.{index[id(module)]}.{key}"
    return keys


def _pyro_module_owners(modules, names, tensors) -> dict[str, list[tuple[nn.Module, str]]]:
    """Param-store name -> the (PyroModule, key in its ``_parameters``) pairs holding that tensor."""
    pyro_modules = {key: module for key, module in modules.items() if key.startswith(params.PYRO_MODULE_PREFIX)}
    owners = params.owners(pyro_modules, direct=True)
    return {name: owners[id(tensor)] for name, tensor in zip(names, tensors) if "$$$" not in name and id(tensor) in owners}


# -- samplers that vmap can batch ----------------------------------------------------------------


@contextlib.contextmanager
def _out_of_place_noise():
    """Make the samplers and log-sum-exps of torch and Pyro vmap-friendly for the block; restored after.

    - torch.distributions' in-place ``_standard_normal`` becomes ``torch.randn`` (vmap draws
      different noise per replicate only out of place; :class:`~pyro_vi.estimators.exact.noise_from`);
    - Dirichlet (and so Beta) ``rsample`` draws normalized independent standard gammas: the same
      distribution, differentiated through torch's own gamma derivative, where torch's sampler is
      an autograd.Function without ``setup_context``, which vmap refuses;
    - Pyro's ``safe_log`` (in TraceEnum_ELBO's log-space einsum) gets a ``setup_context`` twin.
    """
    patched = []
    safe_log = pyro.ops.special.safe_log
    for name, module in list(sys.modules.items()):
        if name.startswith("pyro.") and getattr(module, "safe_log", None) is safe_log:
            patched.append((module, "safe_log", module.safe_log))
            module.safe_log = _safe_log
    dirichlet = torch.distributions.Dirichlet
    patched.append((dirichlet, "rsample", dirichlet.rsample))
    dirichlet.rsample = _dirichlet_rsample
    try:
        with exact.noise_from(torch.randn):
            yield
    finally:
        for owner, attribute, original in reversed(patched):
            setattr(owner, attribute, original)


def _dirichlet_rsample(self, sample_shape=torch.Size()):
    shape = self._extended_shape(sample_shape)
    gammas = torch._standard_gamma(self.concentration.expand(shape))
    gammas = gammas.clamp(min=torch.finfo(gammas.dtype).tiny)
    return gammas / gammas.sum(-1, keepdim=True)


class _SafeLog(torch.autograd.Function):
    """``pyro.ops.special.safe_log`` (log with the gradient's 1/x clamped at 1/eps) for functorch."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.log()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad / x.clamp(min=torch.finfo(x.dtype).eps)


def _safe_log(x):
    return _SafeLog.apply(x)
