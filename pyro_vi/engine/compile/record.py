"""Trace the ELBO once, then replay it as a plain tensor program: no Pyro tracing per step.

Each SVI step runs the model and guide under Pyro's effect handlers (trace, replay, plates,
param-store lookups) before any arithmetic happens. For a model whose structure does not change
between steps (the same sites, shapes and plates each time; only the values of the data, the
subsample indices, the KL weight and the noise differ) that bookkeeping always gives the same
computation. ``compile_loss`` records that computation once with
``torch.fx.experimental.proxy_tensor.make_fx`` at the level of tensor operations::

    surrogate(params, *args) = -(sum_model log p(x, z) - sum_guide log q(z))    z = loc + scale * eps

with the unconstrained Pyro params (and the parameters of modules registered by ``pyro.module`` or
held by ``PyroModule``s, AutoGuides included) as inputs, and the guide's noise drawn afresh on every
call (the recorded random ops read the global torch RNG, in the order the plain path draws). The
result is an ordinary function of tensors: ``loss = compiled(*args); loss.backward()`` fills the
same ``.grad``s as ``Trace_ELBO().loss_and_grads`` and, with the same RNG state, gives the same
value and gradients (checked once when compiling, and by ``tests/engine/test_compiled.py``).

Any loss whose ``differentiable_loss`` is made of tensor operations is recorded the same way:
``TraceEnum_ELBO`` (the enumerated GMM) and the pyro_vi estimators (those whose ``not_recordable`` is None)
(score-function ones included: their surrogates are tensor operations of the traces). What stands
between a Pyro step and a recording, and is handled here:

* sample validation: a distribution built with ``validate_args`` (a ``PyroSample`` prior made
  while Pyro's validation was on keeps it) checks each value's support, which reads the value;
  the recording runs with it off (the first, plain step has validated the pair);
* Beta and Dirichlet samplers (torch's autograd.Function): recorded through
  :mod:`pyro_vi.engine.compile.samplers`, the same draws and gradients as torch's;
* PyroModules (AutoGuides, ``PyroModule[nn.Linear]``) hold their params as attributes as well as
  in the store: both are swapped for the recording's inputs (:mod:`pyro_vi.engine.params`);
* ``detach()`` and ``no_grad`` blocks (score-function surrogates, sticking the landing): recorded
  above autograd (``make_fx(..., pre_dispatch=True)``), so they stay what they are;
* a truth value read off a tensor (``if mask.all():`` in Pyro's TraceEnum_ELBO, a model's
  ``if x.sum() > 0:``) is recorded as a guard: the program returns the tensor too, and a step
  where it differs from the recording's is taken by the plain path from the same RNG state.

What it refuses (``ConfigError``, one line; :func:`can_compile` says it without recording): state the
step rewrites in the param store (``score-baseline``, TraceGraph_ELBO's decaying-average baselines),
losses not covered yet, vectorized particles, a ``Trace_ELBO`` guide site that cannot rsample (use a
score-function estimator), and a value read into Python (``.item()``, a tensor as an index).
Non-tensor arguments are recorded as constants: pass what changes between steps (a KL weight) as a tensor.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from typing import Callable, Iterator, Sequence

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceGraph_ELBO
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor, nn
from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing, make_fx
from torch.overrides import TorchFunctionMode

from pyro_vi.engine import params as param_store
from pyro_vi.engine import rng
from pyro_vi.engine.compile import graph_passes, samplers
from pyro_vi.engine.compile.trace_elbo import surrogate_loss, trace_elbo_value, tracegraph_loss
from pyro_vi.errors import ConfigError

__all__ = ["CompiledLoss", "can_compile", "compile_loss", "surrogate_loss"]
# surrogate_loss: re-exported from pyro_vi.engine.compile.trace_elbo (older imports)


class CompiledLoss:
    """The step's loss of one model/guide pair, recorded once; call it with the step's args.

    Attributes:
        params: the unconstrained tensors it differentiates (Pyro's params and registered module
            parameters), the leaves whose ``.grad`` a backward pass fills.
        names: their param-store names.
        guards: the truth values the recording read off tensors (``if mask.all():`` in Pyro's
            TraceEnum_ELBO, a model's ``if x.sum() > 0:``), in order. The program returns those
            tensors too; a call where one differs took another branch than the recording, and that
            step is taken by the loss's own ``differentiable_loss`` instead, from the same RNG state
            (so it is still the plain step).
        fallbacks: how many calls were taken that way.
        terms: with ``Trace_ELBO``, each site's (particle, sign): the program also returns the sites'
            log-prob sums, from which :meth:`loss_and_grads` sums the loss as Pyro does.
    """

    def __init__(self, graph: Callable, names: list[str], params: list[Tensor], guards: Sequence[bool] = (),
                 plain: Callable | None = None, joint: Callable | None = None, terms: Sequence = (),
                 num_particles: int = 1, plain_step: Callable | None = None, params_read: Sequence[Tensor] | None = None):
        self._graph = graph
        self._joint = self.joint_graph = joint  # _joint: what runs (inductor's, with a backend)
        self.backend: str | None = None
        self.whole_steps: dict = {}  # the whole step with an optimizer's update (pyro_vi.engine.compile.whole_step), by its state
        self.terms, self._particles, self._plain_step = list(terms), num_particles, plain_step
        self.finite: bool | None = None  # the last loss_and_grads' loss and gradients were finite (None: unknown)
        self.names = names
        self.params = params
        # the params the recording read (a subset of ``params``, the program's inputs); a step the
        # program takes reads these, a step that falls back reads what its plain run read
        self.params_read = list(params) if params_read is None else list(params_read)
        self.last_read = self.params_read  # the params the last call read
        self.guards = list(guards)
        self._plain = plain
        self.fallbacks = 0
        self.uses = 0  # steps taken with it by fit, over all calls (pyro_vi.engine.compile.policy's audit schedule)

    def __call__(self, *args) -> Tensor:
        """The loss on ``args``, differentiable: ``backward()`` fills the params' ``.grad``."""
        if not self.guards:
            out = self._graph(self.params, *args)
            return out if isinstance(out, Tensor) else out[0]
        state = rng.torch_state()
        value, *read = self._graph(self.params, *args)
        if self._guards_hold(read[len(self.terms):]):
            return value
        return self._fall_back(state, args)

    def loss_and_grads(self, *args) -> float:
        """The loss on ``args`` as the loss's own ``loss_and_grads`` returns it (a float), its
        gradients added to the params' ``.grad`` as ``self(*args).backward()`` adds them, the same
        numbers: the recorded forward and backward pass as one program
        (:func:`pyro_vi.engine.compile.graph_passes.joint`), replayed without the autograd engine (a third less
        time on a tiny model: the engine's per-node bookkeeping is most of its backward)."""
        self.last_read = self.params_read  # a fall-back sets the params its plain run read
        return self._loss_and_grads(*args)

    def _loss_and_grads(self, *args) -> float:
        if self._joint is None:
            return float(_backward(self(*args)))
        state = rng.torch_state() if self.guards else None
        with torch.no_grad():
            value, *rest, finite = self._joint(self.params, *args)
        grads, read = rest[: len(self.params)], rest[len(self.params):]
        self.finite = bool(finite)  # the loss and every gradient, checked in the program
        if not self._guards_hold(read[len(self.terms):]):
            self.finite = None  # the plain step's: fit checks it
            return self._fall_back(state, args, step=True)
        for param, grad, fresh in zip(self.params, grads, self._joint.fresh_grads):
            if grad is None:
                continue
            if not fresh:  # a folded constant or a view: .grad gets a tensor of its own, as autograd gives
                grad = grad.clone(memory_format=torch.contiguous_format)
            param.grad = grad if param.grad is None else param.grad + grad
        return trace_elbo_value(self.terms, read, self._particles) if self.terms else float(value)

    def loss_and_update(self, run: Callable, *args) -> tuple[float, bool]:
        """One step by ``run``, a whole-step program (:func:`pyro_vi.engine.compile.whole_step.whole_step`):
        the loss, and ``True`` when the program took the step (the update is made, or nothing is
        written because the loss or a gradient is not finite: ``self.finite``); ``False`` when a
        guard differed: the plain step has then filled the gradients, for the optimizer to apply."""
        self.last_read = self.params_read
        state = rng.torch_state() if self.guards else None
        with torch.no_grad():
            value, terms, *guards, _ok, finite = run(*args)
        if not self._guards_hold(guards):
            self.finite = None
            return self._fall_back(state, args, step=True), False
        self.finite = bool(finite)
        return (trace_elbo_value(self.terms, terms.tolist(), self._particles) if self.terms else float(value)), True

    def _guards_hold(self, read: Sequence[Tensor]) -> bool:
        return all(bool(flag) == want for flag, want in zip(read, self.guards))

    def _fall_back(self, state: Tensor, args, step: bool = False):
        self.fallbacks += 1
        rng.set_torch_state(state)  # the plain step draws the noise the program drew
        with pyro.validation_enabled(False):
            if not step:
                return self._plain(*args)
            # the params this plain run reads are the ones to step (another branch may read others)
            with poutine.trace(param_only=True) as capture:
                value = float(self._plain_step(*args)) if self._plain_step is not None else float(_backward(self._plain(*args)))
            self.last_read = list(dict.fromkeys(site["value"].unconstrained() for site in capture.trace.nodes.values()))
            return value


def _backward(value: Tensor) -> Tensor:
    value.backward()
    return value.detach()


# Pyro ELBOs a recording reproduces, by class name.
_PYRO_LOSSES = ("Trace_ELBO", "TraceEnum_ELBO", "TraceGraph_ELBO")


def can_compile(model: Callable, guide: Callable, args: Sequence, loss) -> str | None:
    """``None`` if ``compile_loss`` covers this loss and these arguments, else the one-line reason.

    Covered: ``Trace_ELBO``, ``TraceEnum_ELBO`` and ``TraceGraph_ELBO`` (any ``num_particles``, one
    after another; TraceGraph_ELBO without decaying-average baselines, which recording refuses), and
    the pyro_vi estimators whose ``not_recordable`` is None. Cheap: it looks at the loss and the arguments
    only (no tracing, no recording, no random draw); what only a trace shows (a Trace_ELBO guide
    site that cannot rsample, ``.item()`` in the model) is refused by :func:`compile_loss` with a
    ``ConfigError`` after the first plain step.
    """
    loss = Trace_ELBO() if loss is None else loss
    if type(loss).__module__.startswith("pyro_vi.estimators."):  # a GradientEstimator (a layer above: not imported)
        return None if loss.not_recordable is None else f"{loss.not_recordable}; drop --compile for it"
    name = type(loss).__name__
    if name not in _PYRO_LOSSES or type(loss).__module__.split(".")[0] != "pyro":
        return f"compile covers Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO and pyro_vi's estimators, not {name}; drop --compile for this loss"
    if loss.num_particles > 1 and loss.vectorize_particles:
        return f"compile records particles one after another; use {name}(vectorize_particles=False) or drop --compile"
    return None


def compile_loss(
    model: Callable,
    guide: Callable,
    args: Sequence,
    loss=None,
    *,
    param_names: Sequence[str] | None = None,
    check: bool = True,
    backend: str | None = None,
) -> CompiledLoss:
    """Record ``loss`` of ``model``/``guide`` on ``args`` as a tensor program (see :func:`can_compile`).

    The params must exist already (run one plain step first, as ``pyro_vi.fit`` does).

    Args:
        model, guide: the pair, called as ``model(*args)``.
        args: one step's arguments; later calls must pass tensors of the same shapes (and the same
            non-tensor values, which are recorded as constants).
        loss: a covered loss (default ``Trace_ELBO()``); its ``num_particles`` is kept.
        param_names: the param-store names to differentiate (default: every param the model and
            guide read).
        check: compare value and gradients with ``loss.differentiable_loss`` once, on ``args`` with the same noise
            (every RNG is restored afterwards, so the run's random stream is not disturbed).
        backend: ``None`` (the recorded program replayed op by op: the plain run's numbers bit for
            bit) or ``"inductor"`` (the joint program compiled by inductor, ``torch._inductor.compile``:
            fused kernels, the same noise, numbers equal to float rounding; compiling takes seconds).

    Raises:
        ConfigError: the loss is not covered (see :func:`can_compile`), a guide site is not
            reparameterizable, or the recorded program disagrees with the plain path (the model's
            program reads a value from outside its arguments).
    """
    loss = Trace_ELBO() if loss is None else loss
    reason = can_compile(model, guide, args, loss)
    if reason is not None:
        raise ConfigError(reason)
    with rng.preserved():  # recording draws noise; the run's random stream must not notice
        compiled = _compile(model, guide, args, loss, param_names)
        if backend is not None:
            try:
                compiled._joint = graph_passes.compiled_by(compiled._joint, backend, compiled.params, args)
                compiled.backend = backend
            except ValueError as error:  # what inductor refused, in one line
                raise ConfigError(str(error)) from None
        if check:
            _check(compiled, model, guide, args, loss)
    return compiled


@contextlib.contextmanager
def _recordable() -> Iterator[None]:
    """What a recording of a Pyro step needs: no value checks (they read values), torch's Beta and
    Dirichlet samplers as differentiable operations, and no warnings (``pyro.module`` warns about
    parameters swapped for the recording's inputs)."""
    validate_sample = torch.distributions.Distribution._validate_sample
    torch.distributions.Distribution._validate_sample = lambda self, value: None
    try:
        with pyro.validation_enabled(False), samplers.traceable(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.distributions.Distribution._validate_sample = validate_sample


def _differentiable(loss) -> Callable[..., Tensor]:
    """``differentiable_loss(model, guide, *args)`` of ``loss``; TraceGraph_ELBO's from
    :func:`pyro_vi.engine.compile.trace_elbo.tracegraph_loss` (Pyro's class has none)."""
    if type(loss) is TraceGraph_ELBO:
        return functools.partial(tracegraph_loss, loss)
    return loss.differentiable_loss


def _objective(loss) -> Callable[..., Tensor]:
    """The step's loss as a tensor whose value is the loss and whose gradient the estimator's;
    ``objective(model, guide, args, terms)`` lists ``Trace_ELBO``'s site terms in ``terms``."""
    if type(loss) is Trace_ELBO:
        return lambda model, guide, args, terms=None: surrogate_loss(model, guide, args, loss.num_particles, terms)
    differentiable = _differentiable(loss)
    return lambda model, guide, args, terms=None: differentiable(model, guide, *args)


def _compile(model, guide, args, loss, param_names) -> CompiledLoss:
    objective = _objective(loss)
    # One run of the loss itself finds every param it reads (an estimator's own, such as baseline
    # networks, included) and the modules holding them.
    with param_store.recording_modules() as modules, _recordable():
        guide_trace = poutine.trace(guide).get_trace(*args)
        objective(model, guide, args)
    for site in prune_subsample_sites(guide_trace).nodes.values() if type(loss) is Trace_ELBO else ():
        if site["type"] == "sample" and not site["is_observed"] and not getattr(site["fn"], "has_rsample", False):
            raise ConfigError(
                f"compile needs a reparameterized guide, but site {site['name']!r} cannot rsample; drop --compile"
            )
    # Every param in the store is an input of the recording (a param the recording reads is never
    # baked in as a constant, whichever branch the recording's noise takes); the program's params
    # are those the recording itself read.
    names = list(param_store.names()) if param_names is None else list(param_names)
    params = [param_store.unconstrained(name) for name in names]
    # Modules (pyro.module'd nets, PyroModules: AutoGuides, PyroModule models) hold their params as
    # attributes too, and compute with the attribute (a PyroModule re-wraps a store value that is not
    # its own attribute as a new nn.Parameter, a constant to the recording): swap both.
    for candidate in (model, guide, getattr(model, "__self__", None), getattr(guide, "__self__", None)):
        if isinstance(candidate, nn.Module):
            modules.setdefault(f"__callable_{id(candidate)}", candidate)
    holders = param_store.holders(param_store.owners(modules))

    guards = _Guards()
    layout: list[tuple[int, int]] = []  # Trace_ELBO's site terms: (particle, sign), in order
    read: dict[str, None] = {}  # the param names the recording read, in order

    def program(values: list[Tensor], *step_args) -> list[Tensor]:
        swaps: dict[int, tuple[nn.Module, dict[str, Tensor]]] = {}
        for value, param in zip(values, params):
            for module, key in holders.get(id(param), ()):
                swaps.setdefault(id(module), (module, {}))[1][key] = value
        with param_store.substituted(dict(zip(names, values))), param_store.module_parameters_swapped(swaps), guards, \
                poutine.trace(param_only=True) as reading:
            terms: list = []
            value = objective(model, guide, step_args, terms)
        read.update(dict.fromkeys(reading.trace.nodes))
        layout[:] = [(particle, sign) for particle, sign, _ in terms]
        return [value, *(term for _, _, term in terms), *guards.tensors]

    before = set(param_store.names())
    with _recordable(), graph_passes.one_fake_mode():
        try:
            # pre_dispatch: recorded above autograd, so detach() and no_grad blocks stay what they are
            # (below it, detach is recorded as an alias and the replay would differentiate through it).
            inputs = [p.detach().requires_grad_(p.requires_grad) for p in params]
            graph = make_fx(program, pre_dispatch=True)(inputs, *args)
        except RuntimeError as error:
            if "tracing tensor" not in str(error):
                raise
            raise ConfigError(
                "the model or guide reads a tensor's value (data-dependent control flow, .item()), which a "
                "recorded program cannot follow; run without --compile"
            ) from None
    created = sorted(set(param_store.names()) - before)
    if created:
        for name in created:  # made from the recording's placeholders: not a value to keep
            del pyro.get_param_store()[name]
        raise ConfigError(
            f"the recording created param {created[0]!r}, which earlier steps did not: the model or guide creates "
            "params depending on sampled values, which a recorded program cannot follow; run without compile"
        )
    outside = [name for name in read if name not in names]
    if outside:
        raise ConfigError(f"the recording read param {outside[0]!r} that is not among its inputs; run without compile")
    # A PyroModule reads a param it has cached in its context without a param statement: a param
    # whose input the recorded program computes with was read too.
    placeholders = [node for node in graph.graph.nodes if node.op == "placeholder"][: len(params)]
    used = {name for name, node in zip(names, placeholders) if node.users}
    params_read = [p for name, p in zip(names, params) if name in read or name in used]
    plain = functools.partial(_differentiable(loss), model, guide)
    graph = graph_passes.simplify(graph)
    return CompiledLoss(graph, names, params, guards.values, plain, graph_passes.joint(graph, params, args), layout,
                        getattr(loss, "num_particles", 1), functools.partial(loss.loss_and_grads, model, guide), params_read)


class _Guards(TorchFunctionMode):
    """While recording, a tensor's truth value (``if mask.all():``) is read from the real tensor
    behind the recording and kept, with the tensor, as a guard the program also returns."""

    def __init__(self):
        super().__init__()
        self.tensors: list[Tensor] = []
        self.values: list[bool] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is Tensor.__bool__:
            with disable_proxy_modes_tracing():
                value = bool(args[0])
            self.tensors.append(args[0])
            self.values.append(value)
            return value
        return func(*args, **(kwargs or {}))


def _check(compiled: CompiledLoss, model, guide, args, loss) -> None:
    """Value and gradients of the recorded program, through autograd and as the joint program, equal
    ``loss.differentiable_loss``'s on ``args``, same noise."""
    state = rng.get_state()
    with pyro.validation_enabled(False), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = _differentiable(loss)(model, guide, *args)
        plain_grads = torch.autograd.grad(plain, compiled.params, allow_unused=True)
        rng.set_state(state)
        value = compiled(*args)
        grads = torch.autograd.grad(value, compiled.params, allow_unused=True)
        rng.set_state(state)
        saved = [p.grad for p in compiled.params]
        for p in compiled.params:
            p.grad = None
        try:
            joint_value = compiled.loss_and_grads(*args)
            joint_grads = [p.grad for p in compiled.params]
        finally:
            for p, grad in zip(compiled.params, saved):
                p.grad = grad
    tolerance = 1e-4 * (1.0 + abs(float(plain.detach())))
    mismatch = False
    for got_value, got_grads in ((value, grads), (joint_value, joint_grads)):
        got_value = float(got_value.detach()) if isinstance(got_value, Tensor) else got_value
        mismatch |= not math.isclose(got_value, float(plain.detach()), rel_tol=0.0, abs_tol=tolerance)
        for param, got, want in zip(compiled.params, got_grads, plain_grads):
            got = torch.zeros_like(param) if got is None else got  # a param the loss does not reach
            want = torch.zeros_like(param) if want is None else want
            mismatch |= not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * (1.0 + float(want.abs().max())))
    if mismatch:
        raise ConfigError(
            f"the compiled loss differs from {type(loss).__name__}'s on the same batch and noise (the model's "
            "program reads a value from outside its arguments, or a changing argument is not a tensor); run without --compile"
        )
