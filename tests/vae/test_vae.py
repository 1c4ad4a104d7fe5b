"""The amortized VAE: structure, the ELBO against a hand computation, the analytic KL, Predictive."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from pyro.infer import Predictive, Trace_ELBO, TraceMeanField_ELBO

from pyro_vi import ConfigError, VAE

LIKELIHOODS = ["bernoulli", "continuous-bernoulli", "gaussian"]


def tiny_vae(likelihood="bernoulli", x_scale=0.5):
    torch.manual_seed(3)
    return VAE(x_dim=6, z_dim=2, hidden_dims=(5,), likelihood=likelihood, x_scale=x_scale)


def data(num=4):
    return torch.rand(num, 6, generator=torch.Generator().manual_seed(1)).round()


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_guide_samples_exactly_the_model_latent_sites(likelihood):
    vae, x = tiny_vae(likelihood), data()
    model_trace = poutine.trace(vae.model).get_trace(x)
    guide_trace = poutine.trace(vae.guide).get_trace(x)

    def latent(trace):
        return {
            name
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
        }

    assert latent(model_trace) == latent(guide_trace) == {"z"}
    assert model_trace.nodes["x"]["is_observed"]
    assert model_trace.nodes["z"]["value"].shape == (4, 2)
    assert model_trace.nodes["z"]["fn"].event_shape == (2,)


def _hand_elbo(vae, x, z, kl_weight=1.0):
    """log p(x|z) + w (log p(z) - log q(z|x)) with torch.distributions, per datapoint, summed."""
    loc, log_variance = vae.encoder(x)
    log_q = torch.distributions.Normal(loc, torch.exp(0.5 * log_variance)).log_prob(z).sum(-1)
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    decoded = vae.decoder(z)
    if vae.likelihood_name == "bernoulli":
        log_lik = torch.distributions.Bernoulli(logits=decoded).log_prob(x).sum(-1)
    elif vae.likelihood_name == "continuous-bernoulli":
        log_lik = torch.distributions.ContinuousBernoulli(logits=decoded).log_prob(x).sum(-1)
    else:
        log_lik = torch.distributions.Normal(decoded, vae.x_scale).log_prob(x).sum(-1)
    return (log_lik + kl_weight * (log_prior - log_q)).sum()


@pytest.mark.parametrize("kl_weight", [1.0, 0.3])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_loss_is_minus_the_hand_computed_elbo(likelihood, kl_weight):
    # Same seed -> the guide's reparameterized draw inside Trace_ELBO is the z traced here.
    vae, x = tiny_vae(likelihood), data()
    pyro.set_rng_seed(7)
    loss = Trace_ELBO().loss(vae.model, vae.guide, x, kl_weight=kl_weight)
    pyro.set_rng_seed(7)
    z = poutine.trace(vae.guide).get_trace(x, kl_weight=kl_weight).nodes["z"]["value"]
    expected = -_hand_elbo(vae, x, z, kl_weight).detach()
    assert loss == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)


def test_minibatch_plate_scales_the_elbo_to_the_full_data():
    vae, x = tiny_vae(), data()
    pyro.set_rng_seed(7)
    loss_batch = Trace_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(7)
    loss_scaled = Trace_ELBO().loss(vae.model, vae.guide, x, torch.arange(4), 100)
    assert loss_scaled == pytest.approx(loss_batch * 100 / 4, rel=1e-5)


def test_sign_convention_loss_is_minus_elbo_and_elbo_below_zero_for_bernoulli():
    # For a Bernoulli likelihood log p(x) <= 0, hence ELBO <= 0 and loss = -ELBO >= 0.
    vae, x = tiny_vae(), data()
    losses = [Trace_ELBO().loss(vae.model, vae.guide, x) for _ in range(20)]
    assert min(losses) > 0


def test_meanfield_kl_term_is_the_closed_form_gaussian_kl():
    # TraceMeanField_ELBO = -(log p(x|z) - KL(q || p)) with the same reparameterized z.
    vae, x = tiny_vae(), data()
    pyro.set_rng_seed(11)
    loss = TraceMeanField_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(11)
    z = poutine.trace(vae.guide).get_trace(x).nodes["z"]["value"]
    with torch.no_grad():
        loc, log_variance = vae.encoder(x)
    kl = 0.5 * (log_variance.exp() + loc**2 - 1.0 - log_variance).sum()  # KL(N(m, s^2) || N(0, 1))
    log_lik = torch.distributions.Bernoulli(logits=vae.decoder(z)).log_prob(x).sum().detach()
    assert loss == pytest.approx((kl - log_lik).item(), rel=1e-5)


def test_meanfield_matches_trace_elbo_in_expectation():
    # Each call averages 500 vectorized particles; 40 calls give 40 independent estimates each,
    # whose spread gives the Monte Carlo standard error.
    vae, x = tiny_vae(), data()
    num_chunks, particles = 40, 500

    def estimates(elbo_class):
        elbo = elbo_class(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
        return torch.tensor([elbo.loss(vae.model, vae.guide, x) for _ in range(num_chunks)])

    trace, meanfield = estimates(Trace_ELBO), estimates(TraceMeanField_ELBO)
    # Both are unbiased for -ELBO; tolerance: 4 Monte Carlo standard errors of the difference.
    standard_error = math.sqrt(trace.var() / num_chunks + meanfield.var() / num_chunks)
    assert abs(float(trace.mean() - meanfield.mean())) < 4 * standard_error
    # Replacing the sampled KL by the exact one reduces the variance here.
    assert meanfield.var() < trace.var()


def test_learned_gaussian_scale_is_a_positive_pyro_param():
    vae, x = tiny_vae("gaussian", x_scale=None), data()
    Trace_ELBO().loss(vae.model, vae.guide, x)
    assert float(pyro.param("x_scale").detach()) == pytest.approx(1.0)


def test_predictive_draws_latents_and_data():
    vae, x = tiny_vae(), data()
    samples = Predictive(vae.model, guide=vae.guide, num_samples=3)(x)
    assert samples["z"].shape == (3, 4, 2)
    assert samples["x"].shape == (3, 4, 6)
    assert set(samples["x"].unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize(
    "kwargs",
    [dict(z_dim=0), dict(z_dim=-2), dict(hidden_dims=(0,)), dict(likelihood="poisson"), dict(x_scale=0.0)],
    ids=["z_dim=0", "z_dim<0", "hidden=0", "unknown-likelihood", "x_scale=0"],
)
def test_bad_options_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        VAE(x_dim=6, **{"z_dim": 2, **kwargs})
