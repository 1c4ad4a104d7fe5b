"""For fixed noise, each estimator's surrogate gradient equals the one written by hand (in the style
of Pyro's ``tests/infer/test_gradient.py::test_particle_gradient``).

The cell is ``kl-scale``: z_n ~ N(0, 1) under a KL weight beta = 0.3, x_n ~ N(z_n, 1), a minibatch
of 2 of 4 points (S = N/|B| = 2), q(z_n) = N(m_n, s_n) under the same weight; k = 2 particles with
z_in = m_n + s_n eps_in and eps fixed. With f_in = log N(x_n; z_in, 1) + beta (log N(z_in; 0, 1)
- log N(z_in; m_n, s_n)) (the weight's log inside a particle), the surrogates are:

    reparam       mean_i S sum_n f_in
    stl           the same with q's parameters detached inside log q
    analytic-kl   mean_i S sum_n [log N(x_n; z_in, 1) - beta KL(N(m_n, s_n) || N(0, 1))]
    score         mean_i S sum_n f_in * log N(z_in; m_n, s_n)      (f detached; the score unscaled)
    score-graph   the same (each z_n's downstream cost is datapoint n's)
    score-baseline  mean_i sum_n (S f_in - b_n) * log N(z_in; m_n, s_n), b the frozen running average
    score-naive   mean_i (S sum_n f_in) * sum_n log N(z_in; m_n, s_n)
    rloo          mean_i S sum_n (f_in - f_jn) * log N(z_in; m_n, s_n), j the other particle
    iwae          S sum_n [logsumexp_i f_in - log 2]
    dreg          S sum_n sum_i w_in ((1 - beta) + beta w_in) [f_in with q's parameters detached],
                  w_n = softmax_i f_in (detached)
"""

import math

import pyro
import pytest
import torch

import estimator_cells
from pyro_vi import estimators
from pyro_vi.engine import params as param_store
from pyro_vi.estimators import exact

NOISE = torch.tensor([[0.3, -1.1], [1.4, 0.2]])  # (particles, minibatch)
BETA, S = estimator_cells.KL_WEIGHT, 2.0
BASELINE = torch.tensor([-1.5, 0.7])


def _hand_surrogate(name, loc, log_scale):
    batch = torch.tensor([0, 2])
    m, s, x = loc[batch], log_scale[batch].exp(), estimator_cells.DATA[batch]
    normal = torch.distributions.Normal
    z = m + s * NOISE  # (k, |B|), pathwise
    z_fixed = z.detach()

    def f(z, m=m, s=s):
        return normal(z, 1.0).log_prob(x) + BETA * (normal(0.0, 1.0).log_prob(z) - normal(m, s).log_prob(z))

    score = normal(m, s).log_prob(z_fixed)  # unscaled, d/dphi at the fixed draw
    if name == "reparam":
        return (S * f(z)).sum(-1).mean()
    if name == "stl":
        return (S * f(z, m.detach(), s.detach())).sum(-1).mean()
    if name == "analytic-kl":
        kl = torch.distributions.kl_divergence(normal(m, s), normal(0.0, 1.0))
        return (S * (normal(z, 1.0).log_prob(x) - BETA * kl)).sum(-1).mean()
    cost = (S * f(z_fixed)).detach()  # (k, |B|)
    if name in ("score", "score-graph"):
        return (cost * score).sum(-1).mean()
    if name == "score-baseline":
        return ((cost - BASELINE) * score).sum(-1).mean()
    if name == "score-naive":
        return (cost.sum(-1) * score.sum(-1)).mean()
    if name == "rloo":
        return ((cost - cost.flip(0)) * score).sum(-1).mean()
    log_w = f(z)
    if name == "iwae":
        return S * (torch.logsumexp(log_w, 0) - math.log(2)).sum()
    if name == "dreg":
        w = torch.softmax(log_w.detach(), 0)
        return S * (w * ((1 - BETA) + BETA * w) * f(z, m.detach(), s.detach())).sum()
    raise ValueError(name)


NAMES = ["reparam", "stl", "analytic-kl", "score", "score-graph", "score-baseline", "score-naive", "rloo", "iwae", "dreg"]


@pytest.mark.parametrize("name", NAMES + ["iwae-vectorized", "dreg-vectorized"])
def test_particle_gradient(name, monkeypatch):
    cell = estimator_cells.make_cell("kl-scale")
    vectorized = name.endswith("-vectorized")
    name = name.removesuffix("-vectorized")
    options = {"vectorize_particles": True} if vectorized else {}
    estimator = estimators.get_estimator(name, num_particles=2, **options)
    estimator.check(cell.model, cell.guide, *cell.args)
    estimator._checked.add((id(cell.model), id(cell.guide)))
    store = pyro.get_param_store()
    if name == "score-baseline":  # measured with its running average frozen at b
        store["__baseline_avg_downstream_cost_z"] = BASELINE.clone()
        estimator.frozen = True
    draws = iter([NOISE] if vectorized else NOISE)  # one (|B|,) draw per particle, or all at once
    # Every Gaussian draw, rsample or sample (score estimators), takes the next fixed noise.
    monkeypatch.setattr(torch.distributions.Normal, "sample", lambda self, sample_shape=torch.Size(): self.rsample(sample_shape).detach())
    params = [param_store.unconstrained("loc"), param_store.unconstrained("scale")]  # unconstrained: loc, log scale
    with exact.noise_from(lambda shape, **_: next(draws).reshape(shape)):
        loss = estimator.differentiable_loss(cell.model, cell.guide, *cell.args)
    actual = torch.autograd.grad(loss, params)
    loc, log_scale = (p.detach().clone().requires_grad_(True) for p in params)
    expected = torch.autograd.grad(-_hand_surrogate(name, loc, log_scale), [loc, log_scale])
    for a, e, param in zip(actual, expected, ("loc", "scale")):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6, msg=param)
    assert expected[0].abs().sum() > 0.1  # a gradient, not a vacuous zero
