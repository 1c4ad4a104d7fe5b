"""Gradient estimators: unbiasedness against closed-form gradients, zero-variance cases, sign
convention, applicability errors, and use inside SVI.

Tolerances come from the Monte Carlo standard error (sd / sqrt(R)) of the mean gradient over R
replicates: each element's |mean - exact| must stay below 4 standard errors.
"""

import math

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro import poutine

from pyro_vi import estimators
from pyro_vi.engine import params as param_store
from pyro_vi.estimators import variance
from pyro_vi.estimators import problems as variance_models
from pyro_vi.errors import ConfigError

# (model, estimator, num_particles) for every unbiased estimator that applies to the model.
CONTINUOUS = ["reparam", "score", "score-naive", "score-graph", "score-baseline", "score-nn-baseline", "stl", "analytic-kl"]
DISCRETE = ["score", "score-naive", "score-graph", "score-baseline", "score-nn-baseline"]
UNBIASED_CASES = (
    [(model, name, 1) for model in ("gaussian", "normal-normal", "pyro-test") for name in CONTINUOUS]
    + [(model, "rloo", 4) for model in ("gaussian", "normal-normal", "pyro-test", "bernoulli", "gmm")]
    + [(model, name, 1) for model in ("bernoulli", "gmm") for name in DISCRETE]
    + [("gaussian", "iwae", 1), ("gaussian", "dreg", 1)]  # with one particle the bound is the ELBO
)


def _measure(problem, name, num_particles, num_replicates, **kwargs):
    return variance.gradient_variance(
        problem.model, problem.guide, *problem.args, estimator=name, num_particles=num_particles,
        num_replicates=num_replicates, reference=problem.reference(), **kwargs,
    )


@pytest.mark.parametrize("model,name,num_particles", UNBIASED_CASES, ids=lambda v: str(v))
def test_unbiased_against_closed_form(model, name, num_particles):
    problem = variance_models.make_problem(model)
    result = _measure(problem, name, num_particles, num_replicates=1000)
    for param in result.mean:
        # R = 1000 replicates; 4 Monte Carlo standard errors per element.
        z = result.bias[param].abs() / result.bias_standard_error[param].clamp(min=1e-12)
        assert (z < 4).all(), (param, result.mean[param], result.bias[param], result.bias_standard_error[param])


def test_pyro_test_model_gradient_is_analytic():
    """Pyro's test_gradient model at loc = 0, scale = 1: d(-ELBO)/dloc = [0.5, -2.0], d/dscale = 2."""
    problem = variance_models.make_problem("pyro-test")
    exact = problem.reference()
    assert torch.allclose(exact["loc"], torch.tensor([0.5, -2.0]))
    assert torch.allclose(exact["scale"], torch.tensor([2.0]))  # d/dlog(scale) = scale * d/dscale = 2
    result = _measure(problem, "reparam", 1, num_replicates=4000)
    for param in exact:  # R = 4000, 4 standard errors
        assert ((result.mean[param] - exact[param]).abs() < 4 * result.bias_standard_error[param]).all()


@pytest.mark.parametrize("model", ["normal-normal", "gaussian"])
def test_stl_has_zero_variance_at_the_exact_posterior(model):
    problem = variance_models.make_problem(model, at_posterior=True)
    stl = _measure(problem, "stl", 1, num_replicates=200)
    reparam = _measure(problem, "reparam", 1, num_replicates=200)
    # The pathwise term vanishes at q = p(z | x) up to float32 rounding; reparam keeps the score term.
    assert stl.total_variance < 1e-8
    assert reparam.total_variance > 1e-2
    for param in stl.mean:
        assert torch.allclose(stl.mean[param], torch.zeros_like(stl.mean[param]), atol=1e-4)


def test_enum_is_exact_with_zero_variance():
    problem = variance_models.make_problem("bernoulli")
    result = _measure(problem, "enum", 1, num_replicates=3)  # exact, so 3 replicates suffice
    assert result.total_variance == 0.0
    assert torch.allclose(result.mean["logit"], problem.reference()["logit"], atol=1e-6)
    exact_loss = 3 * torch.log(torch.tensor(2.0)) + sum((0.5 * (1 - p) ** 2 + 0.5 * p**2 - torch.log(torch.tensor(2.0))) for p in variance_models.BERNOULLI_TARGETS)
    loss = estimators.get_estimator("enum").loss(problem.model, problem.guide, *problem.args)
    assert abs(loss - float(exact_loss)) < 1e-5  # value: exact -ELBO at logit = 0


def test_iwae_with_one_particle_is_reparam_and_dreg_matches_iwae():
    problem = variance_models.make_problem("gaussian")
    reparam = _measure(problem, "reparam", 1, num_replicates=500)
    iwae_one = _measure(problem, "iwae", 1, num_replicates=500)
    for param in reparam.mean:  # same seed, same noise, same surrogate gradient
        assert torch.allclose(reparam.mean[param], iwae_one.mean[param], atol=1e-5)
    iwae = _measure(problem, "iwae", 8, num_replicates=2000)
    dreg = _measure(problem, "dreg", 8, num_replicates=2000)
    for param in iwae.mean:  # both unbiased for the k = 8 bound: 4 standard errors of the difference
        tolerance = 4 * (iwae.variance[param] / 2000 + dreg.variance[param] / 2000).sqrt()
        assert ((iwae.mean[param] - dreg.mean[param]).abs() < tolerance).all()
    assert dreg.total_variance < iwae.total_variance


@pytest.mark.parametrize("name", ["iwae", "dreg"])
@pytest.mark.parametrize("num_particles", [2, 8])
def test_importance_weighted_bound_at_the_exact_posterior(name, num_particles):
    """At q = p(z | x) every weight is p(x): the bound is log p(x) for every k and its gradient 0."""
    problem = variance_models.make_problem("normal-normal", at_posterior=True)
    log_evidence = float(variance_models.normal_normal_log_evidence(problem.args[0]))
    loss = estimators.get_estimator(name, num_particles=num_particles).loss(problem.model, problem.guide, *problem.args)
    assert abs(loss + log_evidence) < 1e-3  # float32 log-densities of 20 points, ~1e-5 relative
    result = variance.gradient_variance(
        problem.model, problem.guide, *problem.args, estimator=name, num_particles=num_particles, num_replicates=1000
    )
    for param in result.mean:
        if name == "dreg":
            # d log w / dz = 0 at the posterior: every replicate is 0 up to float32 rounding.
            assert result.variance[param] < 1e-8
            assert result.mean[param].abs() < 1e-4
        else:
            # iwae keeps the score term, whose mean is 0: R = 1000, 4 standard errors.
            assert result.variance[param] > 1e-3
            assert result.mean[param].abs() < 4 * (result.variance[param] / 1000).sqrt()


@pytest.mark.parametrize("num_particles", [2, 3])
def test_iwae_and_dreg_are_unbiased_for_the_k_particle_bound(num_particles):
    """pyro-test away from the posterior: both means equal the quadrature gradient of the bound."""
    problem = variance_models.make_problem("pyro-test")
    exact = variance_models.pyro_test_iwae_gradient(num_particles)
    # The bound's gradient shrinks with k (towards log p(x)'s): not the ELBO's [0.5, -2.0], [2.0].
    assert not torch.allclose(exact["loc"], problem.reference()["loc"], atol=0.1)
    measured = {}
    for name in ("iwae", "dreg"):
        measured[name] = variance.gradient_variance(
            problem.model, problem.guide, *problem.args, estimator=name, num_particles=num_particles,
            num_replicates=2000, reference=exact,
        )
        for param in exact:  # R = 2000 replicates, 4 standard errors (quadrature error ~1e-4)
            assert (measured[name].bias[param].abs() < 4 * measured[name].bias_standard_error[param]).all(), (name, param)
    iwae, dreg = measured["iwae"], measured["dreg"]
    for param in exact:  # and with each other: 4 standard errors of the difference
        tolerance = 4 * ((iwae.variance[param] + dreg.variance[param]) / 2000).sqrt()
        assert ((iwae.mean[param] - dreg.mean[param]).abs() < tolerance).all()
    assert dreg.total_variance < iwae.total_variance


def test_quadrature_of_the_bound_at_one_particle_is_the_elbo_gradient():
    problem = variance_models.make_problem("pyro-test")
    exact = variance_models.pyro_test_iwae_gradient(1)
    for param, value in problem.reference().items():
        assert torch.allclose(exact[param], value, atol=1e-5)


def test_enum_is_unbiased_on_the_mixture_and_beats_score_on_the_assignments():
    problem = variance_models.make_problem("gmm")
    enum = _measure(problem, "enum", 1, num_replicates=60)
    for param in enum.mean:  # R = 60 replicates (the loop: enum does not vmap), 4 standard errors
        assert (enum.bias[param].abs() < 4 * enum.bias_standard_error[param]).all(), param
    score = _measure(problem, "score", 1, num_replicates=60)
    # The assignments are summed out exactly; only the sampled locs leave variance in their gradient.
    ratio = enum.variance["assignment_logits"].sum() / score.variance["assignment_logits"].sum()
    assert ratio < 0.1, ratio


def test_enum_has_zero_variance_on_the_mixture_with_fixed_locs():
    """With the component locations fixed, enum sums out every latent: exact, zero variance."""
    problem = variance_models.make_problem("gmm")
    (data,) = problem.args
    locs = torch.tensor([-1.5, 2.5])
    model = poutine.condition(problem.model, data={"locs": locs})
    guide = poutine.block(problem.guide, hide=["locs"])
    result = variance.gradient_variance(model, guide, data, estimator="enum", num_replicates=3)  # exact: 3 suffice
    logits = param_store.unconstrained("assignment_logits").detach().clone().requires_grad_(True)
    log_q = torch.log_softmax(logits, -1)  # (num_data, num_components)
    log_likelihood = dist.Normal(locs, 1.0).log_prob(data[:, None])
    negative_elbo = -(log_q.exp() * (log_likelihood - math.log(2) - log_q)).sum()  # + a constant log p(locs)
    (exact,) = torch.autograd.grad(negative_elbo, logits)
    assert result.total_variance == 0.0
    assert torch.allclose(result.mean["assignment_logits"], exact, atol=1e-5)
    assert exact.abs().max() > 0.1  # not a point where the gradient vanishes anyway


def test_score_baseline_is_measured_with_a_warmed_up_baseline():
    """A fresh score-baseline is not score-graph with baseline 0: its running average is warmed up."""
    for model in ("bernoulli", "pyro-test"):
        problem = variance_models.make_problem(model)
        graph = _measure(problem, "score-graph", 1, num_replicates=1000)
        baseline = _measure(problem, "score-baseline", 1, num_replicates=1000)
        assert baseline.baseline_warmup == variance.BASELINE_WARMUP and graph.baseline_warmup == 0
        for param in baseline.mean:  # unbiased with the (nonzero) baseline: R = 1000, 4 standard errors
            assert (baseline.bias[param].abs() < 4 * baseline.bias_standard_error[param]).all(), (model, param)
        # The baseline removes the cost's mean from the score term: measured 1000x lower on
        # bernoulli, 2x on pyro-test; the total variance's sampling error at R = 1000 is ~10%.
        assert baseline.total_variance < 0.75 * graph.total_variance, model
        assert "__baseline_avg_downstream_cost_" + ("x" if model == "bernoulli" else "z") not in pyro.get_param_store()


def test_baseline_warmup_moves_only_the_running_average():
    problem = variance_models.make_problem("bernoulli")
    estimator = estimators.get_estimator("score-baseline")
    store = pyro.get_param_store()
    logit = store["logit"].detach().clone()
    assert estimator.warm_up(problem.model, problem.guide, problem.args, {}) == variance.BASELINE_WARMUP
    average = store["__baseline_avg_downstream_cost_x"].detach()
    # Pyro's downstream "cost" of x_i is log p - log q = -(x_i - p_i)^2 at logit 0 (the log 1/2's
    # cancel), mean -(1 - 2 p_i + 2 p_i^2) / 2 ~ -0.25; the average of 50 draws is within 0.1 of it.
    assert (average + 0.25).abs().max() < 0.1 and torch.equal(store["logit"].detach(), logit)
    # A baseline already in the store (e.g. trained by SVI) is measured as it stands.
    assert estimator.warm_up(problem.model, problem.guide, problem.args, {}) == 0
    with pytest.raises(ConfigError, match="score-baseline only"):
        variance.gradient_variance(problem.model, problem.guide, *problem.args, estimator="score", num_replicates=2, baseline_warmup=5)


def test_gumbel_refuses_a_plain_categorical_and_says_what_to_do():
    problem = variance_models.make_problem("gmm")
    with pytest.raises(ConfigError, match="OneHotCategorical in model and guide"):
        estimators.get_estimator("gumbel").check(problem.model, problem.guide, *problem.args)


def test_gumbel_loss_is_the_relaxed_objective_not_the_elbo():
    problem = variance_models.make_problem("bernoulli")
    exact = 3 * math.log(2) + sum(0.5 * (1 - p) ** 2 + 0.5 * p**2 - math.log(2) for p in variance_models.BERNOULLI_TARGETS)
    gumbel = estimators.get_estimator("gumbel", num_particles=1)
    with pyro.validation_enabled(False):  # fast; the relaxed values are not in the discrete support
        values = torch.tensor([gumbel.loss(problem.model, problem.guide, *problem.args) for _ in range(100)])
    # 100 draws: the relaxed loss's mean (0.41) sits ~24 standard errors from the exact -ELBO (0.76).
    assert (values.mean() - exact).abs() > 4 * values.std() / 10


def test_sign_convention_gradient_of_loss_points_uphill():
    """mean is d(-ELBO)/dparam: a small step against it lowers the exact -ELBO."""
    problem = variance_models.make_problem("gaussian")
    result = _measure(problem, "reparam", 1, num_replicates=1000)
    exact = problem.reference()
    for param in result.mean:
        assert (torch.sign(result.mean[param]) == torch.sign(exact[param])).float().mean() > 0.8
    # Pyro's own Trace_ELBO puts the same quantity in param.grad.
    pyro.set_rng_seed(0)
    unconstrained = {name: param_store.unconstrained(name) for name in param_store.names()}
    total = {name: torch.zeros_like(value) for name, value in unconstrained.items()}
    for _ in range(200):
        for value in unconstrained.values():
            value.grad = None
        pyro.infer.Trace_ELBO().loss_and_grads(problem.model, problem.guide, *problem.args)
        for name, value in unconstrained.items():
            total[name] += value.grad
    for name in total:  # 200 draws, 5 standard errors (sd from the 1000-replicate measurement)
        assert ((total[name] / 200 - exact[name]).abs() < 5 * (result.variance[name] / 200).sqrt()).all()


@pytest.mark.parametrize(
    "model,name,message",
    [
        ("bernoulli", "reparam", "discrete"),
        ("gmm", "stl", "discrete"),
        ("gaussian", "enum", "only continuous"),
        ("gaussian", "gumbel", "Bernoulli"),
    ],
)
def test_estimator_that_does_not_apply_raises_config_error(model, name, message):
    problem = variance_models.make_problem(model)
    with pytest.raises(ConfigError, match=message):
        estimators.get_estimator(name).differentiable_loss(problem.model, problem.guide, *problem.args)


def test_bad_options_raise_config_error():
    with pytest.raises(ConfigError, match="unknown estimator"):
        estimators.get_estimator("reinforce")
    with pytest.raises(ConfigError, match="positive integer"):
        estimators.get_estimator("reparam", num_particles=0)
    with pytest.raises(ConfigError, match="at least 2"):
        estimators.get_estimator("rloo", num_particles=1)


CLASSES = {
    "reparam": "Pathwise", "stl": "StickingTheLanding", "analytic-kl": "AnalyticKL", "gumbel": "Relaxed",
    "score": "ScoreFunction", "score-naive": "NaiveScore", "rloo": "LeaveOneOut", "score-graph": "GraphScore",
    "score-baseline": "AverageBaseline", "score-nn-baseline": "NetworkBaseline", "enum": "Enumeration",
    "iwae": "ImportanceWeighted", "dreg": "DoublyReparameterized",
}


def test_every_name_is_one_class():
    """Each name is one class (``name=`` on the class statement registers it), built by
    get_estimator or by calling the class; a name twice or outside ESTIMATORS is refused; the base
    class builds nothing by itself."""
    assert set(CLASSES) == set(estimators.ESTIMATORS)
    for name, class_name in CLASSES.items():
        num_particles = 2 if name == "rloo" else 1
        built = estimators.get_estimator(name, num_particles=num_particles)
        cls = getattr(estimators, class_name)
        assert type(built) is cls and built.name == name == cls.name
        assert type(cls(num_particles=num_particles)) is cls
    assert len(set(CLASSES.values())) == len(CLASSES)
    with pytest.raises(TypeError, match="already taken"):
        type("Twice", (estimators.GradientEstimator,), {}, name="reparam")
    with pytest.raises(TypeError, match="not in ESTIMATORS"):
        type("Unknown", (estimators.GradientEstimator,), {}, name="reinforce")
    with pytest.raises(TypeError, match="no estimator name"):
        estimators.GradientEstimator()
    assert type(estimators.get_estimator("reparam")) is estimators.Pathwise  # the refused classes took no name


def test_an_option_of_another_estimator_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="estimator 'reparam' takes no option 'temperature'"):
        estimators.get_estimator("reparam", temperature=0.5)
    assert estimators.get_estimator("gumbel", temperature=0.3).temperature == 0.3
    assert estimators.get_estimator("score-baseline", baseline_beta=0.5).baseline_beta == 0.5


@pytest.mark.parametrize(
    "name", ["score-baseline", pytest.param("score-nn-baseline", marks=pytest.mark.slow), pytest.param("rloo", marks=pytest.mark.slow)]
)
def test_trains_in_svi(name):
    """Each estimator is a Pyro ELBO object: SVI moves the Bernoulli toy's logit towards the optimum."""
    problem = variance_models.make_problem("bernoulli")
    estimator = estimators.get_estimator(name, num_particles=4 if name == "rloo" else 1)
    initial = problem.reference()["logit"]  # d(-ELBO)/dlogit at logit = 0: 0.25 * sum(1 - 2p) = -0.045
    assert torch.allclose(initial, torch.tensor(-0.045))
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.05}), loss=estimator)
    for _ in range(100):
        svi.step(*problem.args)
    # The optimum has logit* > 0, where the exact gradient is 0.
    assert pyro.param("logit").detach() > 0
    assert problem.reference()["logit"].abs() < initial.abs() / 2


def test_score_baseline_is_not_moved_by_measurement():
    problem = variance_models.make_problem("bernoulli")
    estimator = estimators.get_estimator("score-baseline")
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), loss=estimator)
    for _ in range(20):
        svi.step(*problem.args)
    store = pyro.get_param_store()
    before = {k: v.detach().clone() for k, v in store.items()}
    variance.gradient_variance(problem.model, problem.guide, *problem.args, estimator=estimator, num_replicates=50)
    after = dict(store.items())
    assert set(before) == set(after)
    for key in before:
        assert torch.equal(before[key], after[key].detach())
