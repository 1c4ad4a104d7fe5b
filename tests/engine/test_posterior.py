"""pyro_vi.engine.posterior: draws from a fitted guide with any model's plates, their summary
against closed forms, the convergence test, and the param trace of an auto guide."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import Predictive
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal

from pyro_vi.engine import posterior
from pyro_vi.errors import ConfigError


def hierarchical_logistic(x, group, y):
    """The issue's model: a plate of group intercepts, then ``x @ beta`` with beta an event of 3 outside every plate."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("groups", 4):
        alpha = pyro.sample("alpha", dist.Normal(mu, sigma))
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=alpha[group] + x @ beta), obs=y)


def _logistic_data(n=320):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=generator)
    group = torch.randint(0, 4, (n,), generator=generator)
    y = torch.bernoulli(torch.sigmoid(x @ torch.tensor([1.0, -1.0, 0.5])), generator=generator)
    return x, group, y


def test_draws_keep_each_sites_shape_where_predictive_fails():
    """Predictive reshapes beta to the guide's plate nesting, (1, 3), and x @ beta fails (320x3 and
    1x3); draws from traces of the guide keep (3,)."""
    data = _logistic_data()
    guide = AutoNormal(hierarchical_logistic)
    guide(*data)
    with pytest.raises(RuntimeError, match="320x3 and 1x3"):
        Predictive(hierarchical_logistic, guide=guide, num_samples=5, parallel=False)(*data)
    draws = posterior.draws(hierarchical_logistic, guide, *data, num_samples=7)
    assert {name: tuple(value.shape) for name, value in draws.items()} == {
        "mu": (7,), "sigma": (7,), "alpha": (7, 4), "beta": (7, 3)}
    assert draws.undrawn == {}
    assert bool((draws["sigma"] > 0).all())  # constrained values, as the model sees them


def test_summary_of_a_known_guide_matches_its_closed_form():
    """q(z) = N(loc, scale^2) per element: 4000 draws; tolerances are 5 Monte Carlo standard errors
    (mean: scale/sqrt(n); sd: scale/sqrt(2n); a quantile q_p: sqrt(p(1-p)/n)/pdf(q_p))."""
    loc, scale = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0])

    def model():
        pyro.sample("z", dist.Normal(torch.zeros(2), 10.0).to_event(1))

    def guide():
        pyro.sample("z", dist.Normal(pyro.param("loc", loc), pyro.param("scale", scale, constraint=constraints.positive)).to_event(1))

    n = 4000
    table = posterior.summary(posterior.draws(model, guide, num_samples=n))
    assert set(table) == {"z"} and set(table["z"]) == {"mean", "sd", "q5", "q50", "q95"}
    stats = table["z"]
    assert torch.allclose(stats["mean"], loc.double(), atol=0, rtol=0) is False  # draws, not the loc itself
    assert ((stats["mean"] - loc).abs() < 5 * scale / math.sqrt(n)).all()
    assert ((stats["sd"] - scale).abs() < 5 * scale / math.sqrt(2 * n)).all()
    normal = torch.distributions.Normal(loc.double(), scale.double())
    for key, p in posterior.QUANTILES.items():
        exact = normal.icdf(torch.tensor(p, dtype=torch.float64))
        error = math.sqrt(p * (1 - p) / n) / normal.log_prob(exact).exp()
        assert ((stats[key] - exact).abs() < 5 * error).all(), key


def test_a_model_only_site_is_drawn_by_replaying_the_model():
    """The guide samples mu only; z ~ N(mu, 1) is the model's: Var z = scale^2 + 1 (5 SEs of the
    sample variance, sqrt(2/n) relative, at n = 4000)."""

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        pyro.sample("z", dist.Normal(mu, 1.0))

    def guide():
        pyro.sample("mu", dist.Normal(3.0, 2.0))

    n = 4000
    draws = posterior.draws(model, guide, num_samples=n)
    assert set(draws) == {"mu", "z"} and draws.undrawn == {}
    assert abs(float(draws["z"].mean()) - 3.0) < 5 * math.sqrt(5.0 / n)
    assert abs(float(draws["z"].var()) / 5.0 - 1) < 5 * math.sqrt(2 / n)


def test_a_site_that_cannot_be_drawn_is_listed_not_raised():
    """A model-only site in a subsampled plate (each draw another minibatch) and one behind a model
    that raises on some guide draws are listed with the reason; the guide's sites are still drawn."""

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 100, subsample_size=10):
            pyro.sample("local", dist.Normal(mu, 1.0))

    draws = posterior.draws(model, lambda: pyro.sample("mu", dist.Normal(0.0, 1.0)), num_samples=20)
    assert set(draws) == {"mu"} and "subsampled plate 'data'" in draws.undrawn["local"]

    def fragile():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        if mu < -1:
            raise ValueError("mu below -1")
        pyro.sample("z", dist.Normal(mu, 1.0))

    draws = posterior.draws(fragile, lambda: pyro.sample("mu", dist.Normal(0.0, 1.0)), num_samples=50)
    assert set(draws) == {"mu"} and draws["mu"].shape == (50,)
    assert "ValueError: mu below -1" in draws.undrawn["z"]
    with pytest.raises(ConfigError, match="num_samples"):
        posterior.draws(model, model, num_samples=0)


@pytest.mark.parametrize("losses, expected", [
    ("noise", True),          # stationary: the line through the batch means is flat within its noise
    ("drift", False),         # the ELBO still rises by 3 over the last tenth, noise sd 1 per step
    ("constant", True),       # a flat run (no noise at all)
    ("short", None),          # 15 steps: too few to tell
], ids=["noise", "drift", "constant", "short"])
def test_convergence(losses, expected):
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(2000, generator=generator)
    values = {
        "noise": 10 + noise,
        "drift": 10 + noise - torch.linspace(0, 30, 2000),  # loss falls by 3 over the last 200 steps
        "constant": torch.full((2000,), 7.0),
        "short": noise[:15],
    }[losses].tolist()
    result = posterior.convergence(values)
    assert result["converged"] is expected, result["note"]
    if expected is not None:
        assert result["window"] == 200
    if losses == "drift":
        assert abs(result["elbo_change"] - 2.7) < 0.5 and "still rises" in result["note"]  # 9 batches apart of the 10


def test_the_trace_of_an_auto_continuous_guide_is_each_sites_loc_and_scale():
    data = _logistic_data(40)
    guide = AutoDiagonalNormal(hierarchical_logistic)
    guide(*data)
    trace = posterior.ParamTrace(guide, max_elements=8)
    with torch.no_grad():
        pyro.get_param_store()["AutoDiagonalNormal.loc"].copy_(torch.arange(9.0))  # unconstrained, in site order
    trace.record(5)
    assert trace.steps == [5]
    assert set(trace.values) == {f"{site} {what}" for site in ("mu", "sigma", "alpha", "beta") for what in ("loc", "scale")}
    assert trace.values["mu loc"] == [[0.0]] and trace.values["sigma loc"] == [[1.0]]
    assert trace.values["alpha loc"] == [[2.0, 3.0, 4.0, 5.0]] and trace.values["beta loc"] == [[6.0, 7.0, 8.0]]
    scale = pyro.param("AutoDiagonalNormal.scale").detach()
    assert trace.values["beta scale"] == [scale[6:9].double().tolist()]
    restored = posterior.ParamTrace(guide)
    restored.load(trace.state())
    assert restored.values == trace.values and restored.steps == trace.steps


def test_fitted_draws_use_the_results_params_whatever_the_store_holds_now():
    """A FitResult's draws come from its own params: after another run moved the store's values
    (and after the store was cleared), the draws are those of the result's params; the store is
    left as it was. AutoDiagonalNormal: its loc is a PyroModule's nn.Parameter (changed in place)."""
    from types import SimpleNamespace

    data = _logistic_data(40)
    guide = AutoDiagonalNormal(hierarchical_logistic)
    guide(*data)
    store = pyro.get_param_store()
    with torch.no_grad():
        store["AutoDiagonalNormal.loc"].copy_(torch.arange(9.0))
        store.get_param("AutoDiagonalNormal.scale").unconstrained().fill_(-20.0)  # softplus: scale ~ 2e-9
    params = {name: value.detach().clone() for name, value in store.items()}
    result = SimpleNamespace(model=hierarchical_logistic, guide=guide, args=data, kwargs={}, params=params, steps=10)
    with torch.no_grad():
        store["AutoDiagonalNormal.loc"].fill_(-5.0)  # "another run"
    table = posterior.fitted_summary(result, num_samples=5)
    assert torch.allclose(table["beta"]["mean"], torch.tensor([6.0, 7.0, 8.0], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(table["alpha"]["mean"], torch.tensor([2.0, 3.0, 4.0, 5.0], dtype=torch.float64), atol=1e-6)
    assert bool((store["AutoDiagonalNormal.loc"] == -5.0).all())  # put back
    pyro.clear_param_store()
    draws = posterior.fitted_draws(result, num_samples=3)
    assert torch.allclose(draws["beta"], torch.tensor([6.0, 7.0, 8.0]).expand(3, 3), atol=1e-5)
    assert "AutoDiagonalNormal.loc" not in pyro.get_param_store()  # created for the draws, removed after
    with pytest.raises(ConfigError, match="does not hold its model"):
        posterior.fitted_draws(SimpleNamespace(model=None, guide=None, params={}, steps=0))


def test_a_fit_result_gives_draws_summary_and_convergence_without_rerunning():
    """pyro_vi.fit's result on the issue's model with AutoNormal: draws at every site's own shape,
    the summary's shapes, the convergence dict; a later run that moves the store does not move them."""
    import pyro_vi

    data = _logistic_data(80)
    guide = AutoNormal(hierarchical_logistic)
    result = pyro_vi.fit(hierarchical_logistic, guide, *data, num_steps=30, optim=pyro.optim.Adam({"lr": 0.05}), seed=0,
                         progress=False)
    assert result.model is hierarchical_logistic and result.guide is guide and len(result.args) == 3
    assert "losses=[30 values]" in repr(result) and "tensor" not in repr(result)
    pyro.set_rng_seed(1)
    first = result.summary(num_samples=50)
    assert {name: tuple(stats["mean"].shape) for name, stats in first.items()} == {
        "mu": (), "sigma": (), "alpha": (4,), "beta": (3,)}
    with torch.no_grad():
        pyro.get_param_store()["AutoNormal.locs.beta"].add_(100.0)  # another run moved the store
    pyro.set_rng_seed(1)
    again = result.summary(num_samples=50)
    assert all(torch.allclose(again[name][key], first[name][key], atol=1e-5) for name in first for key in first[name])
    assert set(result.draws(3)) == set(first) and result.draws(3).undrawn == {}
    assert result.convergence()["window"] == 20 and "note" in result.convergence()
