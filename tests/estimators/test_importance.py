"""Importance-sampling log p(x) and the IWAE objective, checked against the conjugate models.

Exact references: the Normal-Normal evidence (one global latent) and the probabilistic-PCA evidence
per datapoint (one local latent each, the linear-Gaussian VAE).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from pyro_vi.estimators import importance
from pyro_vi import conjugate

DTYPE = torch.float64


def _normal_normal():
    dim = 3
    prior_covariance = torch.full((dim, dim), 0.9, dtype=DTYPE) + 0.1 * torch.eye(dim, dtype=DTYPE)
    model = conjugate.NormalNormal(torch.zeros(dim, dtype=DTYPE), prior_covariance, 4.0 * torch.eye(dim, dtype=DTYPE))
    return model, torch.randn(8, dim, dtype=DTYPE) * 2 + 0.5


def _ppca(num_data: int = 6, pixels: int = 5, z_dim: int = 2):
    weight = torch.randn(pixels, z_dim, dtype=DTYPE)
    model = conjugate.ProbabilisticPCA(weight, torch.randn(pixels, dtype=DTYPE), noise_scale=0.5)
    z = torch.randn(num_data, z_dim, dtype=DTYPE)
    return model, z @ weight.T + model.bias + 0.5 * torch.randn(num_data, pixels, dtype=DTYPE)


def _shifted_local_guide(model: conjugate.ProbabilisticPCA, shift: float):
    """A deliberately poor per-datapoint proposal: the optimal diagonal q, its loc moved by
    ``shift`` of its own standard deviations."""

    def guide(data):
        loc, scale = model.optimal_mean_field(data)
        with pyro.plate("data", data.shape[0]):
            pyro.sample("z", dist.Normal(loc + shift * scale, scale).to_event(1))

    return guide


def test_exact_when_the_proposal_is_the_posterior_global_latent():
    model, data = _normal_normal()
    posterior = model.posterior(data)
    pyro.param("z_loc", posterior.loc)
    pyro.param("z_scale_tril", posterior.scale_tril, constraint=constraints.lower_cholesky)
    for num_samples in (1, 10, 1000):
        estimate = importance.importance_estimate(model.model, model.full_rank_guide, data, num_samples=num_samples, chunk_size=300)
        # Every weight equals p(x), so the estimate is exact up to float64 round-off.
        assert float(estimate.log_marginal) == pytest.approx(float(model.log_evidence(data)), abs=1e-8)
        assert float(estimate.effective_sample_size) == pytest.approx(num_samples, rel=1e-6)


def test_exact_when_the_proposal_is_the_posterior_per_datapoint():
    model, data = _ppca()
    estimate = importance.importance_estimate(model.model, model.posterior_guide, data, num_samples=50, chunk_size=20, plate_name="data")
    assert estimate.log_marginal.shape == (data.shape[0],)
    torch.testing.assert_close(estimate.log_marginal, model.log_evidence(data), atol=1e-8, rtol=0)


def test_per_datapoint_weights_sum_to_the_joint_weights():
    """Same draws (same seed): the whole-data log weight is the sum of the per-datapoint ones."""
    model, data = _ppca()
    guide = _shifted_local_guide(model, 0.3)
    pyro.set_rng_seed(1)
    per_datapoint = importance.log_weights(model.model, guide, data, num_particles=7, plate_name="data")
    pyro.set_rng_seed(1)
    joint = importance.log_weights(model.model, guide, data, num_particles=7)
    assert per_datapoint.shape == (7, data.shape[0]) and joint.shape == (7,)
    torch.testing.assert_close(per_datapoint.sum(-1), joint)


def test_global_latent_outside_the_plate_is_refused_per_datapoint():
    model, data = _normal_normal()
    with pytest.raises(ValueError, match="outside plate 'data'"):
        importance.log_weights(model.model, model.mean_field_guide, data, num_particles=2, plate_name="data")


def test_bound_is_non_decreasing_in_k_and_below_log_evidence():
    """L_1 <= L_10 <= L_100 <= L_1000 <= log p(x) on average over replicates.

    The replicate mean of L_k has standard error sd/sqrt(R); comparisons allow 3 standard errors.
    L_1 has a closed-form expectation here (the ELBO of the shifted Gaussian q) and is checked too.
    """
    model, data = _ppca(num_data=4)
    shift = 1.5
    guide = _shifted_local_guide(model, shift)
    log_evidence = model.log_evidence(data)  # (num_data,)
    num_replicates = 200
    means, standard_errors = {}, {}
    for num_samples in (1, 10, 100, 1000):
        # R independent estimates L_k at once: R * k weights, logsumexp over each block of k.
        weights = importance.log_weights(model.model, guide, data, num_particles=num_replicates * num_samples, plate_name="data")
        replicates = weights.reshape(num_replicates, num_samples, -1).logsumexp(1) - math.log(num_samples)  # (R, num_data)
        means[num_samples] = replicates.mean(0)
        standard_errors[num_samples] = replicates.std(0) / math.sqrt(num_replicates)

    loc, scale = model.optimal_mean_field(data)
    exact_elbo = model.elbo(dist.Normal(loc + shift * scale, scale).to_event(1), data)
    assert torch.all((means[1] - exact_elbo).abs() <= 3 * standard_errors[1])

    ks = sorted(means)
    for small, large in zip(ks, ks[1:]):
        tolerance = 3 * torch.sqrt(standard_errors[small] ** 2 + standard_errors[large] ** 2)
        assert torch.all(means[large] >= means[small] - tolerance), (small, large)
    for k in ks:
        assert torch.all(means[k] <= log_evidence + 3 * standard_errors[k] + 1e-12), k
    # And the gap actually closes: L_1000 is much nearer log p(x) than L_1.
    assert torch.all(log_evidence - means[1000] < 0.2 * (log_evidence - means[1]))


def test_chunking_does_not_change_the_estimate_beyond_monte_carlo_error():
    model, data = _ppca(num_data=3)
    guide = _shifted_local_guide(model, 0.5)
    one_chunk = importance.importance_estimate(model.model, guide, data, num_samples=4000, chunk_size=4000, plate_name="data")
    many_chunks = importance.importance_estimate(model.model, guide, data, num_samples=4000, chunk_size=300, plate_name="data")
    # Independent draws: the two estimates differ by Monte Carlo error only. The delta method gives
    # the standard error of log((1/k) sum_s w_s) as sd(w) / (mean(w) sqrt(k)) = sqrt(1/ESS - 1/k)
    # per datapoint (~0.015 nats here); their difference has sqrt(2) times that. Tolerance: 4 of those.
    assert torch.all(one_chunk.effective_sample_size > 1000)
    standard_error = (1 / one_chunk.effective_sample_size - 1 / 4000).sqrt()
    assert torch.all((one_chunk.log_marginal - many_chunks.log_marginal).abs() < 4 * math.sqrt(2) * standard_error)


def test_renyi_alpha_zero_is_minus_log_evidence_at_the_posterior():
    model, data = _ppca()
    loss = pyro.infer.RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True).loss(model.model, model.posterior_guide, data)
    assert loss == pytest.approx(-float(model.log_evidence(data).sum()), abs=1e-8)


def test_renyi_alpha_zero_is_the_per_datapoint_iwae_bound():
    """RenyiELBO(alpha=0, k) as a training objective estimates sum_n L_k(x_n) (per datapoint, not
    one joint weight over the batch, which would sit near the ELBO): compared with our L_k over
    R = 50 replicates each, within 4 standard errors of the difference of the two means."""
    model, data = _ppca(num_data=20)
    guide = _shifted_local_guide(model, 1.5)
    num_particles, num_replicates = 20, 50
    renyi = torch.tensor([
        -pyro.infer.RenyiELBO(alpha=0, num_particles=num_particles, vectorize_particles=True).loss(model.model, guide, data)
        for _ in range(num_replicates)
    ])
    weights = importance.log_weights(model.model, guide, data, num_particles=num_replicates * num_particles, plate_name="data")
    ours = (weights.reshape(num_replicates, num_particles, -1).logsumexp(1) - math.log(num_particles)).sum(-1)
    standard_error = math.sqrt((renyi.var() + ours.var()) / num_replicates)
    assert float(renyi.mean()) == pytest.approx(float(ours.mean()), abs=4 * standard_error)
    loc, scale = model.optimal_mean_field(data)
    elbo = float(model.elbo(dist.Normal(loc + 1.5 * scale, scale).to_event(1), data).sum())
    assert float(ours.mean()) > elbo + 10  # far above the ELBO: the weights are per datapoint
