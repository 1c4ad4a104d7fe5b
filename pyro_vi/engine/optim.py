"""Adam over all parameters in one call: ``pyro.optim.Adam``'s update, without its per-parameter loop.

``pyro.optim.Adam`` builds one ``torch.optim.Adam`` per parameter and steps them one by one; for a
model with few, small tensors that Python loop costs more than the arithmetic, and for a large one
the unfused update reads and writes each parameter-sized buffer several times. ``Adam`` here keeps
a single ``torch.optim.Adam`` over every parameter it has seen, either

* ``fused=True`` (the default): one fused kernel per device and dtype, one pass over memory; the
  update equals Pyro's up to float rounding (a test bounds the difference), or
* ``foreach=True``: a handful of batched ``torch._foreach_*`` kernels, bit for bit Pyro's update.

It is a ``pyro.optim.PyroOptim``, so ``pyro.infer.SVI`` takes it too, and it keeps the interface the
SVI loop and checkpoints use:

* ``optimizer(params)`` steps the given (unconstrained) parameters, adding new ones as they appear;
* ``get_state()`` / ``set_state()`` use Pyro's format, ``{param name: torch optimizer state dict}``,
  so a checkpoint written with one optimizer resumes with the other; state set before a parameter
  exists is applied when the parameter is first stepped, as in Pyro.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import pyro
import pyro.optim
import torch
import torch.optim.optimizer as torch_optimizer
from torch.optim.adam import adam as adam_update
from torch import Tensor

__all__ = ["Adam", "AdamSlot", "adam_slots", "group_settings", "pyro_adam_step"]


def pyro_adam_step(optim, params: list[Tensor]) -> bool:
    """``pyro.optim.Adam``'s step on ``params`` as one call of torch's own update function.

    ``pyro.optim.Adam`` steps one ``torch.optim.Adam`` per parameter, each through
    ``Optimizer.step``'s wrapper (hooks, a profiler range, grad mode, grouping): about 0.15 ms a
    parameter, more than a tiny model's whole step. Here every parameter goes through the function
    ``Adam.step`` itself calls (``torch.optim.adam.adam``, single-tensor), once per set of
    hyperparameters: the same arithmetic on the same tensors, so the same numbers. Taken only where
    the wrappers would do nothing else (:func:`adam_slots`: a plain ``pyro.optim.Adam``, every
    parameter already stepped once), on CPU gradients with the plain single-tensor update (no
    foreach, no fused). ``False``: nothing was done; call ``optim(params)``.
    """
    if type(optim) is not pyro.optim.PyroOptim:
        return False
    slots = adam_slots(optim, params)
    if slots is None:
        return False
    batches: dict[tuple, tuple[list, ...]] = {}
    for p, slot in zip(params, slots):
        if slot is None or slot.group["foreach"] or slot.group["fused"]:
            return False
        if p.grad is None or p.grad.is_sparse or p.device.type != "cpu":
            return False
        lists = batches.setdefault(slot.hyper, ([], [], [], [], []))
        for target, value in zip(lists, (p, p.grad, slot.exp_avg, slot.exp_avg_sq, slot.step)):
            target.append(value)
    with torch.no_grad():
        for (lr, beta1, beta2, eps, weight_decay), (ps, grads, exp_avgs, exp_avg_sqs, steps) in batches.items():
            adam_update(ps, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=False, capturable=False,
                        differentiable=False, fused=False, grad_scale=None, found_inf=None, has_complex=False,
                        decoupled_weight_decay=False, amsgrad=False, beta1=beta1, beta2=beta2, lr=lr,
                        weight_decay=weight_decay, eps=eps, maximize=False)
    return True


class Adam(pyro.optim.PyroOptim):
    """Adam on every parameter at once (one ``torch.optim.Adam``, fused unless told otherwise).

    Args:
        optim_args: ``torch.optim.Adam`` options, as for ``pyro.optim.Adam`` (``lr``, ``betas``,
            ``eps``, ``weight_decay``, ``amsgrad``, ``fused``, ``foreach``). With neither ``fused``
            nor ``foreach`` given, the fused kernel is used where torch has one, else foreach.
            A callable (per-parameter options) is not supported: use ``pyro.optim.Adam`` for that.
    """

    def __init__(self, optim_args: dict | None = None):
        if callable(optim_args):
            raise TypeError("pyro_vi.engine.optim.Adam takes one dict of options; use pyro.optim.Adam for per-parameter options")
        super().__init__(torch.optim.Adam, {"lr": 1e-3, **(optim_args or {})})
        self._optimizer: torch.optim.Adam | None = None
        self._params: dict[Tensor, None] = {}  # every parameter stepped so far, in order (an ordered set)
        self._waiting: dict[str, dict] = {}  # per-name state set before the parameter appeared

    def __call__(self, params: Iterable[Tensor], *args, **kwargs) -> None:
        """Take one Adam step on ``params`` (those without a gradient are left alone)."""
        params = list(params)
        new = [p for p in params if p not in self._params]
        if new:
            self._add(new)
        if len(params) == len(self._params):
            if not self._fused_step(params):
                self._optimizer.step()
            return
        # Step only the given parameters, as pyro.optim does: hide the others' gradients.
        given = set(map(id, params))
        hidden = [(p, p.grad) for p in self._params if id(p) not in given and p.grad is not None]
        for p, _ in hidden:
            p.grad = None
        try:
            self._optimizer.step()
        finally:
            for p, grad in hidden:
                p.grad = grad

    def _fused_step(self, params: list[Tensor]) -> bool:
        """``torch.optim.Adam(fused=True).step()``'s two kernel calls without its Python wrapper
        (hooks, profiler ranges, grouping by device: ~0.1 ms a step, more than a tiny model's whole
        update). The same kernels on the same tensors, so the same numbers; taken only where the
        wrapper would do nothing else: one group, the plain fused update, every parameter already
        has state and a gradient, one device and dtype, no hooks, no LR scheduler wrapping ``step``.
        ``False``: take ``step()``."""
        optimizer = self._optimizer
        group = optimizer.param_groups[0]
        if (len(optimizer.param_groups) != 1 or not group.get("fused") or group["amsgrad"] or group["maximize"]
                or group.get("capturable") or group.get("differentiable") or group.get("decoupled_weight_decay")
                or "step" in vars(optimizer) or optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
                or torch_optimizer._global_optimizer_pre_hooks or torch_optimizer._global_optimizer_post_hooks):
            return False
        if any(isinstance(beta, Tensor) for beta in group["betas"]) or isinstance(group["lr"], Tensor):
            return False  # tensor hyperparameters: torch's step converts them
        params = group["params"]  # every parameter (fit passes them all: the caller checked the count)
        states = [optimizer.state.get(p) for p in params]
        if any(not state or p.grad is None for p, state in zip(params, states)):
            return False
        first = params[0]
        if any(p.device != first.device or p.dtype != first.dtype or p.grad.is_sparse for p in params):
            return False
        steps = [state["step"] for state in states]
        beta1, beta2 = group["betas"]
        with torch.no_grad():
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(
                params, [p.grad for p in params], [state["exp_avg"] for state in states],
                [state["exp_avg_sq"] for state in states], [], steps, amsgrad=False, lr=group["lr"], beta1=beta1,
                beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], maximize=False, grad_scale=None,
                found_inf=None,
            )
        return True

    def _add(self, params: list[Tensor]) -> None:
        if self._optimizer is None:
            options = self.pt_optim_args
            if "fused" not in options and "foreach" not in options:
                fusable = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
                options = {**options, "fused": True} if fusable else {**options, "foreach": True}
            self._optimizer = torch.optim.Adam(params, **options)
        else:
            self._optimizer.add_param_group({"params": params})
        store = pyro.get_param_store()
        for p in params:
            self._params[p] = None
            state = self._waiting.pop(_name(store, p), None)
            if state is not None:
                self._optimizer.state[p] = _to_param(state, p, self._step_on_device)

    @property
    def _step_on_device(self) -> bool:
        group = self._optimizer.param_groups[0]
        return bool(group.get("fused") or group.get("capturable"))

    def get_state(self) -> dict:
        """``{param name: state dict of a one-parameter torch.optim.Adam}``, as ``pyro.optim`` writes it."""
        state = dict(self._waiting)
        if self._optimizer is None:
            return state
        store = pyro.get_param_store()
        for group in self._optimizer.param_groups:
            # Without "params", and without the kernel choice, so any torch Adam can load it.
            options = {key: value for key, value in group.items() if key not in ("params", "fused", "foreach")}
            for p in group["params"]:
                name = _name(store, p)
                if name is None:
                    continue
                saved = {key: value.clone() if torch.is_tensor(value) else value for key, value in self._optimizer.state.get(p, {}).items()}
                state[name] = {"state": {0: saved} if saved else {}, "param_groups": [{**options, "params": [0]}]}
        return state

    def set_state(self, state: dict) -> None:
        """Load per-name state (from this class or ``pyro.optim``); applied as parameters appear."""
        store = pyro.get_param_store()
        for name, saved in state.items():
            per_param = saved.get("state", {}).get(0)
            if per_param is None:
                continue
            current = next((p for p in self._params if _name(store, p) == name), None)
            if current is not None:
                self._optimizer.state[current] = _to_param(per_param, current, self._step_on_device)
            else:
                self._waiting[name] = per_param


def _name(store, param: Tensor) -> str | None:
    try:
        return store.param_name(param)
    except KeyError:
        return None


def _to_param(state: dict, param: Tensor, step_on_device: bool) -> dict:
    """Per-parameter Adam state moved next to ``param``; ``step`` is a float32 scalar, on the
    parameter's device for the fused kernel, on the CPU otherwise (as torch keeps it)."""
    moved = {}
    for key, value in state.items():
        if torch.is_tensor(value) and key != "step":
            moved[key] = value.detach().to(device=param.device, dtype=param.dtype).clone()
        elif torch.is_tensor(value):
            moved[key] = value.detach().to(device=param.device if step_on_device else "cpu", dtype=torch.float32).clone()
        else:
            moved[key] = value
    return moved


class AdamSlot(NamedTuple):
    """One parameter's Adam: its state tensors (updated in place) and hyperparameters."""

    exp_avg: Tensor
    exp_avg_sq: Tensor
    step: Tensor
    hyper: tuple  # (lr, beta1, beta2, eps, weight_decay), Python floats
    optimizer: torch.optim.Optimizer  # what holds them: checked before each fused step (pyro_vi.engine.compile.whole_step)
    state: dict
    group: dict


def adam_slots(optim, params: Sequence[Tensor]) -> list[AdamSlot | None] | None:
    """Each param's Adam state and hyperparameters (``None`` for a param without state, which the
    loss does not differentiate), or ``None`` when ``optim``'s step is not plain Adam that a
    program may take over: ``pyro.optim.Adam`` (per-parameter options included) or :class:`Adam`,
    with no gradient clipping, scheduler, hooks, amsgrad, maximize or tensor hyperparameters, on
    float32/float64 params whose state sits on their device (a CPU step count beside CPU params)."""
    if torch_optimizer._global_optimizer_pre_hooks or torch_optimizer._global_optimizer_post_hooks:
        return None
    if type(optim) is Adam:
        optimizer = optim._optimizer
        if optimizer is None:
            return None
        lookup = {id(p): (optimizer, group) for group in optimizer.param_groups for p in group["params"]}
    elif type(optim) is pyro.optim.PyroOptim and optim.pt_optim_constructor is torch.optim.Adam:
        if any(optim.grad_clip.get(p) is not None for p in params):
            return None
        lookup = {}
        for p in params:
            optimizer = optim.optim_objs.get(p)
            if optimizer is not None:
                if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
                    return None
                lookup[id(p)] = (optimizer, optimizer.param_groups[0])
    else:
        return None
    slots: list[AdamSlot | None] = []
    for p in params:
        if id(p) not in lookup:
            slots.append(None)  # not stepped yet: the program may not differentiate it (else whole_step refuses)
            continue
        optimizer, group = lookup[id(p)]
        if optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks or "step" in vars(optimizer):
            return None  # hooks, or an LR scheduler wrapping step()
        if group_settings(group)[5:] != _PLAIN:
            return None
        beta1, beta2 = group["betas"]
        hyper = (group["lr"], beta1, beta2, group["eps"], group["weight_decay"])
        if any(isinstance(value, Tensor) for value in hyper):
            return None
        state = optimizer.state.get(p)
        if p.is_sparse or p.dtype not in (torch.float32, torch.float64):
            return None  # (half precision: torch's Adam keeps its step size in double, a program in the param's dtype)
        if not state:
            slots.append(None)
            continue
        if state["exp_avg"].device != p.device or state["step"].device not in (p.device, torch.device("cpu")) or (
                state["step"].device != p.device and p.device.type != "cpu"):
            return None  # a CPU step count beside CUDA params: one program runs on one device
        slots.append(AdamSlot(state["exp_avg"], state["exp_avg_sq"], state["step"], tuple(map(float, hyper)),
                              optimizer, state, group))
    return slots


# amsgrad, maximize, capturable, differentiable, decoupled_weight_decay: the plain update's
_PLAIN = (False, False, False, False, False)


def group_settings(group: dict) -> tuple:
    """What a program bakes in of a param group: ``(lr, beta1, beta2, eps, weight_decay, *flags)``."""
    return (group["lr"], *group["betas"], group["eps"], group["weight_decay"], bool(group["amsgrad"]),
            bool(group["maximize"]), bool(group.get("capturable")), bool(group.get("differentiable")),
            bool(group.get("decoupled_weight_decay")))
