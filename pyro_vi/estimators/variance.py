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
import logging
import time
from typing import Callable, NamedTuple, Sequence

import pyro
import pyro.optim
import torch
from pyro import poutine
from torch import Tensor

from pyro_vi import engine
from pyro_vi.engine import params, rng
from pyro_vi.errors import ConfigError, DataError, PyroVIError
from pyro_vi.estimators import score, vectorized
from pyro_vi.estimators.base import GradientEstimator, get_estimator

_LOG = logging.getLogger(__name__)

__all__ = ["GradientVariance", "gradient_variance", "VarianceOverTraining", "variance_over_training", "snr_table", "BASELINE_WARMUP"]


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
    # Standard error of total_variance: sd over replicates of ||g_r - mean||^2, / sqrt(R), times R / (R - 1)
    # (the fourth moment it needs comes from the draws themselves: no Gaussian assumption).
    total_variance_standard_error: float = float("nan")


# score-baseline: evaluations that warm up its running average when the store has none.
BASELINE_WARMUP = score.BASELINE_WARMUP


def gradient_variance(
    model: Callable,
    guide: Callable,
    *args,
    estimator: str | GradientEstimator = "reparam",
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
        estimator = get_estimator(estimator, num_particles=num_particles)
    if baseline_warmup is not None and (isinstance(baseline_warmup, bool) or not isinstance(baseline_warmup, int) or baseline_warmup < 0):
        raise ConfigError(f"baseline_warmup must be a non-negative integer, got {baseline_warmup!r}")
    _check_finite(args, kwargs)
    rng_state = rng.get_state()
    pyro.set_rng_seed(seed)
    snapshot = None
    try:
        with params.recording_modules() as modules, _data_errors():
            names, tensors = params.discover(model, guide, *args, **kwargs)
        with _data_errors():
            estimator.check(model, guide, *args, **kwargs)
            _score_once(model, guide, args, kwargs)
        if reference is not None:
            missing = sorted(set(names) - set(reference))
            if missing:
                raise ConfigError(f"reference lacks gradients for params {', '.join(missing)}; give one per param")
        snapshot = params.snapshot()  # the warmed-up baseline is removed when we are done
        num_warmup = estimator.warm_up(model, guide, args, kwargs, baseline_warmup)
        with estimator.measuring():  # a baseline is read at its (warmed-up) value, never moved
            statistics, vectorized, seconds = _replicates(
                estimator, model, guide, args, kwargs, names, tensors, modules, num_replicates, chunk_size, vectorize
            )
    finally:
        if snapshot is not None:
            params.restore(snapshot)
        rng.set_state(rng_state)
    mean, variance, total_variance_standard_error = statistics
    return _summarize(estimator, names, num_replicates, mean, variance, reference, seconds, vectorized)._replace(
        baseline_warmup=num_warmup, total_variance_standard_error=total_variance_standard_error
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
    with rng.preserved(), torch.no_grad():  # the replicates' draws stay those of the seed
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs).compute_log_prob()


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


def _replicates(estimator, model, guide, args, kwargs, names, tensors, modules, num_replicates, chunk_size, vectorize):
    """((mean and variance per param, standard error of their total), vectorized?, seconds): one
    batched pass, else the loop."""
    replicate_rng = rng.get_state()
    start = time.perf_counter()
    if vectorize is not False:
        try:
            chunks = vectorized.gradients(estimator, model, guide, args, kwargs, names, tensors, modules, num_replicates, chunk_size)
            return _combine(chunks), True, time.perf_counter() - start
        except Exception as error:  # noqa: BLE001 - anything vmap refuses sends us to the loop
            if vectorize:
                raise
            # The result says so (vectorized=False); a log line, as Pyro logs its own guesses, not a
            # warning: the enumerated estimators never vmap (Pyro's Dice contraction reads mask.all()).
            _LOG.info("gradient_variance: vmap failed (%s: %s); using the loop", type(error).__name__, str(error)[:160])
            rng.set_state(replicate_rng)
            start = time.perf_counter()
    chunks = _looped(estimator, model, guide, args, kwargs, tensors, num_replicates)
    return _combine(chunks), False, time.perf_counter() - start


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
    train_estimator: str | GradientEstimator = "reparam",
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
        train_estimator = get_estimator(train_estimator, num_particles=num_particles)
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


# -- the reference path and the statistics ----------------------------------------------------


def _looped(estimator, model, guide, args, kwargs, tensors, num_replicates) -> list:
    """The reference path: one differentiable_loss + autograd.grad per replicate (chunks of one)."""
    snapshot = params.snapshot()
    chunks = []
    try:
        for _ in range(num_replicates):
            loss = estimator.differentiable_loss(model, guide, *args, **kwargs)
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            grads = [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]
            chunks.append([g.detach().double().unsqueeze(0) for g in grads])
            params.restore(snapshot)  # e.g. a decaying-average baseline must not move
    finally:
        params.restore(snapshot)
    return chunks


def _combine(chunks):
    """Mean and unbiased variance per param from chunks of replicates (Chan et al.'s merge), and the
    standard error of the total variance (a second pass over the chunks, which are kept anyway)."""
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
    # Total variance = sum_r d_r / (R - 1) with d_r = ||g_r - mean||^2 over all params: its standard
    # error is that of a mean of the d_r, scaled by R / (R - 1).
    squared_deviations = torch.cat(
        [sum(((g - mu) ** 2).reshape(g.shape[0], -1).sum(1) for g, mu in zip(chunk, mean)) for chunk in chunks]
    )
    standard_error = float(squared_deviations.std() / count**0.5 * count / (count - 1))
    return mean, [m / (count - 1) for m in m2], standard_error


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

