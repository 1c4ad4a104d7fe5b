"""Gradient variance, signal-to-noise ratio and bias of any estimator on any model/guide pair.

``gradient_variance`` draws ``num_replicates`` independent gradient estimates of the loss
(-ELBO) with respect to every Pyro param, as the optimizer sees it: the unconstrained tensor in
the param store, i.e. what ``param.grad`` holds after ``loss_and_grads``. The params keep their
values. Replicates run in one batched pass: ``torch.func.vmap(torch.func.grad(loss),
randomness="different")`` over the replicate index, with the param-store tensors (and the
parameters of modules registered with ``pyro.module``) swapped for the functional inputs. Models
that cannot run under ``vmap`` fall back to a loop over ``differentiable_loss`` + autograd.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from typing import Callable, NamedTuple, Sequence

import pyro
import pyro.optim
import torch
from pyro import poutine
from torch import Tensor, nn

from pyro_vi import estimators
from pyro_vi.errors import ConfigError


class GradientVariance(NamedTuple):
    """Statistics over replicates of one estimator's gradient (dicts are keyed by param name)."""

    estimator: str
    num_particles: int
    num_replicates: int
    mean: dict[str, Tensor]
    variance: dict[str, Tensor]  # elementwise, unbiased (divides by R - 1)
    total_variance: float  # sum of all elementwise variances
    snr: float  # mean over all elements of |mean| / sd
    snr_per_param: dict[str, float]
    bias: dict[str, Tensor] | None  # mean - reference, when a reference is given
    bias_standard_error: dict[str, Tensor] | None  # sd / sqrt(R)
    seconds: float
    vectorized: bool


def gradient_variance(
    model: Callable,
    guide: Callable,
    *args,
    estimator: str | estimators.GradientEstimator = "reparam",
    num_replicates: int = 1000,
    num_particles: int = 1,
    seed: int = 0,
    reference: dict[str, Tensor] | None = None,
    vectorize: bool | None = None,
    chunk_size: int | None = None,
    **kwargs,
) -> GradientVariance:
    """Mean, variance, SNR (and bias against ``reference``) of an estimator's gradient of -ELBO.

    Args:
        model, guide: a Pyro model and guide taking ``*args, **kwargs``.
        estimator: a name from ``pyro_vi.estimators.ESTIMATORS`` or an estimator object (e.g. one
            whose baseline was trained); an object keeps its own ``num_particles``.
        num_replicates: independent gradient estimates (at least 2).
        num_particles: particles per estimate when ``estimator`` is a name.
        seed: seeds Pyro's RNGs; the global RNG state is restored afterwards.
        reference: exact gradients (unconstrained params) to report bias and its standard error.
        vectorize: True forces vmap, False the loop, None tries vmap and falls back to the loop.
        chunk_size: replicates per batched pass (default: as many as fit in about 256 MB).

    Raises:
        ConfigError: non-positive replicates/particles, or an estimator that does not apply.
    """
    if isinstance(num_replicates, bool) or not isinstance(num_replicates, int) or num_replicates < 2:
        raise ConfigError(f"num_replicates must be an integer >= 2 (a variance needs two draws), got {num_replicates!r}")
    if isinstance(estimator, str):
        estimator = estimators.get_estimator(estimator, num_particles=num_particles)
    rng_state = _rng_state()
    was_frozen, estimator.frozen = estimator.frozen, True  # measuring must not move a baseline
    pyro.set_rng_seed(seed)
    try:
        with _recording_modules() as modules:
            names, params = _discover_params(model, guide, args, kwargs)
        estimator.check(model, guide, *args, **kwargs)
        if reference is not None:
            missing = sorted(set(names) - set(reference))
            if missing:
                raise ConfigError(f"reference lacks gradients for params {', '.join(missing)}; give one per param")
        start = time.perf_counter()
        statistics, vectorized = None, False
        if vectorize is not False:
            try:
                statistics = _vectorized(estimator, model, guide, args, kwargs, names, params, modules, num_replicates, chunk_size)
                vectorized = True
            except Exception as error:  # noqa: BLE001 - anything vmap refuses sends us to the loop
                if vectorize:
                    raise
                warnings.warn(f"gradient_variance: vmap failed ({type(error).__name__}: {str(error)[:120]}); using the loop")
                pyro.set_rng_seed(seed)
                start = time.perf_counter()
        if statistics is None:
            statistics = _looped(estimator, model, guide, args, kwargs, names, params, num_replicates)
        seconds = time.perf_counter() - start
    finally:
        estimator.frozen = was_frozen
        _set_rng_state(rng_state)
    mean, variance = statistics
    return _summarize(estimator, names, num_replicates, mean, variance, reference, seconds, vectorized)


class VarianceOverTraining(NamedTuple):
    """Gradient statistics measured at chosen steps of one SVI run."""

    steps: list[int]
    results: dict[str, list[GradientVariance]]  # estimator name -> one result per measured step
    losses: list[float]  # training loss at every step


def variance_over_training(
    model: Callable,
    guide: Callable,
    *args,
    estimators_measured: Sequence[str] = ("reparam", "score"),
    train_estimator: str | estimators.GradientEstimator = "reparam",
    num_steps: int = 1000,
    measure_at: Sequence[int] = (0, 500, 1000),
    learning_rate: float = 0.01,
    num_replicates: int = 200,
    num_particles: int = 1,
    seed: int = 0,
    **kwargs,
) -> VarianceOverTraining:
    """Train with SVI (Adam) using ``train_estimator`` and measure each of ``estimators_measured``
    at the steps in ``measure_at`` (step s = after s optimizer steps)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ConfigError(f"num_steps must be a non-negative integer, got {num_steps!r}")
    bad = [s for s in measure_at if not 0 <= s <= num_steps]
    if bad:
        raise ConfigError(f"measure_at steps {bad} are outside [0, {num_steps}]; choose steps within the run")
    if isinstance(train_estimator, str):
        train_estimator = estimators.get_estimator(train_estimator, num_particles=num_particles)
    pyro.set_rng_seed(seed)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": learning_rate}), loss=train_estimator)
    steps = sorted(set(measure_at))
    results = {name: [] for name in estimators_measured}
    losses = []
    for step in range(num_steps + 1):
        if step in steps:
            for name in estimators_measured:
                measured = train_estimator if name == train_estimator.name else name
                results[name].append(
                    gradient_variance(
                        model, guide, *args, estimator=measured, num_replicates=num_replicates,
                        num_particles=num_particles, seed=seed + step, **kwargs,
                    )
                )
        if step < num_steps:
            losses.append(svi.step(*args, **kwargs))
    return VarianceOverTraining(steps, results, losses)


# -- the two ways to draw replicates -------------------------------------------------------------


def _vectorized(estimator, model, guide, args, kwargs, names, params, modules, num_replicates, chunk_size):
    """Mean and variance over replicates from batched passes of vmap(grad(loss))."""
    store = pyro.get_param_store()
    module_parameters = _module_parameters(modules, names, params)  # param name -> functional key
    runner = _Runner(modules)

    def loss(values: tuple[Tensor, ...]) -> Tensor:
        functional = {}
        for name, value in zip(names, values):
            if name in module_parameters:
                functional[module_parameters[name]] = value
            else:
                store._params[name] = value
        return torch.func.functional_call(
            runner, functional, (lambda: estimator.differentiable_loss(model, guide, *args, **kwargs),), strict=False
        )

    gradient = torch.func.grad(loss)
    values = tuple(p.detach() for p in params)
    if chunk_size is None:
        size = sum(p.numel() for p in params)
        chunk_size = max(1, min(num_replicates, int(256e6 / (4 * 4 * max(size, 1)))))
    snapshot = _store_snapshot()
    chunks = []
    try:
        with _out_of_place_noise(), pyro.validation_enabled(False):
            batched = torch.func.vmap(lambda _: gradient(values), randomness="different")
            done = 0
            while done < num_replicates:
                size = min(chunk_size, num_replicates - done)
                grads = batched(torch.arange(size))
                chunks.append([g.detach().double() for g in grads])
                done += size
    finally:
        _store_restore(snapshot)
    return _combine(chunks)


def _looped(estimator, model, guide, args, kwargs, names, params, num_replicates):
    """The reference path: one differentiable_loss + autograd.grad per replicate."""
    snapshot = _store_snapshot()
    chunks = []
    try:
        for _ in range(num_replicates):
            loss = estimator.differentiable_loss(model, guide, *args, **kwargs)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
            chunks.append([g.detach().double().unsqueeze(0) for g in grads])
            _store_restore(snapshot)  # e.g. a decaying-average baseline must not move
    finally:
        _store_restore(snapshot)
    return _combine(chunks)


def _combine(chunks):
    """Mean and unbiased variance per param from chunks of replicates (Chan et al.'s merge)."""
    count, mean, m2 = 0, None, None
    for chunk in chunks:
        n = chunk[0].shape[0]
        chunk_mean = [g.mean(0) for g in chunk]
        chunk_m2 = [((g - mu) ** 2).sum(0) for g, mu in zip(chunk, chunk_mean)]
        if mean is None:
            count, mean, m2 = n, chunk_mean, chunk_m2
            continue
        total = count + n
        delta = [cm - m for cm, m in zip(chunk_mean, mean)]
        mean = [m + d * n / total for m, d in zip(mean, delta)]
        m2 = [a + b + d**2 * count * n / total for a, b, d in zip(m2, chunk_m2, delta)]
        count = total
    return mean, [m / (count - 1) for m in m2]


def _summarize(estimator, names, num_replicates, mean, variance, reference, seconds, vectorized) -> GradientVariance:
    mean = {name: m.float() for name, m in zip(names, mean)}
    variance = {name: v.float() for name, v in zip(names, variance)}
    ratios = {name: _snr(mean[name].double(), variance[name].double()) for name in names}
    all_ratios = torch.cat([r.reshape(-1) for r in ratios.values()]) if ratios else torch.zeros(0)
    bias = standard_error = None
    if reference is not None:
        bias = {name: mean[name] - torch.as_tensor(reference[name], dtype=mean[name].dtype).reshape(mean[name].shape) for name in names}
        standard_error = {name: (variance[name] / num_replicates).sqrt() for name in names}
    return GradientVariance(
        estimator=estimator.name,
        num_particles=estimator.num_particles,
        num_replicates=num_replicates,
        mean=mean,
        variance=variance,
        total_variance=float(sum(v.double().sum() for v in variance.values())),
        snr=_nanmean(all_ratios),
        snr_per_param={name: _nanmean(r.reshape(-1)) for name, r in ratios.items()},
        bias=bias,
        bias_standard_error=standard_error,
        seconds=seconds,
        vectorized=vectorized,
    )


def _snr(mean: Tensor, variance: Tensor) -> Tensor:
    """|mean| / sd per element: inf where sd = 0 < |mean|, nan where both are 0."""
    return mean.abs() / variance.sqrt()


def _nanmean(values: Tensor) -> float:
    values = values[~torch.isnan(values)]
    return float(values.mean()) if values.numel() else float("nan")


# -- params, modules and the param store ---------------------------------------------------------


def _discover_params(model, guide, args, kwargs) -> tuple[list[str], list[Tensor]]:
    """Names and unconstrained tensors of every param the guide and model touch."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    store = pyro.get_param_store()
    names = []
    for trace in (guide_trace, model_trace):
        for site in trace.nodes.values():
            if site["type"] == "param" and site["name"] not in names and site["name"] in store._params:
                if store._params[site["name"]].requires_grad:
                    names.append(site["name"])
    if not names:
        raise ConfigError("the model and guide have no Pyro params to differentiate; register them with pyro.param or pyro.module")
    return names, [store._params[name] for name in names]


@contextlib.contextmanager
def _recording_modules():
    """Record the nn.Modules passed to ``pyro.module`` while the block runs."""
    modules: dict[str, nn.Module] = {}
    original = pyro.module

    def recording(name, nn_module, update_module_params=False):
        modules[name] = nn_module
        return original(name, nn_module, update_module_params)

    pyro.module = recording
    pyro.primitives.module = recording
    try:
        yield modules
    finally:
        pyro.module = original
        pyro.primitives.module = original


class _Runner(nn.Module):
    """Holds the recorded modules so ``functional_call`` can swap all their parameters at once."""

    def __init__(self, modules: dict[str, nn.Module]):
        super().__init__()
        self.nets = nn.ModuleList(modules.values())

    def forward(self, function):
        return function()


def _module_parameters(modules, names, params) -> dict[str, str]:
    """Param-store name -> functional_call key, for params that are module parameters."""
    owner = {}
    for index, module in enumerate(modules.values()):
        for key, parameter in module.named_parameters(remove_duplicate=False):
            owner.setdefault(id(parameter), f"nets.{index}.{key}")
    keys = {}
    for name, param in zip(names, params):
        if "$$$" in name:
            if id(param) not in owner:
                raise RuntimeError(f"module parameter {name} not found among the recorded modules")
            keys[name] = owner[id(param)]
    return keys


def _store_snapshot():
    store = pyro.get_param_store()
    return dict(store._params), dict(store._constraints), dict(store._param_to_name)


def _store_restore(snapshot) -> None:
    store = pyro.get_param_store()
    params, constraints, param_to_name = snapshot
    store._params.clear()
    store._params.update(params)
    store._constraints.clear()
    store._constraints.update(constraints)
    store._param_to_name.clear()
    store._param_to_name.update(param_to_name)


@contextlib.contextmanager
def _out_of_place_noise():
    """Swap torch.distributions' in-place ``_standard_normal`` for ``torch.randn`` (vmap draws
    different noise per replicate only out of place); restored afterwards."""

    def standard_normal(shape, dtype, device):
        return torch.randn(shape, dtype=dtype, device=device)

    patched = []
    for name, module in list(sys.modules.items()):
        if name.startswith(("torch.distributions", "pyro.distributions")) and hasattr(module, "_standard_normal"):
            patched.append((module, module._standard_normal))
            module._standard_normal = standard_normal
    try:
        yield
    finally:
        for module, original in patched:
            module._standard_normal = original


def _rng_state():
    return torch.get_rng_state(), pyro.util.get_rng_state()


def _set_rng_state(state) -> None:
    torch_state, pyro_state = state
    pyro.util.set_rng_state(pyro_state)
    torch.set_rng_state(torch_state)


def snr_table(results: Sequence[GradientVariance]) -> list[dict]:
    """Rows (estimator, num_particles, param, mean, variance, snr, bias, seconds) for CSV/JSON;
    tensors are summarized by their elementwise mean (variance: sum)."""
    rows = []
    for result in results:
        for name in result.mean:
            bias = None if result.bias is None else float(result.bias[name].abs().max())
            rows.append(
                {
                    "estimator": result.estimator,
                    "num_particles": result.num_particles,
                    "param": name,
                    "mean": float(result.mean[name].mean()),
                    "variance": float(result.variance[name].double().sum()),
                    "snr": result.snr_per_param[name],
                    "bias": bias,
                    "seconds": result.seconds,
                }
            )
    return rows

