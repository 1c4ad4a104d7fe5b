"""The param store as function inputs and back: the one module that reads Pyro's internals.

Pyro keeps every param unconstrained in its global ``ParamStoreDict`` and every ``pyro.module`` /
``PyroModule`` parameter there as well. Three jobs want "the loss as a function of the param
tensors": the gradient lab (``vmap(grad(loss))`` over replicates), the compiled step (a recorded
program whose inputs are the params) and the benchmarks (one store per contender). Pyro's public API
reads the store (``named_parameters``, ``get_state``, ``scope``) but cannot put another tensor in a
param's place for one call without re-registering it, so this module does that, here and nowhere
else. Everything outside ``pyro_vi.engine.params`` uses only the functions below.

* :func:`unconstrained`, :func:`constraint`        one param's tensor and constraint, by name
* :func:`discover`                                 the params a model/guide pair differentiates
* :func:`substituted`                              other tensors in the params' places for a block
* :func:`snapshot` / :func:`restore`               the whole store (names, tensors, constraints)
* :class:`StoreSlot`                               a store of one's own, swapped in for a block
* :func:`recording_modules`, :func:`owners`        the nn.Modules behind the params, and where each
  param lives in them (so a swap reaches the module attribute as well as the store entry)
* :func:`compute_log_r`                            Trace_ELBO's detached log p - log q per plate
* :func:`tracegraph_particles`, :func:`tracegraph_particle_loss`   TraceGraph_ELBO's traces and its
  per-particle loss and surrogate (pyro_vi's score-graph family reuses Pyro's own code)
* :func:`standard_normal_replaced`                 torch's and Pyro's ``_standard_normal`` (the noise
  of every Gaussian rsample) replaced for a block
* :func:`auto_continuous_loc_scale`, :func:`module_name`   an ``AutoContinuous`` guide's loc and scale per
  site, a ``PyroModule``'s param prefix (what ``pyro_vi.engine.posterior`` traces)
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping

import pyro
import torch
from pyro import poutine
from pyro.infer.trace_elbo import _compute_log_r
from torch import Tensor, nn

from pyro_vi.errors import ConfigError

__all__ = [
    "is_hidden",
    "unconstrained",
    "constraint",
    "names",
    "discover",
    "substituted",
    "snapshot",
    "restore",
    "StoreSlot",
    "recording_modules",
    "PYRO_MODULE_PREFIX",
    "owners",
    "holders",
    "module_parameters_swapped",
    "compute_log_r",
    "tracegraph_particles",
    "tracegraph_particle_loss",
    "standard_normal_replaced",
    "auto_continuous_loc_scale",
    "module_name",
]

# Trace_ELBO's per-plate detached log-ratio (score-function estimators' cost): Pyro's own function,
# re-exported here so that no other module imports a private Pyro name.
compute_log_r = _compute_log_r

PYRO_MODULE_PREFIX = "__pyro_module_"  # recording_modules' key of a PyroModule (not a pyro.module name)


def _store():
    return pyro.get_param_store()


def names() -> list[str]:
    """The names of every param in the store, in insertion order."""
    return list(_store().keys())


def unconstrained(name: str) -> Tensor:
    """The unconstrained tensor the optimizer steps for param ``name`` (the leaf autograd sees)."""
    return _store()._params[name]


def constraint(name: str):
    """The constraint of param ``name`` (``constraints.real`` for an unconstrained one)."""
    return _store()._constraints[name]


def discover(model: Callable, guide: Callable, *args, **kwargs) -> tuple[list[str], list[Tensor]]:
    """Names and unconstrained tensors of every param that one run of the guide, then the model
    replayed on it, reads and that requires a gradient, in the order they are first read."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    store = _store()
    found: list[str] = []
    for trace in (guide_trace, model_trace):
        for site in trace.nodes.values():
            name = site["name"]
            if site["type"] == "param" and name not in found and name in store._params and store._params[name].requires_grad:
                found.append(name)
    if not found:
        raise ConfigError("the model and guide have no Pyro params to differentiate; register them with pyro.param or pyro.module")
    return found, [store._params[name] for name in found]


@contextlib.contextmanager
def substituted(values: Mapping[str, Tensor]) -> Iterator[None]:
    """Within the block, ``pyro.param(name)`` reads ``values[name]`` (an unconstrained tensor, e.g. a
    vmap/fx tracer) instead of the stored tensor; the store is exactly as before afterwards.

    Only the store entries are swapped: a module holding the same tensor as an attribute computes with
    the attribute, so swap those too (:func:`owners` says where they are)."""
    store = _store()
    saved = dict(store._params)
    try:
        for name, value in values.items():
            store._params[name] = value
        yield
    finally:
        store._params.clear()
        store._params.update(saved)


def snapshot() -> tuple[dict, dict, dict]:
    """The whole store: tensors, constraints and the tensor -> name index (for :func:`restore`)."""
    store = _store()
    return dict(store._params), dict(store._constraints), dict(store._param_to_name)


def restore(state: tuple[dict, dict, dict]) -> None:
    """Put back what :func:`snapshot` returned, the very tensors included."""
    store = _store()
    params, constraints, param_to_name = state
    store._params.clear()
    store._params.update(params)
    store._constraints.clear()
    store._constraints.update(constraints)
    store._param_to_name.clear()
    store._param_to_name.update(param_to_name)


class StoreSlot:
    """A param store of one's own (say, one benchmark contender's: contenders share site and module
    names), swapped in for a block with ``with slot.active():`` and kept between blocks."""

    def __init__(self):
        self._state: tuple[dict, dict, dict] = ({}, {}, {})

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Within the block the global param store is this slot's; the outer store is back after."""
        outer = snapshot()
        restore(self._state)
        try:
            yield
        finally:
            self._state = snapshot()
            restore(outer)


@contextlib.contextmanager
def recording_modules(pyro_modules: bool = True) -> Iterator[dict[str, nn.Module]]:
    """Record, by name, the nn.Modules passed to ``pyro.module`` while the block runs, and (with
    ``pyro_modules``) every ``PyroModule`` whose attributes are read, keyed ``PYRO_MODULE_PREFIX +
    id`` (a PyroModule registers its params itself, not through ``pyro.module``)."""
    modules: dict[str, nn.Module] = {}
    original = pyro.module
    original_getattr = pyro.nn.PyroModule.__getattr__

    def recording(name, nn_module, update_module_params=False):
        modules[name] = nn_module
        return original(name, nn_module, update_module_params)

    def recording_getattr(self, name):
        modules.setdefault(PYRO_MODULE_PREFIX + str(id(self)), self)
        return original_getattr(self, name)

    pyro.module = pyro.primitives.module = recording
    if pyro_modules:
        pyro.nn.PyroModule.__getattr__ = recording_getattr
    try:
        yield modules
    finally:
        pyro.module = pyro.primitives.module = original
        pyro.nn.PyroModule.__getattr__ = original_getattr


def owners(modules: Mapping[str, nn.Module], direct: bool = False) -> dict[int, list[tuple[nn.Module, str]]]:
    """``id(parameter)`` -> the (module, key) pairs holding that tensor, so a swap reaches it
    everywhere. ``direct``: only a module's own ``_parameters`` (keys without dots, as a PyroModule
    holds its nn.Parameters and its PyroParams' ``*_unconstrained`` tensors); else every
    ``named_parameters`` key, submodules included."""
    found: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in modules.values():
        items = module._parameters.items() if direct else module.named_parameters(remove_duplicate=False)
        for key, parameter in items:
            if parameter is not None:
                found.setdefault(id(parameter), []).append((module, key))
    return found


@contextlib.contextmanager
def module_parameters_swapped(swaps: Mapping[int, tuple[nn.Module, Mapping[str, Tensor]]]) -> Iterator[None]:
    """Within the block each module's own ``_parameters[key]`` is the given tensor; put back after."""
    saved = [(module, key, module._parameters[key]) for module, replacements in swaps.values() for key in replacements]
    try:
        for module, replacements in swaps.values():
            for key, value in replacements.items():
                module._parameters[key] = value
        yield
    finally:
        for module, key, parameter in saved:
            module._parameters[key] = parameter


def holders(owners: dict[int, list[tuple[nn.Module, str]]]) -> dict[int, list[tuple[nn.Module, str]]]:
    """``owners``' dotted keys (``encoder.fc.weight``) as (the submodule, its own key): where
    ``module_parameters_swapped`` puts a tensor. Each holder once."""
    found: dict[int, list[tuple[nn.Module, str]]] = {}
    for identity, places in owners.items():
        for module, key in places:
            path, _, leaf = key.rpartition(".")
            holder = (module.get_submodule(path) if path else module, leaf)
            if not any(h[0] is holder[0] and h[1] == leaf for h in found.get(identity, ())):
                found.setdefault(identity, []).append(holder)
    return found


def tracegraph_particles(elbo, model: Callable, guide: Callable, args, kwargs) -> Iterator:
    """``(model_trace, guide_trace)`` per particle, as ``TraceGraph_ELBO`` draws them (its private ``_get_traces``)."""
    return elbo._get_traces(model, guide, args, kwargs)


def tracegraph_particle_loss(elbo, model_trace, guide_trace) -> tuple:
    """``TraceGraph_ELBO``'s (ELBO, surrogate loss) of one particle (its private ``_loss_and_surrogate_loss_particle``)."""
    return elbo._loss_and_surrogate_loss_particle(model_trace, guide_trace)


@contextlib.contextmanager
def standard_normal_replaced(draw: Callable) -> Iterator[None]:
    """Inside the block, every loaded ``torch.distributions`` / ``pyro.distributions`` module's private
    ``_standard_normal`` returns ``draw(shape, dtype=dtype, device=device)``; put back after."""
    import sys

    patched = []
    for name, module in list(sys.modules.items()):
        if name.startswith(("torch.distributions", "pyro.distributions")) and hasattr(module, "_standard_normal"):
            patched.append((module, module._standard_normal))
            module._standard_normal = lambda shape, dtype=None, device=None: draw(shape, dtype=dtype, device=device)
    try:
        yield
    finally:
        for module, original in patched:
            module._standard_normal = original


def is_hidden(site) -> bool:
    """Whether Pyro marked a sample site to stay out of traces (its private ``_do_not_trace`` flag,
    set on sites a handler adds for itself)."""
    return bool(site["infer"].get("_do_not_trace"))


def auto_continuous_loc_scale(guide) -> dict[str, tuple[Tensor, Tensor]] | None:
    """An ``AutoContinuous`` guide's (``AutoDiagonalNormal``, ``AutoMultivariateNormal``, ...) loc and
    marginal scale split per latent site, unconstrained (its private ``_loc_scale`` and
    ``_unpack_latent``): site -> (loc, scale), detached. ``None`` for any other guide, one that has not
    run yet, or one without a loc and scale (a normalizing flow)."""
    from pyro.infer.autoguide import AutoContinuous

    if not isinstance(guide, AutoContinuous) or guide.prototype_trace is None:
        return None
    try:
        loc, scale = guide._loc_scale()
    except NotImplementedError:
        return None
    with torch.no_grad():
        locs = {site["name"]: value.detach() for site, value in guide._unpack_latent(loc)}
        scales = {site["name"]: value.detach() for site, value in guide._unpack_latent(scale)}
    return {name: (locs[name], scales[name]) for name in locs}


def module_name(module) -> str | None:
    """The name prefix of a ``PyroModule``'s params in the store (its ``_pyro_name``), else ``None``."""
    return getattr(module, "_pyro_name", None)
