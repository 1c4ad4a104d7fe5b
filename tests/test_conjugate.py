"""The conjugate references: closed forms checked against brute force, and SVI checked against them.

Tiers: structure (guide sites = model latent sites), closed form (evidence vs the joint Gaussian /
sequential predictive; posterior via Bayes' identity at random points), convergence (SVI-fitted q
vs the exact posterior / the optimal diagonal q).
"""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

from pyro_vi import estimators
from pyro_vi.estimators import importance
from pyro_vi import conjugate

DTYPE = torch.float64


def _normal_normal(correlation: float = 0.9, dim: int = 3, num_data: int = 8):
    """A correlated prior (so the posterior is correlated) and data drawn from the model."""
    prior_covariance = torch.full((dim, dim), correlation, dtype=DTYPE) + (1 - correlation) * torch.eye(dim, dtype=DTYPE)
    noise_covariance = 4.0 * torch.eye(dim, dtype=DTYPE)
    model = conjugate.NormalNormal(torch.zeros(dim, dtype=DTYPE), prior_covariance, noise_covariance)
    data = torch.randn(num_data, dim, dtype=DTYPE) * 2 + 0.5
    return model, (data,)


def _linear_regression(num_data: int = 20, dim: int = 3):
    features = torch.randn(num_data, dim, dtype=DTYPE)
    features[:, 1] = features[:, 0] + 0.3 * features[:, 1]  # correlated features -> correlated posterior
    targets = features @ torch.tensor([1.0, -0.5, 0.2], dtype=DTYPE) + 0.5 * torch.randn(num_data, dtype=DTYPE)
    return conjugate.BayesianLinearRegression(prior_scale=1.0, noise_scale=0.5), (features, targets)


def _beta_bernoulli():
    data = torch.tensor([1.0, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=DTYPE)
    return conjugate.BetaBernoulli(2.0, 3.0), (data,)


def _ppca(num_data: int = 5, pixels: int = 4, z_dim: int = 2):
    weight = torch.randn(pixels, z_dim, dtype=DTYPE)
    model = conjugate.ProbabilisticPCA(weight, torch.randn(pixels, dtype=DTYPE), noise_scale=0.7)
    z = torch.randn(num_data, z_dim, dtype=DTYPE)
    return model, (z @ weight.T + model.bias + 0.7 * torch.randn(num_data, pixels, dtype=DTYPE),)


def _site_names(trace):
    return {n for n, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]
            and type(s["fn"]).__name__ != "_Subsample"}


@pytest.mark.parametrize(
    "make, guide_name",
    [(_normal_normal, "mean_field_guide"), (_normal_normal, "full_rank_guide"),
     (_linear_regression, "mean_field_guide"), (_linear_regression, "full_rank_guide"),
     (_beta_bernoulli, "mean_field_guide"), (_ppca, "posterior_guide")],
    ids=["normal-mean-field", "normal-full-rank", "regression-mean-field", "regression-full-rank",
         "beta-bernoulli", "ppca-posterior"],
)
def test_guide_samples_the_model_latent_sites(make, guide_name):
    model, args = make()
    guide_trace = poutine.trace(getattr(model, guide_name)).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(*args)
    assert _site_names(guide_trace) == _site_names(model_trace)


def test_normal_normal_evidence_equals_joint_gaussian():
    model, (data,) = _normal_normal()
    num_data, dim = data.shape
    # Stacked x is Gaussian: mean 1 (x) mu_0, covariance 11^T (x) Sigma_0 + I (x) Sigma.
    covariance = torch.kron(torch.ones(num_data, num_data, dtype=DTYPE), model.prior_covariance) + torch.kron(
        torch.eye(num_data, dtype=DTYPE), model.noise_covariance
    )
    expected = dist.MultivariateNormal(model.prior_loc.repeat(num_data), covariance).log_prob(data.reshape(-1))
    assert float(model.log_evidence(data)) == pytest.approx(float(expected), abs=1e-9)


def test_linear_regression_evidence_equals_marginal_gaussian():
    model, (features, targets) = _linear_regression()
    covariance = model.noise_scale**2 * torch.eye(len(targets), dtype=DTYPE) + model.prior_scale**2 * features @ features.T
    expected = dist.MultivariateNormal(torch.zeros_like(targets), covariance).log_prob(targets)
    assert float(model.log_evidence(features, targets)) == pytest.approx(float(expected), abs=1e-9)


def test_beta_bernoulli_evidence_equals_sequential_predictive():
    model, (data,) = _beta_bernoulli()
    # p(x_1..N) = prod_n p(x_n | x_<n), with p(x_n = 1 | x_<n) = (a + k_<n) / (a + b + n - 1).
    log_evidence, successes = 0.0, 0.0
    for n, x in enumerate(data.tolist()):
        probability = (model.concentration1 + successes) / (model.concentration1 + model.concentration0 + n)
        log_evidence += math.log(probability if x == 1 else 1 - probability)
        successes += x
    assert float(model.log_evidence(data)) == pytest.approx(log_evidence, abs=1e-10)


@pytest.mark.parametrize("make", [_normal_normal, _linear_regression], ids=["normal", "regression"])
def test_posterior_satisfies_bayes_identity_everywhere(make):
    """log p(data | z) + log p(z) - log p(z | data) is the same constant log p(data) at every z
    only if the posterior is right."""
    model, args = make()
    posterior = model.posterior(*args)
    for _ in range(5):
        z = posterior.loc + torch.randn_like(posterior.loc)
        site = "z" if isinstance(model, conjugate.NormalNormal) else "weights"
        trace = poutine.trace(poutine.condition(model.model, data={site: z})).get_trace(*args)
        identity = trace.log_prob_sum() - posterior.log_prob(z)
        assert float(identity) == pytest.approx(float(model.log_evidence(*args)), abs=1e-8)


def test_ppca_evidence_and_posterior_per_datapoint():
    model, (data,) = _ppca()
    posterior = model.posterior(data)
    z = posterior.sample()
    log_joint = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + dist.Normal(
        z @ model.weight.T + model.bias, model.noise_scale).log_prob(data).sum(-1)
    torch.testing.assert_close(log_joint - posterior.log_prob(z), model.log_evidence(data))


def _fit(model, guide, args, num_steps: int = 500, num_particles: int = 64, learning_rate: float = 0.1):
    # Learning rate decays 100x over the run so the SVI iterate settles near the optimum.
    optimizer = ClippedAdam({"lr": learning_rate, "lrd": 0.01 ** (1 / num_steps)})
    svi = SVI(model, guide, optimizer, Trace_ELBO(num_particles=num_particles, vectorize_particles=True))
    for _ in range(num_steps):
        svi.step(*args)


@pytest.mark.parametrize(
    "make", [pytest.param(_normal_normal, marks=pytest.mark.slow), _linear_regression], ids=["normal", "regression"]
)
def test_fitted_mean_field_matches_optimal_diagonal_q(make):
    model, args = make()
    _fit(model.model, model.mean_field_guide, args)
    site = "z" if isinstance(model, conjugate.NormalNormal) else "weights"
    loc, scale = model.optimal_mean_field(*args)
    # Tolerances: after 500 steps of 64 particles with the decayed step size the remaining SVI
    # error measured 0.007 posterior standard deviations (loc) and 1% (scale); 5% leaves a margin.
    posterior_scale = model.posterior(*args).variance.sqrt()
    torch.testing.assert_close(pyro.param(f"{site}_loc").detach(), loc, atol=0.05 * float(posterior_scale.min()), rtol=0)
    torch.testing.assert_close(pyro.param(f"{site}_scale").detach(), scale, rtol=0.05, atol=0)


@pytest.mark.slow
def test_fitted_beta_guide_matches_beta_posterior():
    model, (data,) = _beta_bernoulli()
    _fit(model.model, model.mean_field_guide, (data,))
    posterior = model.posterior(data)
    q = dist.Beta(pyro.param("probs_concentration1").detach(), pyro.param("probs_concentration0").detach())
    # Mean and standard deviation to 3% / 10%: Beta concentrations are weakly identified by the
    # ELBO along the ridge of constant mean, but the moments are pinned down.
    assert float(q.mean) == pytest.approx(float(posterior.mean), rel=0.03)
    assert float(q.variance.sqrt()) == pytest.approx(float(posterior.variance.sqrt()), rel=0.1)
    assert float(model.log_evidence(data) - model.elbo(q, data)) < 0.01


@pytest.mark.parametrize("make", [_normal_normal, _linear_regression], ids=["normal", "regression"])
def test_elbo_of_the_exact_posterior_equals_log_evidence(make):
    """With q = p(z | x) every log weight equals log p(x): the Monte Carlo ELBO has zero variance."""
    model, args = make()
    posterior = model.posterior(*args)
    site = "z" if isinstance(model, conjugate.NormalNormal) else "weights"
    pyro.param(f"{site}_loc", posterior.loc)
    pyro.param(f"{site}_scale_tril", posterior.scale_tril, constraint=constraints.lower_cholesky)
    elbo = -Trace_ELBO(num_particles=10, vectorize_particles=True).loss(model.model, model.full_rank_guide, *args)
    # Float64: every log weight equals log p(x) up to round-off of sums of O(10)-nat terms.
    assert elbo == pytest.approx(float(model.log_evidence(*args)), abs=1e-8)


def test_elbo_of_the_exact_beta_posterior_equals_log_evidence():
    model, (data,) = _beta_bernoulli()
    posterior = model.posterior(data)
    pyro.param("probs_concentration1", posterior.concentration1)
    pyro.param("probs_concentration0", posterior.concentration0)
    elbo = -Trace_ELBO(num_particles=10, vectorize_particles=True).loss(model.model, model.mean_field_guide, data)
    assert elbo == pytest.approx(float(model.log_evidence(data)), abs=1e-8)  # exact up to float64 round-off


@pytest.mark.slow
def test_fitted_full_rank_guide_reaches_log_evidence():
    model, args = _normal_normal()
    _fit(model.model, model.full_rank_guide, args)
    q = dist.MultivariateNormal(pyro.param("z_loc"), scale_tril=pyro.param("z_scale_tril"))
    gap = float(model.log_evidence(*args) - model.elbo(q, *args).detach())  # = KL(q || posterior), exact
    # Measured 4e-4 nats after 500 steps x 64 particles (the residual SVI jitter).
    assert 0 <= gap < 1e-3


@pytest.mark.parametrize("make", [_normal_normal, _linear_regression], ids=["normal", "regression"])
def test_diagonal_q_falls_short_by_the_analytic_kl(make):
    model, args = make()
    posterior = model.posterior(*args)
    analytic_gap = float(conjugate.mean_field_kl_gap(posterior))
    assert analytic_gap > 0.1  # the posterior is strongly correlated by construction

    loc, scale = model.optimal_mean_field(*args)
    site = "z" if isinstance(model, conjugate.NormalNormal) else "weights"
    pyro.param(f"{site}_loc", loc)
    pyro.param(f"{site}_scale", scale, constraint=constraints.positive)
    log_evidence = float(model.log_evidence(*args))
    q = dist.Normal(loc, scale).to_event(1)
    assert float(model.elbo(q, *args).detach()) == pytest.approx(log_evidence - analytic_gap, abs=1e-9)

    # Monte Carlo ELBO with 20,000 particles: the mean of the log weights log p(x, z) - log q(z),
    # z ~ q; tolerance 4 standard errors of that mean.
    weights = importance.log_weights(model.model, model.mean_field_guide, *args, num_particles=20_000).detach()
    elbo, standard_error = float(weights.mean()), float(weights.std()) / math.sqrt(weights.numel())
    assert log_evidence - elbo == pytest.approx(analytic_gap, abs=4 * standard_error)
    assert elbo < log_evidence - 4 * standard_error


# ----------------------------------------------------------------------------------------------
# Fast variants of the slow convergence tests above (validation off: it only checks supports and
# costs ~10x per step on these tiny models).
# ----------------------------------------------------------------------------------------------


def _fit_stl(model, guide, args, num_steps: int = 300, learning_rate: float = 0.3):
    """SVI with the sticking-the-landing estimator: when q is in the posterior's family, at q =
    posterior every draw's log p(x, z) - log q(z) is the constant log p(x) and STL's gradient is
    exactly zero, so the iterate converges with no noise floor (no stationary jitter)."""
    optimizer = ClippedAdam({"lr": learning_rate, "lrd": 0.1 ** (1 / num_steps)})
    svi = SVI(model, guide, optimizer, estimators.get_estimator("stl", num_particles=1))
    with pyro.validation_enabled(False):
        for _ in range(num_steps):
            svi.step(*args)


def test_stl_fitted_full_rank_guide_reaches_log_evidence_fast():
    model, args = _normal_normal()
    _fit_stl(model.model, model.full_rank_guide, args)
    q = dist.MultivariateNormal(pyro.param("z_loc").detach(), scale_tril=pyro.param("z_scale_tril").detach())
    # The gap is KL(q || posterior), exact (no Monte Carlo). STL's zero-variance optimum makes the
    # remaining gap a pure optimization error, which shrinks geometrically (4e-6 after 300 steps);
    # the bound is 1e-3 nats.
    gap = float(model.log_evidence(*args) - model.elbo(q, *args))
    assert 0 <= gap < 1e-3


def test_stl_fitted_beta_guide_matches_beta_posterior_fast():
    model, (data,) = _beta_bernoulli()
    _fit_stl(model.model, model.mean_field_guide, (data,))
    posterior = model.posterior(data)
    q = dist.Beta(pyro.param("probs_concentration1").detach(), pyro.param("probs_concentration0").detach())
    kl = float(model.log_evidence(data) - model.elbo(q, data))  # = KL(q || posterior), exact
    assert 0 <= kl < 1e-4
    # To second order, KL(q || p) <= 1e-4 allows a mean shift of at most sqrt(2 KL) = 1.4% of a
    # posterior sd (for any statistic f, |E_q f - E_p f| <= sqrt(2 KL Var_p f)) and a change of log
    # sd of about sqrt(KL) = 1%; tolerances 2% of a sd and 1.5%.
    posterior_sd = float(posterior.variance.sqrt())
    assert float(q.mean) == pytest.approx(float(posterior.mean), abs=0.02 * posterior_sd)
    assert float(q.variance.sqrt()) == pytest.approx(posterior_sd, rel=0.015)


def test_fitted_mean_field_matches_optimal_diagonal_q_fast():
    """Normal-Normal, diagonal q (not the posterior's family): Adam from the default start, then
    the average of the iterates over T further steps (Polyak-Ruppert), compared with q*."""
    model, args = _normal_normal()
    num_particles, burn_in, num_averaged = 16, 150, 300
    svi = SVI(model.model, model.mean_field_guide, pyro.optim.Adam({"lr": 0.05}),
              Trace_ELBO(num_particles=num_particles, vectorize_particles=True))
    locs, log_scales = [], []
    with pyro.validation_enabled(False):
        for step in range(burn_in + num_averaged):
            svi.step(*args)
            if step >= burn_in:
                locs.append(pyro.param("z_loc").detach().clone())
                log_scales.append(pyro.param("z_scale").detach().log())
    loc, scale = model.optimal_mean_field(*args)
    precision = model.posterior(*args).precision_matrix
    # The averaged iterate of (preconditioned) SGD has error covariance H^-1 C H^-1 / (P T), with
    # H the Hessian of -ELBO and C the covariance of one particle's gradient at q* (Polyak and
    # Juditsky 1992). For a Gaussian posterior N(mu, Lambda^-1) and q* = N(m, diag s^2):
    #   loc:       H = Lambda, one particle's gradient -Lambda (s * eps): H^-1 C H^-1 = diag(s^2);
    #   log scale: H = 2 I, gradient 1 - u_j (Lambda u)_j with u = s * eps, whose variance is
    #              2 + s_j^2 sum_{k != j} Lambda_jk^2 s_k^2 (the two blocks are uncorrelated).
    # Tolerance: 4 standard errors per coordinate.
    draws = num_particles * num_averaged
    loc_standard_error = scale / math.sqrt(draws)
    off_diagonal = precision - torch.diag_embed(precision.diagonal())
    log_scale_variance = 2 + scale**2 * (off_diagonal**2 @ scale**2)
    log_scale_standard_error = log_scale_variance.sqrt() / 2 / math.sqrt(draws)
    assert torch.all((torch.stack(locs).mean(0) - loc).abs() < 4 * loc_standard_error)
    assert torch.all((torch.stack(log_scales).mean(0) - scale.log()).abs() < 4 * log_scale_standard_error)
