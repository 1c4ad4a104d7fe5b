"""gradient_variance: the vectorized path agrees with the loop, params are left alone, the
statistics are what they claim, and variance_over_training measures along an SVI run."""

import pyro
import pytest
import torch

from pyro_vi import variance, variance_models
from pyro_vi.errors import ConfigError


def _both_paths(problem, name, num_replicates, **kwargs):
    def measure(vectorize):
        return variance.gradient_variance(
            problem.model, problem.guide, *problem.args, estimator=name, num_replicates=num_replicates,
            vectorize=vectorize, **kwargs,
        )

    return measure(True), measure(False)


@pytest.mark.parametrize("name", ["reparam", "score"])
def test_vectorized_equals_loop_within_monte_carlo_error(name):
    problem = variance_models.make_problem("pyro-test")
    vectorized, looped = _both_paths(problem, name, num_replicates=500)
    assert vectorized.vectorized and not looped.vectorized
    for param in vectorized.mean:
        # R = 500 each: 4 standard errors of the difference of two independent means.
        tolerance = 4 * ((vectorized.variance[param] + looped.variance[param]) / 500).sqrt()
        assert ((vectorized.mean[param] - looped.mean[param]).abs() < tolerance).all()
        # The sample variance's relative sd is sqrt(2 / (R - 1)) = 6.3% for Gaussian gradients
        # (reparam here is linear in the noise): 4 of those; score gradients have heavier tails: 50%.
        ratio = vectorized.variance[param] / looped.variance[param]
        limit = 4 * (2 / 499) ** 0.5 if name == "reparam" else 0.5
        assert ((ratio.log()).abs() < limit).all(), ratio


def test_vectorized_equals_loop_on_a_vae_with_registered_modules():
    problem = variance_models.make_problem("vae")
    vectorized, looped = _both_paths(problem, "reparam", num_replicates=60)
    assert vectorized.vectorized
    z = torch.cat([
        ((vectorized.mean[p] - looped.mean[p]) / ((vectorized.variance[p] + looped.variance[p]) / 60).sqrt().clamp(min=1e-12)).reshape(-1)
        for p in vectorized.mean
    ])
    # R = 60 each: under equal means z is about N(0, 1); |z| > 3 for ~0.3% of elements.
    assert (z.abs() > 3).float().mean() < 0.02
    assert abs(vectorized.total_variance / looped.total_variance - 1) < 0.25  # thousands of elements averaged
    assert any("encoder" in p for p in vectorized.mean) and any("decoder" in p for p in vectorized.mean)


def test_params_and_rng_are_left_alone():
    problem = variance_models.make_problem("vae")
    variance.gradient_variance(problem.model, problem.guide, *problem.args, num_replicates=2)  # registers the decoder
    store = pyro.get_param_store()
    before = {name: value.detach().clone() for name, value in store.named_parameters()}
    rng = torch.get_rng_state()
    variance.gradient_variance(problem.model, problem.guide, *problem.args, num_replicates=10)
    assert set(dict(store.named_parameters())) == set(before)
    for name, value in store.named_parameters():
        assert torch.equal(value.detach(), before[name]) and value.grad is None
    assert torch.equal(torch.get_rng_state(), rng)


def test_statistics_follow_their_definitions():
    problem = variance_models.make_problem("gaussian", dim=3)
    result = variance.gradient_variance(
        problem.model, problem.guide, *problem.args, num_replicates=500, reference=problem.reference()
    )
    assert result.total_variance == pytest.approx(sum(float(v.sum()) for v in result.variance.values()), rel=1e-5)
    ratios = torch.cat([(result.mean[p].abs() / result.variance[p].sqrt()) for p in result.mean])
    assert result.snr == pytest.approx(float(ratios.mean()), rel=1e-4)
    for p in result.mean:
        assert torch.allclose(result.bias_standard_error[p], (result.variance[p] / 500).sqrt())
    assert result.num_replicates == 500 and result.num_particles == 1 and result.estimator == "reparam"


def test_particles_divide_the_variance():
    problem = variance_models.make_problem("gaussian", dim=3)
    one = variance.gradient_variance(problem.model, problem.guide, *problem.args, num_replicates=2000)
    four = variance.gradient_variance(problem.model, problem.guide, *problem.args, num_replicates=2000, num_particles=4)
    # Averaging 4 independent particles divides the variance by 4; R = 2000 gives ~3% relative error each.
    assert four.total_variance / one.total_variance == pytest.approx(0.25, rel=0.15)


def test_bad_arguments_raise_config_error():
    problem = variance_models.make_problem("gaussian")
    with pytest.raises(ConfigError, match="num_replicates"):
        variance.gradient_variance(problem.model, problem.guide, *problem.args, num_replicates=1)
    with pytest.raises(ConfigError, match="num_particles"):
        variance.gradient_variance(problem.model, problem.guide, *problem.args, num_particles=0)
    with pytest.raises(ConfigError, match="reference lacks"):
        variance.gradient_variance(problem.model, problem.guide, *problem.args, num_replicates=2, reference={})


def test_variance_over_training_measures_at_the_chosen_steps():
    problem = variance_models.make_problem("pyro-test")
    run = variance.variance_over_training(
        problem.model, problem.guide, *problem.args, estimators_measured=("reparam", "stl"),
        num_steps=30, measure_at=(0, 30), num_replicates=100, learning_rate=0.1,
    )
    assert run.steps == [0, 30] and len(run.losses) == 30
    assert [len(v) for v in run.results.values()] == [2, 2]
    # The guide moves towards the posterior N(x / 2, 1/2), so the mean gradient shrinks.
    first, last = run.results["reparam"]
    assert last.mean["loc"].abs().sum() < first.mean["loc"].abs().sum()
