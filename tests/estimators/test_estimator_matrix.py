"""Every estimator on every cell of ``estimator_cells``: the mean gradient equals the exact one, or
``check()`` refuses in one line saying what to use instead.

Tolerance from the Monte Carlo standard error: each element's |mean - exact| must stay below
z * sd / sqrt(R) over R = 1000 replicates, where z is 4 standard errors with a Bonferroni correction
over every compared element of the matrix (two-sided tail 2 (1 - Phi(4)) = 6.3e-5 shared out:
z = Phi^-1(1 - 6.3e-5 / (2 m)), about 5.3 for m ~ 500 elements). Exact estimators (enum, point
masses) have zero variance: they must agree to float32 rounding.
"""

import functools
import math

import pyro
import pytest
import torch

import estimator_cells
from pyro_vi import estimators
from pyro_vi.engine import params as param_store
from pyro_vi.estimators import variance
from pyro_vi.errors import ConfigError

NUM_REPLICATES = 1000
# (estimator, particles): rloo needs two; iwae and dreg at k = 1 estimate the ELBO's gradient on
# every cell, at k = 2 the bound's gradient where a quadrature of it exists (the minibatch cells).
COLUMNS = [(name, 2 if name == "rloo" else 1) for name in estimators.UNBIASED]
BOUND_CELLS = ("minibatch", "kl-scale", "global-local")
PAIRS = [(cell, name, k) for cell in estimator_cells.CELLS for name, k in COLUMNS] + [
    (cell, name, 2) for cell in BOUND_CELLS for name in ("iwae", "dreg", "iwae-vectorized", "dreg-vectorized")
]

_PATHWISE = ("reparam", "stl", "analytic-kl", "iwae", "dreg")
_CONTINUOUS_CELLS = [c for c in estimator_cells.CELLS if c not in ("bernoulli", "categorical", "enumerated")]


def refusal(cell: str, name: str, num_particles: int) -> str | None:
    """The fragment check()'s one-line refusal must contain, or None when the cell is measured."""
    name = name.removesuffix("-vectorized")
    if cell == "enumerated" and name != "enum":
        return "model site 'c' is marked for enumeration and has no guide site"
    if name == "enum" and cell in _CONTINUOUS_CELLS:
        return "needs discrete latent sites"
    if name in _PATHWISE and cell in ("bernoulli", "categorical"):
        return "discrete sites " + ("x" if cell == "bernoulli" else "c")
    if name == "dreg" and cell in ("delta", "auto-delta"):
        return "guide site 'z0' is a point mass"
    if name in ("iwae", "dreg") and num_particles > 1 and cell == "global-local":
        return "site 'z0' lies outside the subsampled plate 'data'"
    return None


@functools.lru_cache(maxsize=1)
def _threshold() -> float:
    """z for 4 standard errors, Bonferroni-corrected over every compared element of the matrix."""
    elements = {}
    for cell in estimator_cells.CELLS:
        estimator_cells.make_cell(cell)
        elements[cell] = sum(value.numel() for value in pyro.get_param_store().values())
    pyro.clear_param_store()
    compared = sum(elements[cell] for cell, name, k in PAIRS if refusal(cell, name, k) is None)
    tail = math.erfc(4 / math.sqrt(2))  # P(|Z| > 4)
    return float(torch.special.ndtri(torch.tensor(1 - tail / (2 * compared), dtype=torch.float64)))


def local_bound_gradient(kl_weight: float, num_particles: int = 2, num_nodes: int = 40) -> dict:
    """d(-bound)/d(loc, log scale) of the k-particle bound of the minibatch cells, by a k-dimensional
    Gauss-Hermite product rule per datapoint: bound = (N/|B|) sum_{n in B} E[log (1/k) sum_i w_n(z_i)],
    log w_n(z) = log N(x_n; z, 1) + beta (log N(z; 0, 1) - log N(z; m_n, s_n))."""
    import numpy

    nodes, weights = numpy.polynomial.hermite_e.hermegauss(num_nodes)
    nodes, weights = torch.tensor(nodes), torch.tensor(weights) / math.sqrt(2 * math.pi)
    noise = torch.stack([g.reshape(-1) for g in torch.meshgrid(*([nodes] * num_particles), indexing="ij")], -1)
    weight = torch.stack(torch.meshgrid(*([weights] * num_particles), indexing="ij"), -1).reshape(-1, num_particles).prod(-1)
    loc = param_store.unconstrained("loc").detach().double().requires_grad_(True)
    log_scale = param_store.unconstrained("scale").detach().double().requires_grad_(True)  # unconstrained: log
    data = estimator_cells.DATA.double()
    batch = torch.tensor([0, 2])
    m, s, x = loc[batch, None, None], log_scale.exp()[batch, None, None], data[batch, None, None]
    z = m + s * noise  # (|B|, nodes^k, k)
    normal = torch.distributions.Normal
    log_w = normal(z, 1.0).log_prob(x) + kl_weight * (normal(0.0, 1.0).log_prob(z) - normal(m, s).log_prob(z))
    bound = 2.0 * ((torch.logsumexp(log_w, -1) - math.log(num_particles)) * weight).sum()
    d_loc, d_log_scale = torch.autograd.grad(-bound, [loc, log_scale])
    return {"loc": d_loc.float(), "scale": d_log_scale.float()}


@functools.lru_cache(maxsize=None)
def _exact(cell_name, name, num_particles):
    """The exact gradient (cells are rebuilt at the same params for every estimator: computed once)."""
    if name in ("iwae", "dreg") and num_particles > 1:
        return local_bound_gradient(estimator_cells.KL_WEIGHT if cell_name == "kl-scale" else 1.0, num_particles)
    return estimator_cells.make_cell(cell_name).exact()


@pytest.mark.parametrize("cell_name,name,num_particles", PAIRS, ids=lambda v: str(v))
def test_estimator_is_exact_or_refused(cell_name, name, num_particles):
    cell = estimator_cells.make_cell(cell_name)
    expected_refusal = refusal(cell_name, name, num_particles)
    options = {"vectorize_particles": True} if name.endswith("-vectorized") else {}
    name = name.removesuffix("-vectorized")
    estimator = estimators.get_estimator(name, num_particles=num_particles, **options)
    if expected_refusal is not None:
        with pytest.raises(ConfigError, match=expected_refusal) as error:
            estimator.check(cell.model, cell.guide, *cell.args)
        message = str(error.value)
        assert "\n" not in message and "use " in message, message  # one line, saying what to use
        return
    exact = _exact(cell_name, "iwae" if name in ("iwae", "dreg") and num_particles > 1 else "elbo", num_particles)
    cell = estimator_cells.make_cell(cell_name)
    result = variance.gradient_variance(
        cell.model, cell.guide, *cell.args, estimator=estimator,
        num_replicates=NUM_REPLICATES, reference=exact,
        baseline_warmup=5 if name == "score-baseline" else None,  # any baseline is unbiased; 5 make it nonzero
    )
    assert result.vectorized, "every cell runs in one batched pass"
    z = _threshold()
    for param, bias in result.bias.items():
        # float32 rounding of the exact (zero-variance) cells: 1e-5 relative.
        tolerance = z * result.bias_standard_error[param] + 1e-5 * (1 + exact[param].abs())
        assert (bias.abs() <= tolerance).all(), (param, result.mean[param], exact[param], result.bias_standard_error[param])


def test_the_threshold_is_bonferroni_over_the_matrix():
    assert 5.0 < _threshold() < 5.8


@pytest.mark.parametrize("cell_name", estimator_cells.CELLS)
def test_gumbel_is_refused_except_on_relaxable_sites(cell_name):
    """gumbel is biased by design (its expectation is the relaxed objective's gradient), so the
    matrix measures it nowhere; it must refuse every cell without Bernoulli/OneHotCategorical sites."""
    cell = estimator_cells.make_cell(cell_name)
    gumbel = estimators.get_estimator("gumbel")
    if cell_name == "bernoulli":
        gumbel.check(cell.model, cell.guide, *cell.args)
        return
    with pytest.raises(ConfigError) as error:
        gumbel.check(cell.model, cell.guide, *cell.args)
    assert "\n" not in str(error.value) and "use " in str(error.value)


def test_exact_elbo_matches_the_closed_forms():
    """The sigma-point ELBO behind most cells' references equals the hand-written gradients."""
    for cell_name, closed_form in [
        ("minibatch", lambda: estimator_cells.local_closed_form(1.0)),
        ("kl-scale", lambda: estimator_cells.local_closed_form(estimator_cells.KL_WEIGHT)),
        ("global-local", estimator_cells.global_local_closed_form),
    ]:
        cell = estimator_cells.make_cell(cell_name)
        exact, by_hand = cell.exact(), closed_form()
        assert exact.keys() == by_hand.keys()
        for param in exact:
            torch.testing.assert_close(exact[param], by_hand[param].float(), rtol=1e-5, atol=1e-5, msg=(cell_name, param))


def test_bound_quadrature_at_one_particle_is_the_elbo_gradient():
    cell = estimator_cells.make_cell("kl-scale")
    quadrature = local_bound_gradient(estimator_cells.KL_WEIGHT, num_particles=1)
    for param, value in estimator_cells.local_closed_form(estimator_cells.KL_WEIGHT).items():
        torch.testing.assert_close(quadrature[param], value.float(), rtol=1e-5, atol=1e-5)
    assert cell.name == "kl-scale"
