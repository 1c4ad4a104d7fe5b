"""Gradient variance, signal-to-noise ratio and bias of any estimator on any model/guide pair.

``gradient_variance`` draws ``num_replicates`` independent gradient estimates of the loss
(-ELBO) with respect to every Pyro param, as the optimizer sees it: the unconstrained tensor in
the param store, i.e. what ``param.grad`` holds after ``loss_and_grads``. The params keep their
values. Replicates run in one batched pass: ``torch.func.vmap(torch.func.grad(loss),
randomness="different")`` over the replicate index, with the param-store tensors, the
parameters of modules registered with ``pyro.module`` and those of ``pyro.nn.PyroModule``s
(``PyroParam`` included) swapped for the functional inputs. Before the batched pass one probe
checks that every param the loop differentiates is reached through its functional input (a param
the swap missed would get a silent zero gradient); models that fail the probe or cannot run under
``vmap`` fall back to a loop over ``differentiable_loss`` + autograd.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from typing import Callable, NamedTuple, Sequence

import pyro
import pyro.ops.special
import pyro.optim
import torch
from pyro import poutine
from torch import Tensor, nn

from pyro_vi import engine
from pyro_vi.estimators import core as estimators
from pyro_vi.errors import ConfigError, DataError, PyroVIError


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
    baseline_warmup: int = 0  # score-baseline: evaluations that warmed up its running average


# score-baseline: evaluations that warm up its running average when the store has none.
BASELINE_WARMUP = estimators.BASELINE_WARMUP


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
    baseline_warmup: int | None = None,
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
        baseline_warmup: ``score-baseline`` only: evaluations of the estimator that move Pyro's
            decaying-average baseline before the replicates are drawn. Default: ``BASELINE_WARMUP``
            (50) when the param store has no baseline for some guide site (a fresh estimator would
            otherwise be measured with baseline 0, i.e. as ``score-graph``), else 0 (a baseline
            trained by SVI is measured as it stands). The warm-up draws come from the seeded stream
            before the replicates' (so the baseline is independent of them), takes no optimizer
            step, and the baseline it leaves in the param store is removed afterwards. During the
            replicates the baseline is frozen at its warmed-up value.

    Raises:
        ConfigError: non-positive replicates/particles, or an estimator that does not apply.
    """
    if isinstance(num_replicates, bool) or not isinstance(num_replicates, int) or num_replicates < 2:
        raise ConfigError(f"num_replicates must be an integer >= 2 (a variance needs two draws), got {num_replicates!r}")
    if isinstance(estimator, str):
        estimator = estimators.get_estimator(estimator, num_particles=num_particles)
    if baseline_warmup is not None and (isinstance(baseline_warmup, bool) or not isinstance(baseline_warmup, int) or baseline_warmup < 0):
        raise ConfigError(f"baseline_warmup must be a non-negative integer, got {baseline_warmup!r}")
    _check_finite(args, kwargs)
    rng_state = _rng_state()
    pyro.set_rng_seed(seed)
    snapshot = None
    try:
        with _recording_modules() as modules, _data_errors():
            names, params = _discover_params(model, guide, args, kwargs)
        with _data_errors():
            estimator.check(model, guide, *args, **kwargs)
            _score_once(model, guide, args, kwargs)
        if reference is not None:
            missing = sorted(set(names) - set(reference))
            if missing:
                raise ConfigError(f"reference lacks gradients for params {', '.join(missing)}; give one per param")
        snapshot = _store_snapshot()  # the warmed-up baseline is removed when we are done
        num_warmup = estimator.warm_up(model, guide, args, kwargs, baseline_warmup)
        with estimator.measuring():  # a baseline is read at its (warmed-up) value, never moved
            statistics, vectorized, seconds = _replicates(
                estimator, model, guide, args, kwargs, names, params, modules, num_replicates, chunk_size, vectorize
            )
    finally:
        if snapshot is not None:
            _store_restore(snapshot)
        _set_rng_state(rng_state)
    mean, variance = statistics
    return _summarize(estimator, names, num_replicates, mean, variance, reference, seconds, vectorized)._replace(
        baseline_warmup=num_warmup
    )


def _check_finite(args, kwargs) -> None:
    """Raise DataError for a tensor argument with NaN or infinite values."""
    named = [(f"argument {index}", value) for index, value in enumerate(args)] + [(f"argument {key!r}", value) for key, value in kwargs.items()]
    for label, value in named:
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            count = int((~torch.isfinite(value)).sum())
            raise DataError(f"{label} has {count} NaN or infinite values; gradient_variance needs finite data (drop or impute them)")


def _score_once(model, guide, args, kwargs) -> None:
    """Compute every log-density of one draw, so that data outside a likelihood's support fail here."""
    state = _rng_state()  # the replicates' draws stay those of the seed
    try:
        with torch.no_grad():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs).compute_log_prob()
    finally:
        _set_rng_state(state)


@contextlib.contextmanager
def _data_errors():
    """Turn Pyro's validation errors (a value outside a likelihood's support) into one-line DataErrors."""
    try:
        yield
    except PyroVIError:
        raise
    except ValueError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        if not any("support" in line for line in lines[:3]):
            raise
        raise DataError(" ".join(lines[:2])[:300] + "; check the data against the model's likelihood") from None


def _replicates(estimator, model, guide, args, kwargs, names, params, modules, num_replicates, chunk_size, vectorize):
    """(mean and variance per param, vectorized?, seconds): one batched pass, else the loop."""
    replicate_rng = _rng_state()
    start = time.perf_counter()
    if vectorize is not False:
        try:
            statistics = _vectorized(estimator, model, guide, args, kwargs, names, params, modules, num_replicates, chunk_size)
            return statistics, True, time.perf_counter() - start
        except Exception as error:  # noqa: BLE001 - anything vmap refuses sends us to the loop
            if vectorize:
                raise
            warnings.warn(f"gradient_variance: vmap failed ({type(error).__name__}: {str(error)[:160]}); using the loop")
            _set_rng_state(replicate_rng)
            start = time.perf_counter()
    statistics = _looped(estimator, model, guide, args, kwargs, names, params, num_replicates)
    return statistics, False, time.perf_counter() - start


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
    steps = sorted(set(measure_at))
    results = {name: [] for name in estimators_measured}

    def measure(step: int, loss: float | None = None) -> None:
        if step not in steps:
            return
        for name in estimators_measured:
            measured = train_estimator if name == train_estimator.name else name
            results[name].append(
                gradient_variance(
                    model, guide, *args, estimator=measured, num_replicates=num_replicates,
                    num_particles=num_particles, seed=seed + step, **kwargs,
                )
            )

    pyro.set_rng_seed(seed)
    measure(0)
    # The training run is pyro_vi's engine (SVI.step's arithmetic), measured after each listed step.
    run = engine.fit(model, guide, *args, num_steps=num_steps, loss=train_estimator,
                     optim=pyro.optim.Adam({"lr": learning_rate}), callback=measure, progress=False, **kwargs)
    losses = run.losses
    return VarianceOverTraining(steps, results, losses)


# -- the two ways to draw replicates -------------------------------------------------------------


def _vectorized(estimator, model, guide, args, kwargs, names, params, modules, num_replicates, chunk_size):
    """Mean and variance over replicates from batched passes of vmap(grad(loss))."""
    store = pyro.get_param_store()
    module_parameters = _module_parameters(modules, names, params)  # param name -> functional key
    pyro_module_parameters = _pyro_module_parameters(modules, names, params)  # name -> (module, key)
    runner = _Runner(modules)

    def loss(values: tuple[Tensor, ...]) -> Tensor:
        functional = {}
        for name, value in zip(names, values):
            if name in module_parameters:
                functional[module_parameters[name]] = value
                continue
            store._params[name] = value
            if name in pyro_module_parameters:
                # A PyroModule computes with its own attribute; a PyroParam reads the store only
                # while the store holds the very tensor the module holds.
                module, key = pyro_module_parameters[name]
                module._parameters[key] = value
        return torch.func.functional_call(
            runner, functional, (lambda: estimator.differentiable_loss(model, guide, *args, **kwargs),), strict=False
        )

    values = tuple(p.detach() for p in params)
    if chunk_size is None:
        size = sum(p.numel() for p in params)
        chunk_size = max(1, min(num_replicates, int(256e6 / (4 * 4 * max(size, 1)))))
    snapshot = _store_snapshot()
    chunks = []
    try:
        with _restoring(pyro_module_parameters.values()):
            _check_functional_inputs_are_reached(loss, values, estimator, model, guide, args, kwargs, names, params, snapshot)
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
        _store_restore(snapshot)
    return _combine(chunks)


def _check_functional_inputs_are_reached(loss, values, estimator, model, guide, args, kwargs, names, params, snapshot):
    """Raise if a param the loop differentiates gets no gradient through its functional input.

    ``torch.func.grad`` returns zeros for an input the loss never touches, so a param the swap
    missed (a module we did not see, a tensor cached before the call) would look like an exactly
    zero gradient. One unbatched evaluation of each path shows which params each reaches.
    """
    loop_loss = estimator.differentiable_loss(model, guide, *args, **kwargs)
    loop_reached = _reached(loop_loss, params)
    _store_restore(snapshot)
    leaves = tuple(value.clone().requires_grad_(True) for value in values)
    functional_reached = _reached(loss(leaves), leaves)
    _store_restore(snapshot)
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


_PYRO_MODULE_PREFIX = "__pyro_module_"  # recorded PyroModules; swapped by hand, not by functional_call


def _registered(modules: dict[str, nn.Module]) -> list[nn.Module]:
    """The modules passed to ``pyro.module`` (not the recorded PyroModules)."""
    return [module for key, module in modules.items() if not key.startswith(_PYRO_MODULE_PREFIX)]


@contextlib.contextmanager
def _recording_modules():
    """Record the nn.Modules passed to ``pyro.module`` and the ``PyroModule``s whose attributes are
    read while the block runs (a PyroModule registers its params itself, not via pyro.module)."""
    modules: dict[str, nn.Module] = {}
    original = pyro.module
    original_getattr = pyro.nn.PyroModule.__getattr__

    def recording(name, nn_module, update_module_params=False):
        modules[name] = nn_module
        return original(name, nn_module, update_module_params)

    def recording_getattr(self, name):
        modules.setdefault(_PYRO_MODULE_PREFIX + str(id(self)), self)
        return original_getattr(self, name)

    pyro.module = recording
    pyro.primitives.module = recording
    pyro.nn.PyroModule.__getattr__ = recording_getattr
    try:
        yield modules
    finally:
        pyro.module = original
        pyro.primitives.module = original
        pyro.nn.PyroModule.__getattr__ = original_getattr


class _Runner(nn.Module):
    """Holds the recorded modules so ``functional_call`` can swap all their parameters at once."""

    def __init__(self, modules: dict[str, nn.Module]):
        super().__init__()
        self.nets = nn.ModuleList(_registered(modules))

    def forward(self, function):
        return function()


def _module_parameters(modules, names, params) -> dict[str, str]:
    """Param-store name -> functional_call key, for params that are module parameters."""
    owner = {}
    for index, module in enumerate(_registered(modules)):
        for key, parameter in module.named_parameters(remove_duplicate=False):
            owner.setdefault(id(parameter), f"nets.{index}.{key}")
    keys = {}
    for name, param in zip(names, params):
        if "$$$" in name:
            if id(param) not in owner:
                raise RuntimeError(f"module parameter {name} not found among the recorded modules")
            keys[name] = owner[id(param)]
    return keys


def _pyro_module_parameters(modules, names, params) -> dict[str, tuple[nn.Module, str]]:
    """Param-store name -> (PyroModule, key in its ``_parameters``) for params a PyroModule holds
    directly (its nn.Parameters and the ``*_unconstrained`` tensors of its PyroParams)."""
    owner = {}
    for name, module in modules.items():
        if name.startswith(_PYRO_MODULE_PREFIX):
            for key, parameter in module._parameters.items():
                if parameter is not None:
                    owner.setdefault(id(parameter), (module, key))
    return {name: owner[id(param)] for name, param in zip(names, params) if "$$$" not in name and id(param) in owner}


@contextlib.contextmanager
def _restoring(module_keys):
    """Put back the PyroModule parameters the vectorized loss swaps."""
    saved = [(module, key, module._parameters[key]) for module, key in module_keys]
    try:
        yield
    finally:
        for module, key, parameter in saved:
            module._parameters[key] = parameter


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
    """Make the samplers and log-sum-exps of torch and Pyro vmap-friendly for the block; restored after.

    - torch.distributions' in-place ``_standard_normal`` becomes ``torch.randn`` (vmap draws
      different noise per replicate only out of place);
    - Dirichlet (and so Beta) ``rsample`` draws normalized independent standard gammas: the same
      distribution, differentiated through torch's own gamma derivative, where torch's sampler is
      an autograd.Function without ``setup_context``, which vmap refuses;
    - Pyro's ``safe_log`` (in TraceEnum_ELBO's log-space einsum) gets a ``setup_context`` twin.
    """

    def standard_normal(shape, dtype, device):
        return torch.randn(shape, dtype=dtype, device=device)

    patched = []
    safe_log = pyro.ops.special.safe_log
    for name, module in list(sys.modules.items()):
        if name.startswith(("torch.distributions", "pyro.distributions")) and hasattr(module, "_standard_normal"):
            patched.append((module, "_standard_normal", module._standard_normal))
            module._standard_normal = standard_normal
        if name.startswith("pyro.") and getattr(module, "safe_log", None) is safe_log:
            patched.append((module, "safe_log", module.safe_log))
            module.safe_log = _safe_log
    dirichlet = torch.distributions.Dirichlet
    patched.append((dirichlet, "rsample", dirichlet.rsample))
    dirichlet.rsample = _dirichlet_rsample
    try:
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

