"""Mohamed et al. (2020) section 3 toys: quadrature against closed forms, Monte Carlo against quadrature."""

import numpy as np
import pytest

from pyro_vi.estimators import toys as gradient_toys

CASES = [(cost, k) for cost in gradient_toys.COSTS for k in (gradient_toys.K_RANGES[cost][0], 1.5, gradient_toys.K_RANGES[cost][1])]
NUM_SAMPLES = 100_000


@pytest.mark.parametrize("cost,k", CASES, ids=[f"{c}-k{k}" for c, k in CASES])
def test_exact_gradient_matches_closed_form(cost, k):
    """Gauss-Hermite E[f'(x)], E[f'(x) eps] equal central differences of the closed-form E[f]."""
    step = 1e-5
    exact = gradient_toys.exact_gradient(cost, k)
    d_loc = (gradient_toys.closed_form_expectation(cost, k, 1 + step, 1) - gradient_toys.closed_form_expectation(cost, k, 1 - step, 1)) / (2 * step)
    d_scale = (gradient_toys.closed_form_expectation(cost, k, 1, 1 + step) - gradient_toys.closed_form_expectation(cost, k, 1, 1 - step)) / (2 * step)
    # central differences: O(step^2) truncation plus ~1e-16 / step rounding
    assert exact["loc"] == pytest.approx(d_loc, abs=1e-8)
    assert exact["scale"] == pytest.approx(d_scale, abs=1e-8)


def test_closed_form_variances():
    """Two variances by hand: pathwise d/d loc of (x - k)^2 is 2(x - k): variance 4 scale^2;
    score d/d loc of the same cost at k = loc: (scale eps)^2 eps / scale, variance scale^2 E[eps^6] = 15."""
    assert gradient_toys.exact_moments("reparam", "square", 0.3, "loc").variance == pytest.approx(4.0)
    assert gradient_toys.exact_moments("score", "square", 1.0, "loc").variance == pytest.approx(15.0)


def test_quadrature_converged():
    """200 nodes against 300 on the hardest integrand (score, d/d scale, cos at the largest k)."""
    moments = gradient_toys.exact_moments("score", "cos", 3.0, "scale", num_nodes=300)
    reference = gradient_toys.exact_moments("score", "cos", 3.0, "scale", num_nodes=200)
    assert moments.variance == pytest.approx(reference.variance, rel=1e-10)
    assert moments.fourth_central_moment == pytest.approx(reference.fourth_central_moment, rel=1e-8)


@pytest.mark.parametrize("estimator", gradient_toys.TOY_ESTIMATORS)
@pytest.mark.parametrize("cost,k", CASES, ids=[f"{c}-k{k}" for c, k in CASES])
def test_monte_carlo_matches_quadrature(estimator, cost, k):
    """100,000 seeded draws: the sample mean is within 4 standard errors (sd / sqrt(n)) of the exact
    gradient, and the sample variance within 4 standard errors of the exact variance, where the
    standard error of a sample variance is sqrt((mu_4 - sigma^4) / n) (mu_4 the exact fourth
    central moment, by the same quadrature; large-n normal approximation to s^2)."""
    exact = gradient_toys.exact_gradient(cost, k)
    for index, param in enumerate(gradient_toys.PARAMS):
        moments = gradient_toys.exact_moments(estimator, cost, k, param)
        samples = gradient_toys.gradient_samples(estimator, cost, k, param, NUM_SAMPLES, seed=index)
        # all three estimators are unbiased: their exact mean is the gradient
        assert moments.mean == pytest.approx(exact[param], abs=1e-9)
        mean_standard_error = np.sqrt(moments.variance / NUM_SAMPLES)
        assert abs(samples.mean() - exact[param]) < 4 * mean_standard_error
        variance_standard_error = np.sqrt((moments.fourth_central_moment - moments.variance**2) / NUM_SAMPLES)
        assert abs(samples.var(ddof=1) - moments.variance) < 4 * variance_standard_error


def test_optimal_baseline_minimises_variance():
    """b* never does worse than the baseline-free score estimator (b = 0 is one of the constants)."""
    for cost, k in CASES:
        for param in gradient_toys.PARAMS:
            best = gradient_toys.exact_moments("score-optimal-baseline", cost, k, param).variance
            assert best <= gradient_toys.exact_moments("score", cost, k, param).variance + 1e-12
