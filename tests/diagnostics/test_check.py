"""pyro_vi.check: k-hat against a known Pareto shape, the bounds against a conjugate model's exact
log evidence and ELBO, q's summaries against the exact posterior, and what it refuses.

Tolerances are Monte Carlo standard errors times a stated factor (the draws are seeded).
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import autoguide

import pyro_vi
from pyro_vi import conjugate
from pyro_vi.errors import ConfigError

DTYPE = torch.float64


def _standard_normal():
    pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=DTYPE), 1.0))


@pytest.mark.parametrize("scale", [0.5, 0.8])
def test_khat_matches_the_pareto_shape_of_normal_ratios(scale):
    """p = N(0, 1) under q = N(0, s^2): the ratios' tail has shape k = 1 - s^2 (../shared/notes/psis-arviz.md).

    One fit of 20,000 draws has sd about 0.07 (0.75) / 0.05 (0.36) there (the note's 5 repetitions);
    the mean of 4 fits has sd <= 0.04, so 0.12 is 3 sd.
    """

    def guide():
        pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=DTYPE), scale))

    khats = [pyro_vi.check(_standard_normal, guide, num_samples=20_000, seed=seed).khat for seed in range(4)]
    assert abs(np.mean(khats) - (1 - scale**2)) < 0.12, khats
    assert pyro_vi.diagnostics.verdict(np.mean(khats)) == ("unreliable" if scale == 0.5 else "good")


def _correlated_normal():
    dim = 3
    prior_covariance = torch.full((dim, dim), 0.9, dtype=DTYPE) + 0.1 * torch.eye(dim, dtype=DTYPE)
    model = conjugate.NormalNormal(torch.zeros(dim, dtype=DTYPE), prior_covariance, 4.0 * torch.eye(dim, dtype=DTYPE))
    data = torch.randn(8, dim, generator=torch.Generator().manual_seed(1), dtype=DTYPE) + 1.0
    return model, data


def test_elbo_and_iw_bound_against_the_exact_evidence_and_elbo():
    """The best diagonal q of a correlated Gaussian posterior: mean(log w) is its exact ELBO, and the
    IW bound lies between the ELBO and log p(x), each within 4 Monte Carlo standard errors."""
    model, data = _correlated_normal()
    loc, scale = model.optimal_mean_field(data)
    pyro.param("z_loc", loc.clone())  # a copy: the param store makes its tensor require grad
    pyro.param("z_scale", scale.clone(), constraint=constraints.positive)
    result = pyro_vi.check(model.model, model.mean_field_guide, data, num_samples=4000, seed=0)
    exact_elbo = float(model.elbo(dist.Normal(loc, scale).to_event(1), data))
    log_evidence = float(model.log_evidence(data))
    assert abs(result.elbo - exact_elbo) < 4 * result.elbo_standard_error
    assert log_evidence - exact_elbo > 10 * result.elbo_standard_error  # the gap is visible at this sample size
    assert exact_elbo - 4 * result.elbo_standard_error < result.iw_elbo < log_evidence + 4 * result.iw_elbo_standard_error
    assert result.vectorized
    assert 0 < result.effective_sample_size <= 4000


def test_exact_posterior_as_guide_gives_constant_weights_and_the_posterior_moments():
    """q = the posterior: every log weight is log p(x) (so both bounds are, to rounding), k-hat is 0,
    and q's means and sds are the posterior's within 4 standard errors (sd / sqrt(S), sd sqrt(2/S) relative)."""
    model, data = _correlated_normal()
    posterior = model.posterior(data)
    pyro.param("z_loc", posterior.loc.clone())
    pyro.param("z_scale_tril", posterior.scale_tril, constraint=constraints.lower_cholesky)
    num_samples = 4000
    reference = posterior.sample((10_000,))
    result = pyro_vi.check(model.model, model.full_rank_guide, data, num_samples=num_samples, seed=0,
                           reference={f"z[{i + 1}]": reference[:, i].numpy() for i in range(3)})
    log_evidence = float(model.log_evidence(data))
    assert result.elbo == pytest.approx(log_evidence, abs=1e-8) and result.iw_elbo == pytest.approx(log_evidence, abs=1e-8)
    assert result.khat == 0.0 and result.verdict == "good"
    sds = posterior.variance.sqrt()
    assert [row.name for row in result.parameters] == ["z[1]", "z[2]", "z[3]"]
    for row, mean, sd in zip(result.parameters, posterior.loc, sds):
        assert abs(row.q_mean - float(mean)) < 4 * float(sd) / math.sqrt(num_samples)
        assert abs(row.q_sd / float(sd) - 1) < 4 * math.sqrt(2 / num_samples)
        assert row.psis_mean == pytest.approx(row.q_mean)  # equal weights
        # vs 10,000 reference draws: errors of both means and sds combined
        assert abs(row.mean_error_sd) < 4 * math.sqrt(1 / num_samples + 1 / 10_000)
        assert abs(row.sd_ratio - 1) < 4 * math.sqrt(1 / (2 * num_samples) + 1 / (2 * 10_000))
    assert set(result.to_dict()) >= {"khat", "elbo", "iw_elbo", "parameters"}
    assert set(result.to_dict()["parameters"][0]) == {"name", "q_mean", "q_sd", "psis_mean", "psis_sd", "ref_mean",
                                                      "ref_sd", "mean_error_sd", "sd_ratio"}


def test_psis_corrects_a_too_narrow_guide():
    """q = N(0, 0.9^2) for p = N(0, 1): q's sd is 0.9, the PSIS-corrected sd is 1 (k-hat ~ 0.2; the
    weighted sd's standard error is about 1/sqrt(2 ESS) ~ 0.013 at ESS ~ 3000, so 0.05 is ~4 of them)."""

    def guide():
        pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=DTYPE), 0.9))

    row = pyro_vi.check(_standard_normal, guide, num_samples=4000, seed=0).parameters[0]
    assert abs(row.q_sd - 0.9) < 0.05 and abs(row.psis_sd - 1.0) < 0.05


def test_autoguides_plates_and_deterministic_sites_vectorized():
    """Eight schools (non-centred): an AutoNormal over a plate, theta as ``pyro.deterministic``; the
    vectorized draws' log weights equal the one-by-one ones (the same seed draws the same values)."""
    y = torch.tensor([28.0, 8, -3, 7, -1, 1, 18, 12])
    sigma = torch.tensor([15.0, 10, 16, 11, 9, 11, 10, 18])

    def model(y, sigma):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("schools", 8):
            theta_trans = pyro.sample("theta_trans", dist.Normal(0.0, 1.0))
            theta = pyro.deterministic("theta", mu + tau * theta_trans, event_dim=0)
            pyro.sample("y", dist.Normal(theta, sigma), obs=y)

    for guide_class in (autoguide.AutoNormal, autoguide.AutoMultivariateNormal):
        guide = guide_class(model)
        result = pyro_vi.check(model, guide, y, sigma, num_samples=200, seed=0)
        assert result.vectorized
        names = [row.name for row in result.parameters]
        assert names[:2] == ["mu", "tau"] and "theta_trans[8]" in names and names[-1] == "theta[8]"
        draws = result.draws
        np.testing.assert_allclose(draws["theta"], draws["mu"][:, None] + draws["tau"][:, None] * draws["theta_trans"], rtol=1e-5, atol=1e-5)
        data = result.to_inference_data()
        assert data.posterior["theta"].shape == (1, 200, 8) and data.sample_stats["log_weight"].shape == (1, 200)


def test_a_model_that_does_not_broadcast_is_drawn_one_by_one():
    """``float(probs)`` breaks under a particle plate: the draws fall back to a loop, and with the exact
    Beta posterior as guide every log weight is still the exact log evidence."""
    beta_bernoulli = conjugate.BetaBernoulli(2.0, 3.0)
    data = torch.tensor([1.0, 0, 1, 1, 0, 1], dtype=DTYPE)

    def model(data):
        probs = pyro.sample("probs", dist.Beta(torch.tensor(2.0, dtype=DTYPE), 3.0))
        pyro.sample("obs", dist.Bernoulli(float(probs)).expand([len(data)]).to_event(1), obs=data)

    posterior = beta_bernoulli.posterior(data)

    def guide(data):
        pyro.sample("probs", dist.Beta(posterior.concentration1, posterior.concentration0))

    result = pyro_vi.check(model, guide, data, num_samples=50, seed=0)
    assert not result.vectorized
    assert result.elbo == pytest.approx(float(beta_bernoulli.log_evidence(data)), abs=1e-6)
    with pytest.raises(ConfigError, match="does not run vectorized"):
        pyro_vi.check(model, guide, data, num_samples=50, vectorize=True)


def test_refusals_are_one_line_naming_the_site():
    model, data = _correlated_normal()
    pyro.param("z_loc", torch.zeros(3, dtype=DTYPE))
    with pytest.raises(ConfigError, match=r"reference parameter 'w\[1\]' is not produced by the model"):
        pyro_vi.check(model.model, model.mean_field_guide, data, num_samples=20, reference={"w[1]": np.zeros(5)})

    def mixture(data):
        weights = torch.tensor([0.5, 0.5], dtype=DTYPE)
        component = pyro.sample("component", dist.Categorical(weights), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(component.to(DTYPE), 1.0), obs=data[0, 0])

    with pytest.raises(ConfigError, match="'component' is enumerated"):
        pyro_vi.check(mixture, lambda data: None, data, num_samples=20)

    def two_latents(data):
        pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=DTYPE), 1.0))
        pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=DTYPE), 1.0))

    def one_latent(data):
        pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=DTYPE), 1.0))

    with pytest.raises(ConfigError, match="latent site 'b' is not sampled by the guide"):
        pyro_vi.check(two_latents, one_latent, data, num_samples=20)


def test_marginals_figure_has_a_panel_per_element(tmp_path):
    model, data = _correlated_normal()
    posterior = model.posterior(data)
    pyro.param("z_loc", posterior.loc.clone())
    pyro.param("z_scale", posterior.variance.sqrt(), constraint=constraints.positive)
    reference = posterior.sample((1000,))
    result = pyro_vi.check(model.model, model.mean_field_guide, data, num_samples=500, seed=0,
                           reference={"z[2]": reference[:, 1].numpy()})
    figure = pyro_vi.plots.check.marginals(result)
    titles = [axis.get_title() for axis in figure.axes if axis.get_visible()]
    assert titles == ["z[2]", "z[1]", "z[3]"]  # those with a reference first
    pyro_vi.plots.check.marginals(result, path=tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 1000
