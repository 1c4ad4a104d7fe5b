"""Recorded tensor programs (``torch.fx`` graphs from ``make_fx``): simplified, and joined with
their backward pass.

:mod:`pyro_vi.engine.compile.record` records one step's loss as a graph of ATen operations. Three passes
over such a graph live here:

* :func:`simplify` drops what the recording repeats for nothing on every call (operations on
  constants, identities such as ``x * 1``), values unchanged;
* :func:`joint` records the loss and its gradients as one program, replayed under ``no_grad``
  without the autograd engine;
* :func:`compiled_by` hands a joint program to inductor (``torch._inductor.compile``: fused kernels).
"""

from __future__ import annotations

import contextlib
import operator
import warnings
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.fx.experimental.proxy_tensor import make_fx

__all__ = ["BACKENDS", "compiled_by", "compiled_by_inductor", "joint", "leaf_arguments", "one_fake_mode", "simplify"]


@contextlib.contextmanager
def one_fake_mode():
    """One FakeTensorMode for a whole ``make_fx`` recording.

    Recording real tensors, make_fx keeps each value's shape as a fake tensor in ``node.meta``; with
    no fake mode in the tracing context it builds a new FakeTensorMode per value, and each captures
    the Python stack (``traceback.extract_stack``): under Pyro's handler stacks, a third of the
    recording's time (0.38 of 1.1 s for the enumerated GMM at N = 100,000). The values recorded are
    the same; only their metadata share one mode.
    """
    from torch._guards import TracingContext, tracing
    from torch._subclasses.fake_tensor import FakeTensorMode

    with tracing(TracingContext(FakeTensorMode(allow_fallback_kernels=True))):
        yield

BACKENDS = ("inductor",)


def joint(graph: Callable, params: list[Tensor], args: Sequence) -> torch.fx.GraphModule:
    """The recorded loss and its backward pass as one program, ``[loss, *grads, *extras, finite]``
    (``extras``: what the loss program returns after the loss; ``finite``: the loss and every
    gradient are finite, as ``fit`` checks it, computed in the program).

    Recorded by running autograd once on the loss program, below autograd: the backward
    operations are recorded in the order the engine ran them (gradient sums included), so the
    replay, under ``no_grad``, computes what ``loss.backward()`` computes. With no autograd left in
    it, it is simplified without the care the loss program needs (an expand removed there would
    reorder the engine's sums). ``fresh_grads[i]``: gradient ``i`` is a new tensor on every call
    (not a constant, not a view), which ``.grad`` may take as it is."""
    wanted = [p.requires_grad for p in params]

    def step(values: list[Tensor], *step_args) -> list:
        value, *guards = graph(values, *step_args)
        differentiated = [v for v, w in zip(values, wanted) if w]
        found = iter(torch.autograd.grad(value, differentiated, allow_unused=True) if differentiated else ())
        grads = [next(found) if w else None for w in wanted]
        total = torch.stack([value.detach().reshape(()), *(g.sum() for g in grads if g is not None)]).sum()
        return [value.detach(), *grads, *guards, torch.isfinite(total)]

    with warnings.catch_warnings(), one_fake_mode():
        warnings.simplefilter("ignore")
        program = make_fx(step)([p.detach().requires_grad_(p.requires_grad) for p in params], *args)
    program = simplify(program, expand=True)
    outputs = next(node for node in program.graph.nodes if node.op == "output").args[0]
    program.fresh_grads = [
        isinstance(node, torch.fx.Node) and node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
        and not node.target.is_view and isinstance(node.meta.get("val"), Tensor) and node.meta["val"].is_contiguous()
        and sum(out is node for out in outputs) == 1
        for node in outputs[1 : 1 + len(params)]
    ]
    return program


def compiled_by(program: torch.fx.GraphModule, backend: str, params: Sequence[Tensor], args: Sequence) -> Callable:
    """``program`` compiled by inductor (``torch._inductor.compile``), called as ``program`` is.

    The program is already a graph of ATen operations, so it goes to inductor directly, without
    TorchDynamo in front (whose guards cost ~60 microseconds a call on a tiny model). Inductor
    generates fused C++ (CPU) or Triton (GPU) kernels: on the coin of "SVI Part I" the joint
    program's replay takes ~50 instead of ~280 microseconds (2-core CPU), after ~3 s of compiling
    (``params`` and ``args`` are the example inputs). Random operations stay torch's own
    (``fallback_random``), so a step draws the noise the plain step draws; the arithmetic is fused
    and reordered, so values agree to float rounding (~1e-6 relative), not bit for bit.
    """
    from torch.utils import _pytree as pytree

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    info = program.graph._codegen.pytree_info
    # detached: the program is run under no_grad (it computes its own gradients), and inductor would
    # otherwise compile a backward pass of the backward pass
    flat, spec = pytree.tree_flatten(([p.detach() for p in params], *args))
    if spec != info.in_spec:
        raise ValueError("the recorded program's inputs do not match the step's arguments; compile without inductor")
    compiled = compiled_by_inductor(program, flat)
    simple = leaf_arguments(args)

    def run(values, *step_args):  # flat inputs and outputs (pytree's wrapping costs more than the kernel)
        return compiled(*values, *step_args) if simple else compiled(*pytree.tree_leaves((values, *step_args)))

    run.fresh_grads = program.fresh_grads
    return run


def leaf_arguments(args: Sequence) -> bool:
    """Every argument is a pytree leaf (a tensor, number, string): a compiled program taking them
    flattened is called with them as they are; others (None, lists) are flattened by pytree."""
    return all(value is not None and not isinstance(value, (list, tuple, dict)) for value in args)


def compiled_by_inductor(program: torch.fx.GraphModule, flat: Sequence) -> Callable:
    """``program`` (recorded by ``make_fx``) compiled by inductor, called with its inputs flattened
    (``flat``: example inputs) and returning its output list as it is; ``ValueError`` (one line)
    when inductor cannot compile it."""
    import copy
    import logging

    import torch._inductor
    import torch._inductor.config as inductor_config

    quiet = logging.getLogger("torch.utils.cpp_extension")  # notes on the C++ toolchain, not for users
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with inductor_config.patch(fallback_random=True), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            flat_program = copy.deepcopy(program)  # flat inputs, the output list as it is
            flat_program.graph._codegen = torch.fx.graph.CodeGen()
            flat_program.recompile()
            try:
                return torch._inductor.compile(flat_program, list(flat))
            except Exception as error:  # noqa: BLE001 - no C++ toolchain, an operation inductor cannot lower
                first = str(error).splitlines()[0][:200] if str(error) else "no message"
                raise ValueError(f"inductor could not compile the recorded step ({type(error).__name__}: {first}); "
                                 "use compile=True") from None
    finally:
        quiet.setLevel(level)


_aten = torch.ops.aten
# x op c == x for these constants c: the recorded arithmetic of broadcasting and default arguments.
_IDENTITIES = {_aten.mul.Tensor: 1, _aten.div.Tensor: 1, _aten.add.Tensor: 0, _aten.sub.Tensor: 0}


def simplify(graph_module: torch.fx.GraphModule, expand: bool = False) -> torch.fx.GraphModule:
    """Drop what the recording repeats for nothing on every call, leaving values unchanged:

    * operations on constants only (``Normal(z, 1.0)``'s scale, squared and logged each step) are
      computed once and kept as constants; never a random or in-place operation, or one whose
      result an in-place operation would change. A tensor made from another's shape alone
      (``x.new_zeros(2)``) is a constant too (the program is reused only for the same shapes), and
      so is a constant taken out of autograd (``lift_fresh_copy``, ``detach_``, as ``torch.tensor``
      constants are recorded);
    * ``x * 1``, ``x / 1``, ``x + 0``, ``x - 0`` and aliases to the same shape are ``x``; so are
      expands to the same shape with ``expand`` (a program that autograd differentiates keeps them:
      their autograd node changes the order in which a tensor used three or more times sums its
      gradients, so the run would drift from the plain one by float rounding).
    """
    graph = graph_module.graph
    constants: dict[torch.fx.Node, Tensor] = {}
    sequences: dict[torch.fx.Node, Sequence[Tensor]] = {}  # constant lists (broadcast_tensors of constants)
    folded = 0

    def replace(node: torch.fx.Node, value: Tensor) -> None:
        nonlocal folded
        name = f"_folded_{folded}"
        folded += 1
        graph_module.register_buffer(name, value)  # registered: fx knows what get_attr reads (no warning)
        with graph.inserting_before(node):
            constant = graph.get_attr(name)
        constant.meta = dict(node.meta)
        node.replace_all_uses_with(constant)
        graph.erase_node(node)
        constants[constant] = value

    for node in list(graph.nodes):
        if node.op == "get_attr":
            constants[node] = getattr(graph_module, node.target)
            continue
        if node.op != "call_function":
            continue
        if node.target is operator.getitem and node.args[0] in sequences and not node.kwargs:
            replace(node, sequences[node.args[0]][node.args[1]])
            continue
        if node.target is operator.getitem and node.args[0].target is _aten.broadcast_tensors.default:
            # a constant broadcast against a variable (Normal(z, 1.0)'s scale): the constant, expanded
            source = node.args[0].args[0][node.args[1]]
            shape = getattr(node.meta.get("val"), "shape", None)
            if source in constants and shape is not None:
                replace(node, constants[source].expand(shape))
                continue
        if not isinstance(node.target, torch._ops.OpOverload):
            continue
        inputs = node.all_input_nodes
        if node.target in _SHAPE_ONLY and len(inputs) == 1 and inputs[0] not in constants and not _mutated(inputs[0]):
            like = inputs[0].meta.get("val")
            if isinstance(like, Tensor):
                with torch.no_grad():
                    stand_in = torch.empty(like.shape, dtype=like.dtype, device=like.device)
                    args = torch.fx.node.map_arg(node.args, lambda n: stand_in)
                    replace(node, node.target(*args, **node.kwargs))
                continue
        if inputs and all(n in constants for n in inputs) and (_foldable(node) or _untracks(node)):
            with torch.no_grad():
                value = node.target(
                    *torch.fx.node.map_arg(node.args, constants.__getitem__),
                    **torch.fx.node.map_arg(node.kwargs, constants.__getitem__),
                )
            if isinstance(value, Tensor):
                replace(node, value)
                continue
            if isinstance(value, (list, tuple)) and all(isinstance(v, Tensor) for v in value):
                sequences[node] = value
                continue
        source = _identity_source(node, expand)
        if source is not None:
            node.replace_all_uses_with(source)
            graph.erase_node(node)
    graph.eliminate_dead_code()
    graph_module.recompile()
    return graph_module


# Ops whose result depends on their tensor argument's shape, dtype and device only.
_SHAPE_ONLY = {
    _aten.new_zeros.default, _aten.new_ones.default, _aten.new_full.default,
    _aten.zeros_like.default, _aten.ones_like.default, _aten.full_like.default,
}


def _untracks(node: torch.fx.Node) -> bool:
    """``lift_fresh_copy`` and ``detach_`` of a constant: how a ``torch.tensor`` constant is recorded
    (a copy taken out of autograd); the constant itself, if nothing else changes it in place."""
    return node.target in (_aten.lift_fresh_copy.default, _aten.detach_.default) and not any(
        _mutates(user) for user in node.users if user.target is not _aten.detach_.default
    )


def _mutated(node: torch.fx.Node) -> bool:
    return any(_mutates(user) for user in node.users)


def _mutates(node: torch.fx.Node) -> bool:
    target = node.target
    return isinstance(target, torch._ops.OpOverload) and (
        target._schema.is_mutable or torch.Tag.nondeterministic_seeded in target.tags
    )


def _foldable(node: torch.fx.Node) -> bool:
    return not _mutates(node) and not any(_mutates(user) for user in node.users)


def _identity_source(node: torch.fx.Node, expand: bool = False) -> torch.fx.Node | None:
    """The input ``node`` merely passes on (same shape and dtype), else ``None``."""
    target, args = node.target, node.args
    if not args or not isinstance(args[0], torch.fx.Node) or node.kwargs:
        return None
    source = args[0]
    before, after = source.meta.get("val"), node.meta.get("val")
    if not isinstance(before, Tensor) or not isinstance(after, Tensor):
        return None
    if before.shape != after.shape or before.dtype != after.dtype or any(_mutates(user) for user in node.users):
        return None
    if target in _IDENTITIES and len(args) == 2 and not isinstance(args[1], torch.fx.Node):
        return source if args[1] == _IDENTITIES[target] and not isinstance(args[1], bool) else None
    if target is _aten.alias.default or (expand and target is _aten.expand.default):
        return source
    return None
