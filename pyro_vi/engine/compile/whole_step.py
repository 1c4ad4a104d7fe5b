"""The whole SVI step as one inductor program: loss, gradients and the Adam update.

With ``compile="inductor"`` a step was two calls: the recorded loss-and-gradients program
(:func:`pyro_vi.engine.compile.graph_passes.joint`, compiled by inductor) and then the optimizer, stepping each
parameter from Python (on a tiny model, half the step's time). Here the Adam update is recorded
after the gradients, in the same program::

    loss, grads, extras, finite = joint(params, *args)
    ok = finite and every guard holds          # else: nothing is written, the step is retaken plain
    step += 1; m = lerp(m, g, 1 - b1); v = b2 v + (1 - b2) g^2                      # torch's Adam
    param -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)        # where ok

and inductor fuses it into the same kernels. The program writes the parameters and the optimizer's
own state tensors (``exp_avg``, ``exp_avg_sq``, ``step``) in place, so the optimizer, its checkpoints
and a later plain step see exactly what an unfused step leaves. The bias corrections are computed in
double precision from the step count, as torch's Adam computes them in Python; the update is
torch's arithmetic reordered by inductor, equal to float rounding.

It applies to the optimizers whose update is plain Adam with fixed hyperparameters: ``pyro.optim.Adam``
(per-parameter options included) and :class:`pyro_vi.engine.optim.Adam`, with no gradient clipping,
scheduler, hooks, amsgrad or maximize, every parameter already stepped once (state made), on one
process. :func:`adam_slots` says whether it applies; anything else keeps the two calls.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import pyro
import pyro.optim
import torch
import torch.optim.optimizer as torch_optimizer
from torch import Tensor
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

from pyro_vi.engine import rng
from pyro_vi.engine.optim import AdamSlot, adam_slots, group_settings

__all__ = ["AdamSlot", "FusedSteps", "adam_slots", "whole_step"]  # AdamSlot, adam_slots: from pyro_vi.engine.optim


def whole_step(joint: torch.fx.GraphModule, params: Sequence[Tensor], slots: Sequence[AdamSlot], guards: Sequence[bool],
               args: Sequence, terms: int = 0) -> Callable:
    """``joint`` (``[loss, *grads, *terms, *guards, finite]``, :func:`pyro_vi.engine.compile.graph_passes.joint`)
    and the Adam update of ``slots`` as one program compiled by inductor.

    Called as ``run(*args)`` under ``no_grad``, it returns ``[loss, terms, *guards, ok, finite]``
    (``terms``: the ``terms`` site log-prob sums that follow the gradients, as one float64 tensor,
    read with one ``tolist()``) and has updated each param and its Adam state in place if ``ok`` (the
    loss and gradients are finite and each guard read its recorded value); else it has written nothing.
    """
    from pyro_vi.engine.compile.graph_passes import compiled_by_inductor, leaf_arguments, one_fake_mode

    count = len(params)
    outputs = next(node for node in joint.graph.nodes if node.op == "output").args[0]
    for grad, slot in zip(outputs[1 : 1 + count], slots):
        if grad is not None and slot is None:
            raise ValueError("a differentiated param has no Adam state yet")
    used = [(index, slot.hyper) for index, slot in enumerate(slots) if slot is not None]
    slots = [slot for slot in slots if slot is not None]

    def program(values, averages, squares, steps, *step_args):
        value, *rest, finite = joint(values, *step_args)
        grads, extras = rest[:count], rest[count:]
        summed = torch.stack([t.detach().reshape(()).to(torch.float64) for t in extras[:terms]]) if terms else value
        ok = finite
        for tensor, want in zip(extras[len(extras) - len(guards):], guards):
            ok = ok & (tensor.bool().reshape(()) == want)
        writes = []  # every update computed before any is written (none reads another's new value)
        for (index, hyper), *state in zip(used, averages, squares, steps):
            if grads[index] is None:  # state, but not differentiated by this program: left alone, as fit leaves it
                continue
            new = _adam(values[index], grads[index], *state, *hyper)
            writes += [(target, torch.where(ok, update, target)) for target, update in zip((values[index], *state), new)]
        for target, update in writes:  # in place: the param store and the optimizer keep their tensors
            target.copy_(update)
        return [value, summed, *extras[terms:], ok, finite]

    # copies: recording runs the program, update included, on what it is given
    inputs = [[p.detach().clone() for p in params], [s.exp_avg.clone() for s in slots],
              [s.exp_avg_sq.clone() for s in slots], [s.step.clone() for s in slots]]
    with rng.preserved(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        with one_fake_mode():
            recorded = make_fx(program)(*inputs, *args)
        compiled = compiled_by_inductor(recorded, [t for group in inputs for t in group] + pytree.tree_leaves(list(args)))
    flat = leaf_arguments(args)
    state = [*params, *(s.exp_avg for s in slots), *(s.exp_avg_sq for s in slots), *(s.step for s in slots)]

    def run(*step_args):
        return compiled(*state, *step_args) if flat else compiled(*state, *pytree.tree_leaves(list(step_args)))

    return run


def _adam(param, grad, average, square, step, lr, beta1, beta2, eps, weight_decay):
    """torch's Adam update (``torch.optim.adam``, single-tensor, no amsgrad), as new tensors; the
    bias corrections in double precision, as torch computes them in Python."""
    if weight_decay != 0:
        grad = grad + weight_decay * param
    count = step + 1
    average = torch.lerp(average, grad, 1 - beta1)
    square = square * beta2 + grad * grad * (1 - beta2)
    exact = count.to(torch.float64)
    step_size = (lr / (1 - beta1 ** exact)).to(param.dtype)
    correction = torch.sqrt(1 - beta2 ** exact).to(param.dtype)
    denominator = torch.sqrt(square) / correction + eps
    return param - step_size * (average / denominator), average, square, count


class FusedSteps:
    """The whole-step programs one ``fit`` call uses with its optimizer. Before each step the
    optimizer is checked against what the program holds: its state dicts and param groups are the
    same objects (``set_state``/``load_state_dict`` replace them: the program is made again for the
    new ones), its settings unchanged (a callback's new learning rate: the two calls from then on,
    rather than a new compilation per value) and no hooks or scheduler since."""

    def __init__(self, optim):
        self.optim = optim
        self._found: dict[int, tuple | None] = {}
        self.built = False  # the last get() built a program (its time is compile time)

    def get(self, program, args: Sequence) -> Callable | None:
        """The whole-step program of ``program`` (a ``CompiledLoss`` compiled by inductor, ``args``
        a step's arguments of its signature) with this optimizer's update, or ``None``: take the two calls."""
        key = id(program)
        if key not in self._found:
            self._found[key] = self._build(program, args)
            self.built = True
        found = self._found[key]
        if found is None:
            return None
        run, slots, groups = found
        if torch_optimizer._global_optimizer_pre_hooks or torch_optimizer._global_optimizer_post_hooks:
            return None
        for group, optimizer, settings in groups:
            if (optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks or "step" in vars(optimizer)
                    or group_settings(group) != settings):
                return None
        if any(slot.optimizer.state.get(p) is not slot.state for p, slot in slots) or not all(
                any(g is group for g in optimizer.param_groups) for group, optimizer, _ in groups) or (
                type(self.optim) is pyro.optim.PyroOptim and any(self.optim.optim_objs.get(p) is not slot.optimizer
                                                                for p, slot in slots)):
            del self._found[key]  # state or groups replaced (a checkpoint loaded): made again for the new ones
            return self.get(program, args)
        return run

    def _build(self, program, args: Sequence) -> tuple | None:
        slots = adam_slots(self.optim, program.params)
        if slots is None:
            return None
        outputs = next(node for node in program.joint_graph.graph.nodes if node.op == "output").args[0]
        grads = outputs[1 : 1 + len(program.params)]
        read = set(map(id, program.params_read))
        if any(grad is None and slot is not None and id(p) in read for p, grad, slot in zip(program.params, grads, slots)):
            return None  # a param read without a gradient gets SVI's zero-gradient step: the two calls take it
        key = (tuple(id(t) for slot in slots if slot is not None for t in slot[:3]),
               tuple(slot.hyper if slot is not None else None for slot in slots))
        run = program.whole_steps.get(key)
        if run is None:
            try:
                run = whole_step(program.joint_graph, program.params, slots, program.guards, args, len(program.terms))
            except Exception:  # noqa: BLE001 - whatever the recording or inductor trips on: the two calls are exact
                return None
            while len(program.whole_steps) >= 2:  # an older optimizer's: let its state go
                program.whole_steps.pop(next(iter(program.whole_steps)))
            program.whole_steps[key] = run
        taken = [(p, slot) for p, slot in zip(program.params, slots) if slot is not None]
        groups = {id(slot.group): (slot.group, slot.optimizer, group_settings(slot.group)) for _, slot in taken}
        return run, taken, list(groups.values())
