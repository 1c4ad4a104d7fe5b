"""Gaussian mixture: structure, exact ELBO against a hand-written logsumexp, EM against theory and
against scikit-learn. Everything here is deterministic float64, so tolerances are rounding-level."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from scipy.stats import multivariate_normal

from pyro_vi import ConfigError
from pyro_vi.mixture import data as mixture_data
from pyro_vi.mixture import em as mixture_em
from pyro_vi.mixture import eval as mixture_eval
from pyro_vi.mixture import model as gmm


def _hand_log_likelihood(data, params) -> np.ndarray:
    """log sum_k pi_k N(x_n | loc_k, Sigma_k) per point with scipy densities, independent of Pyro."""
    covariances = params.covariance_matrix.numpy()
    log_terms = np.stack(
        [math.log(params.weights[k]) + multivariate_normal(params.loc[k].numpy(), covariances[k]).logpdf(data.numpy())
         for k in range(len(params.weights))], axis=-1)
    return np.logaddexp.reduce(log_terms, axis=-1)


def _latent_sites(trace) -> set:
    return {name for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and name not in ("data", "components")}


@pytest.fixture(params=["full", "diag"])
def mixture(request):
    data = mixture_data.synthetic(3, 2, 200, separation=3.0, seed=1, covariance=request.param)
    return data, request.param


def test_guides_sample_exactly_the_latent_sites(mixture):
    data, covariance = mixture
    params = data.true_params
    prior = gmm.Prior.from_data(data.train, 3)
    model_trace = poutine.trace(gmm.model).get_trace(data.train, 3, covariance, prior)
    latent = _latent_sites(model_trace)
    assert latent == ({"weights", "loc", "scale", "z"} | ({"corr_cholesky"} if covariance == "full" else set()))
    bayesian_trace = poutine.trace(gmm.make_bayesian_guide(params, 200)).get_trace(data.train, 3, covariance, prior)
    assert _latent_sites(bayesian_trace) == latent
    map_trace = poutine.trace(gmm.make_map_guide(params)).get_trace(data.train, 3, covariance, None)
    assert _latent_sites(map_trace) == latent - {"z"}  # z is enumerated in the model
    assert model_trace.nodes["z"]["value"].shape == (200,)
    assert model_trace.nodes["loc"]["value"].shape == (3, 2)


def test_map_enumerated_elbo_is_the_exact_mixture_log_likelihood(mixture):
    data, covariance = mixture
    params = data.true_params
    hand = _hand_log_likelihood(data.train, params)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    # Flat priors: the ELBO is log p(x | theta) exactly (z summed out, Delta guide has no entropy).
    loss = elbo.loss(gmm.enumerated_model, gmm.make_map_guide(params), data.train, 3, covariance, None)
    assert -loss == pytest.approx(hand.sum(), rel=1e-10)
    # Proper priors add log p(theta) at the point, computed here from the distributions directly.
    pyro.clear_param_store()
    prior = gmm.Prior(loc_scale=5.0, scale_scale=0.5, weights_concentration=2.0)
    loss = elbo.loss(gmm.enumerated_model, gmm.make_map_guide(params), data.train, 3, covariance, prior)
    zero = torch.tensor(0.0, dtype=torch.float64)  # float64 hyperparameters: float32 ones lose 1e-7
    log_prior = (dist.Dirichlet(torch.full((3,), 2.0, dtype=torch.float64)).log_prob(params.weights)
                 + dist.Normal(zero, zero + 5.0).log_prob(params.loc).sum()
                 + dist.LogNormal(zero, zero + 0.5).log_prob(params.scale).sum())
    if covariance == "full":
        log_prior = log_prior + dist.LKJCholesky(2, torch.tensor(1.0, dtype=torch.float64)).log_prob(params.corr_cholesky).sum()
    assert -loss == pytest.approx(hand.sum() + log_prior.item(), rel=1e-10)


def test_e_step_is_the_exact_posterior_over_assignments(mixture):
    data, covariance = mixture
    params = data.true_params
    covariances = params.covariance_matrix.numpy()
    joint = np.stack([params.weights[k].item() * multivariate_normal(params.loc[k].numpy(), covariances[k]).pdf(data.train.numpy())
                      for k in range(3)], axis=-1)
    expected = joint / joint.sum(-1, keepdims=True)
    np.testing.assert_allclose(gmm.assignment_probabilities(data.train, params).numpy(), expected, rtol=1e-8, atol=1e-12)
    average, _ = mixture_em.e_step(data.train, params)
    assert average.item() == pytest.approx(_hand_log_likelihood(data.train, params).mean(), rel=1e-12)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_em_log_likelihood_never_decreases(covariance):
    # Overlapping components and a random start give many iterations; reg_covar=0 is exact ML,
    # for which EM's monotonicity is a theorem. Slack: float64 rounding of a sum of 500 terms.
    data = mixture_data.synthetic(4, 2, 500, separation=2.0, seed=3, covariance=covariance)
    result = mixture_em.fit_em(data.train, 4, covariance, "random", seed=2, tol=1e-10, max_iter=60, reg_covar=0.0)
    history = np.array(result.log_likelihoods)
    assert result.iterations >= 10
    assert np.diff(history).min() >= -1e-12 * np.abs(history).max()


def test_em_recovers_true_locations_on_well_separated_data():
    num_data = 3000
    data = mixture_data.synthetic(3, 2, num_data, separation=8.0, seed=4)
    result = mixture_em.fit_em(data.train, 3, "full", seed=0)
    matched = mixture_eval.match_components(data.true_params, result.params)
    # Each fitted location is a sample mean of ~N pi_k points with per-axis std <= 1 (synthetic's
    # largest component std): standard error <= 1 / sqrt(N pi_k). Allow 5 standard errors per axis.
    for k, error in enumerate(matched.loc_errors):
        standard_error = 1.0 / math.sqrt(num_data * data.true_params.weights[k].item())
        assert error < 5 * math.sqrt(2) * standard_error
    # 8 standard deviations apart: a point lands nearer another component with probability ~Phi(-4).
    labels = gmm.assignment_probabilities(data.train, result.params).argmax(-1)
    assert mixture_eval.adjusted_rand_index(data.train_labels, labels) > 0.99


@pytest.mark.parametrize("covariance", ["full", "diag"])
@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_em_matches_sklearn_from_the_same_start(covariance, init):
    # Same start (weights_init, means_init, precisions_init), reg_covar and tol, flat priors:
    # the same iterations in float64.
    data = mixture_data.synthetic(3, 2, 1000, separation=3.0, seed=5, covariance=covariance)
    result = mixture_em.fit_em(data.train, 3, covariance, init, seed=1, tol=1e-4, reg_covar=1e-6)
    reference = mixture_eval.fit_sklearn(data.train, result.initial_params, tol=1e-4, reg_covar=1e-6)
    assert result.log_likelihoods[-1] == pytest.approx(reference.train_log_likelihood, rel=1e-4)
    assert result.iterations == reference.iterations
    np.testing.assert_allclose(result.params.loc.numpy(), reference.model.means_, atol=1e-5)


def test_restarts_keep_the_best_and_evaluation_matches_definitions():
    data = mixture_data.synthetic(4, 2, 400, separation=2.5, seed=6)
    result = mixture_em.fit_em(data.train, 4, "full", "random", num_restarts=4, seed=0)
    finals = result.restart_log_likelihoods
    assert len(finals) == 4
    # The random starts end in different local optima (spread ~0.008 nats/point here, far above
    # the tol of 1e-3 per iteration), and the returned fit is the best one, its params included.
    assert max(finals) - min(finals) > 2e-3
    assert result.log_likelihoods[-1] == max(finals)
    assert mixture_eval.average_log_likelihood(data.train, result.params) == pytest.approx(max(finals), abs=1e-12)
    average = mixture_eval.average_log_likelihood(data.train, result.params)
    assert average == pytest.approx(_hand_log_likelihood(data.train, result.params).mean(), rel=1e-12)
    num_parameters = 3 + 4 * 2 + 4 * 3  # weights, locations, full 2x2 covariances
    assert mixture_eval.bic(data.train, result.params) == pytest.approx(-2 * 400 * average + num_parameters * math.log(400))
    # ARI is invariant to relabelling; the Hungarian match undoes a permutation exactly.
    permutation = torch.tensor([2, 0, 3, 1])
    labels = data.train_labels
    assert mixture_eval.adjusted_rand_index(labels, permutation[labels]) == pytest.approx(1.0)
    shuffled = gmm.MixtureParams(*(t[permutation] for t in data.true_params))
    assert mixture_eval.match_components(data.true_params, shuffled).loc_errors == pytest.approx([0.0] * 4)


def test_bad_options_raise_config_errors():
    data = torch.randn(10, 2, dtype=torch.float64)
    with pytest.raises(ConfigError, match="covariance"):
        mixture_em.fit_em(data, 2, "spherical")
    with pytest.raises(ConfigError, match="components"):
        mixture_em.fit_em(data, 11)
    with pytest.raises(ConfigError, match="diag"):
        mixture_em.fit_em(data[:, :1], 2, "full")
    with pytest.raises(ConfigError, match="initialization"):
        mixture_em.fit_em(data, 2, init="forgy")
