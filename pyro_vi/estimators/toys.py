"""The one-dimensional gradient toys of Mohamed, Rosca, Figurnov and Mnih (2020, JMLR), section 3.

x ~ N(loc, scale^2) (the paper uses loc = scale = 1) and a cost f(x; k) from one of three families::

    square   f(x) = (x - k)^2
    exp      f(x) = exp(-k x^2)
    cos      f(x) = cos(k x)

Every estimator of d/d(loc) and d/d(scale) of E[f(x)] is a function of one standard normal draw
eps (x = loc + scale * eps), so one function per (estimator, param) gives both the Monte Carlo
samples (eps random) and the exact moments (eps at Gauss-Hermite nodes)::

    score                   f(x) * d log N(x; loc, scale) / d theta
                            (d/d loc: eps / scale;  d/d scale: (eps^2 - 1) / scale)
    score-optimal-baseline  (f(x) - b*) * d log N / d theta, with the variance-optimal constant
                            b* = E[f s^2] / E[s^2] (s the score; one b* per param), computed exactly
    reparam                 pathwise: f'(x) * dx / d theta  (dx/d loc = 1, dx/d scale = eps)

All three are unbiased; their per-sample variances are what the paper plots against k.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import numpy as np
from numpy.polynomial import hermite_e

__all__ = [
    "COSTS",
    "TOY_ESTIMATORS",
    "PARAMS",
    "K_RANGES",
    "Moments",
    "cost",
    "cost_derivative",
    "estimator_function",
    "expectation",
    "optimal_baseline",
    "exact_gradient",
    "exact_moments",
    "gradient_samples",
    "closed_form_expectation",
]

COSTS = ("square", "exp", "cos")
TOY_ESTIMATORS = ("score", "score-optimal-baseline", "reparam")  # the toys' own estimators (not the registry, pyro_vi.estimators.ESTIMATORS)
PARAMS = ("loc", "scale")
# The ranges of k plotted in the paper's figure 2 (square: the quadratic's centre; exp, cos: a
# frequency / width).
K_RANGES = {"square": (-3.0, 3.0), "exp": (0.1, 3.0), "cos": (0.1, 3.0)}


class Moments(NamedTuple):
    """Exact moments of one estimator's per-sample gradient (Gauss-Hermite quadrature)."""

    mean: float
    variance: float
    fourth_central_moment: float  # for the standard error of a sample variance


def cost(name: str, x: np.ndarray, k: float) -> np.ndarray:
    """f(x; k) for the cost family ``name``."""
    if name == "square":
        return (x - k) ** 2
    if name == "exp":
        return np.exp(-k * x**2)
    if name == "cos":
        return np.cos(k * x)
    raise ValueError(f"unknown cost {name!r}; choose one of {', '.join(COSTS)}")


def cost_derivative(name: str, x: np.ndarray, k: float) -> np.ndarray:
    """df/dx (x; k)."""
    if name == "square":
        return 2 * (x - k)
    if name == "exp":
        return -2 * k * x * np.exp(-k * x**2)
    if name == "cos":
        return -k * np.sin(k * x)
    raise ValueError(f"unknown cost {name!r}; choose one of {', '.join(COSTS)}")


def _score(param: str, eps: np.ndarray, scale: float) -> np.ndarray:
    """d log N(loc + scale eps; loc, scale) / d param, as a function of eps."""
    return eps / scale if param == "loc" else (eps**2 - 1) / scale


def estimator_function(
    estimator: str, cost_name: str, k: float, param: str, loc: float = 1.0, scale: float = 1.0, num_nodes: int = 200
) -> Callable[[np.ndarray], np.ndarray]:
    """eps -> the estimator's single-sample gradient of E[f(x; k)] with respect to ``param``."""
    if param not in PARAMS:
        raise ValueError(f"unknown param {param!r}; choose one of {', '.join(PARAMS)}")
    if estimator == "reparam":
        dx = (lambda eps: np.ones_like(eps)) if param == "loc" else (lambda eps: eps)
        return lambda eps: cost_derivative(cost_name, loc + scale * eps, k) * dx(eps)
    if estimator == "score":
        baseline = 0.0
    elif estimator == "score-optimal-baseline":
        baseline = optimal_baseline(cost_name, k, param, loc, scale, num_nodes)
    else:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(TOY_ESTIMATORS)}")
    return lambda eps: (cost(cost_name, loc + scale * eps, k) - baseline) * _score(param, eps, scale)


def expectation(function: Callable[[np.ndarray], np.ndarray], num_nodes: int = 200) -> float:
    """E[function(eps)], eps ~ N(0, 1), by probabilists' Gauss-Hermite quadrature."""
    nodes, weights = _nodes_and_weights(num_nodes)
    return float(np.sum(weights * function(nodes)))


@functools.lru_cache(maxsize=8)
def _nodes_and_weights(num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = hermite_e.hermegauss(num_nodes)  # weight exp(-eps^2 / 2): sum = sqrt(2 pi)
    return nodes, weights / np.sqrt(2 * np.pi)


def optimal_baseline(cost_name: str, k: float, param: str, loc: float = 1.0, scale: float = 1.0, num_nodes: int = 200) -> float:
    """b* = E[f s^2] / E[s^2]: the constant minimising Var[(f - b) s] (d/db = 0)."""
    def score_squared(eps):
        return _score(param, eps, scale) ** 2

    weighted = expectation(lambda eps: cost(cost_name, loc + scale * eps, k) * score_squared(eps), num_nodes)
    return weighted / expectation(score_squared, num_nodes)


def exact_gradient(cost_name: str, k: float, loc: float = 1.0, scale: float = 1.0, num_nodes: int = 200) -> dict[str, float]:
    """d E[f(x; k)] / d(loc, scale), as E[f'(x)] and E[f'(x) eps] by quadrature."""
    return {
        param: expectation(estimator_function("reparam", cost_name, k, param, loc, scale), num_nodes) for param in PARAMS
    }


def exact_moments(
    estimator: str, cost_name: str, k: float, param: str, loc: float = 1.0, scale: float = 1.0, num_nodes: int = 200
) -> Moments:
    """Mean, variance and fourth central moment of one estimator's single-sample gradient."""
    function = estimator_function(estimator, cost_name, k, param, loc, scale, num_nodes)
    mean = expectation(function, num_nodes)
    variance = expectation(lambda eps: (function(eps) - mean) ** 2, num_nodes)
    fourth = expectation(lambda eps: (function(eps) - mean) ** 4, num_nodes)
    return Moments(mean, variance, fourth)


def gradient_samples(
    estimator: str, cost_name: str, k: float, param: str, num_samples: int, loc: float = 1.0, scale: float = 1.0, seed: int = 0
) -> np.ndarray:
    """``num_samples`` independent single-sample gradient estimates, shape (num_samples,)."""
    eps = np.random.default_rng(seed).standard_normal(num_samples)
    return estimator_function(estimator, cost_name, k, param, loc, scale)(eps)


def closed_form_expectation(cost_name: str, k: float, loc: float, scale: float) -> float:
    """E[f(x; k)] in closed form (for checking the quadrature):
    square: (loc - k)^2 + scale^2;  exp: exp(-k loc^2 / (1 + 2 k scale^2)) / sqrt(1 + 2 k scale^2);
    cos: cos(k loc) exp(-k^2 scale^2 / 2)."""
    if cost_name == "square":
        return (loc - k) ** 2 + scale**2
    if cost_name == "exp":
        spread = 1 + 2 * k * scale**2
        return float(np.exp(-k * loc**2 / spread) / np.sqrt(spread))
    if cost_name == "cos":
        return float(np.cos(k * loc) * np.exp(-(k**2) * scale**2 / 2))
    raise ValueError(f"unknown cost {cost_name!r}; choose one of {', '.join(COSTS)}")
