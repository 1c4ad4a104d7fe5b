"""Checks of ``fit``'s arguments, made before any work: one ``PyroVIError`` line naming the argument
and what to pass."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch

from pyro_vi.errors import ConfigError, DataError, OutputError

__all__ = ["check_compile_mode", "check_fit_arguments", "check_fit_options", "check_fresh_checkpoint"]

ON_NAN = ("raise", "skip")


def check_fit_options(num_steps, on_nan, seed, scheduler_every, checkpoint_every, checkpoint, resume) -> None:
    """``ConfigError`` naming the first of ``fit``'s options that is out of its range."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ConfigError(f"num_steps must be a non-negative integer, got {num_steps!r}")
    if on_nan not in ON_NAN:
        raise ConfigError(f"on_nan must be 'raise' or 'skip', got {on_nan!r}")
    if seed is not None and (isinstance(seed, bool) or not hasattr(seed, "__index__") or not 0 <= int(seed) <= 2**32 - 1):
        raise ConfigError(f"seed must be an integer from 0 to 2**32 - 1 (NumPy's range), got {seed!r}")
    if isinstance(scheduler_every, bool) or not isinstance(scheduler_every, int) or scheduler_every <= 0:
        raise ConfigError(f"scheduler_every must be a positive integer, got {scheduler_every!r}")
    if not callable(checkpoint_every) and (isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0):
        raise ConfigError(f"checkpoint_every must be a non-negative integer of steps, got {checkpoint_every!r}")
    if resume and checkpoint is None:
        raise ConfigError("resume needs the checkpoint path to continue from; pass checkpoint=PATH")


def check_fresh_checkpoint(path: Path, overwrite: bool, data_parallel) -> None:
    """A fresh run must not replace a run's checkpoint by accident, and must be able to write one."""
    exists = path.exists()
    if data_parallel is not None:
        exists = data_parallel.broadcast(exists)  # rank 0 alone writes: its file is the one at stake
    if exists and not overwrite:
        raise OutputError(f"{str(path)!r} already holds a checkpoint; pass resume=True to continue it or overwrite=True to start over")
    if data_parallel is None or data_parallel.is_main:
        if path.is_dir():
            raise OutputError(f"checkpoint path {str(path)!r} is a directory; pass a file path")
        if not path.parent.is_dir():
            raise OutputError(f"the directory of checkpoint {str(path)!r} does not exist; create it or choose another path")


def check_fit_arguments(model, guide, args: tuple, kwargs: dict, loss, optim):
    """``DataError``/``ConfigError`` naming the first of ``fit``'s model, guide, data, loss or
    optimizer arguments that cannot work; returns ``optim`` as ``fit`` uses it.

    A torch optimizer *class* (``torch.optim.Adam``) is wrapped as Pyro wraps it
    (``pyro.optim.PyroOptim(torch.optim.Adam, {})``: torch's defaults, one optimizer per param); a
    torch optimizer *instance* is refused (it is bound to its own tensors, not to the params the
    model creates). Data (tensor arguments) that require grad are refused, not detached: ``fit``
    never back-propagates into the data, and a detached copy would hide that the caller's tensor
    was built to be differentiated.
    """
    if not callable(model):
        raise ConfigError(f"model must be a function (or callable) taking the data, got a {type(model).__name__}; "
                          "pass the model function itself")
    if guide is None or not callable(guide):
        raise ConfigError(f"guide must be a function or an AutoGuide, got {'None' if guide is None else 'a ' + type(guide).__name__}; "
                          "pass a guide, e.g. pyro.infer.autoguide.AutoNormal(model)")
    _check_loss(loss)
    _check_data(args, kwargs)
    return _check_optim(optim)


def _check_loss(loss) -> None:
    if loss is None:
        return
    if isinstance(loss, type):
        raise ConfigError(f"loss is the class {loss.__name__}, not an instance; pass {loss.__name__}() (e.g. loss=Trace_ELBO())")
    if not callable(getattr(loss, "loss_and_grads", None)) or not callable(getattr(loss, "loss", None)):
        raise ConfigError(f"loss must be a Pyro ELBO or a pyro_vi estimator (with loss and loss_and_grads), got a "
                          f"{type(loss).__name__}; pass e.g. pyro.infer.Trace_ELBO()")


def _check_data(args: tuple, kwargs: dict) -> None:
    named = [(f"argument {i}", value) for i, value in enumerate(args)] + [(f"argument {name!r}", v) for name, v in kwargs.items()]
    for where, value in named:
        if not torch.is_tensor(value):
            continue
        if value.layout != torch.strided:
            raise DataError(f"{where} is a {value.layout} tensor of shape {tuple(value.shape)}; Pyro's distributions "
                            "need dense tensors: pass value.to_dense()")
        if value.requires_grad:
            raise DataError(f"{where} (shape {tuple(value.shape)}) requires grad: fit would back-propagate into your data; "
                            "pass value.detach()")


def _check_optim(optim):
    """The optimizer as ``fit`` uses it (a torch optimizer class wrapped), its options checked."""
    import pyro.optim

    if optim is None:
        return None
    if isinstance(optim, type) and issubclass(optim, torch.optim.Optimizer):
        optim = pyro.optim.PyroOptim(optim, {})
    elif isinstance(optim, torch.optim.Optimizer):
        raise ConfigError(f"optim is a torch.optim.{type(optim).__name__} instance, bound to its own tensors, not to the params "
                          f"the model creates; pass pyro.optim.{type(optim).__name__}({{'lr': ...}}) or the class "
                          f"torch.optim.{type(optim).__name__}")
    elif isinstance(optim, type) and issubclass(optim, pyro.optim.PyroOptim):
        raise ConfigError(f"optim is the class {optim.__name__}, not an instance; pass e.g. pyro.optim.Adam({{'lr': 0.01}})")
    if not isinstance(optim, pyro.optim.PyroOptim):
        # Pyro's SVI calls any optimizer as optim(params) (a MultiOptimizer, a user's own class).
        # pyro.optim.Adam itself (a function making a PyroOptim) is the usual slip.
        wrapper = getattr(optim, "__module__", None) == "pyro.optim.pytorch_optimizers"
        if wrapper or not callable(optim):
            raise ConfigError(f"optim must be a Pyro optimizer (pyro.optim.PyroOptim), got a {type(optim).__name__}; "
                              "pass e.g. pyro.optim.Adam({'lr': 0.01})")
        return optim
    options = optim.pt_optim_args
    if isinstance(options, dict):
        _check_learning_rate(options.get("lr", 1e-3), "optim's lr")
        constructor = optim.pt_optim_constructor
        if isinstance(constructor, type) and issubclass(constructor, torch.optim.Optimizer):
            # torch checks the other options (betas, eps, momentum, ...) when the optimizer is built:
            # build one on a throwaway tensor now, so a bad option is one line before any step.
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    probe = constructor([torch.zeros(1, requires_grad=True)], **options)
                    if isinstance(optim, pyro.optim.PyroLRScheduler):
                        optim.pt_scheduler_constructor(probe, **optim.kwargs)
            except (ValueError, TypeError, KeyError, RuntimeError) as error:
                raise ConfigError(f"optim's options {options!r} do not build a torch.optim.{constructor.__name__} "
                                  f"({' '.join(str(error).split())}); fix them") from None
    return optim


def _check_learning_rate(value, where: str) -> None:
    if torch.is_tensor(value) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where} must be a non-negative finite number, got {value!r}; pass e.g. {{'lr': 0.01}}")


def check_compile_mode(mode) -> None:
    """``ConfigError`` unless ``mode`` is ``None``, ``True``, ``False``, ``"inductor"`` or ``"auto"`` (by
    identity: ``1`` or a NumPy bool is refused, not taken for ``True``)."""
    if not (mode is None or mode is True or mode is False or (isinstance(mode, str) and mode in ("inductor", "auto"))):
        raise ConfigError(f"compile must be None or False (SVI's step), True, 'inductor' or 'auto', got {mode!r}")
