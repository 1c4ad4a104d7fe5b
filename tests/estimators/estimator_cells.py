"""Small model/guide pairs ("cells") on which every estimator is checked against an exact gradient.

Each cell registers its params and returns a ``Cell``: the pair, its arguments and the exact
gradient of -ELBO (``exact``). The exact gradients come from ``exact.exact_elbo`` (sigma
points, exact for the Gaussian integrands here, plus enumeration of discrete guide sites), checked
against hand-written closed forms on the cells that have one (``closed_form``).

    minibatch                z_n ~ N(0, 1), x_n ~ N(z_n, 1), N = 4, minibatch [0, 2] (N/|B| = 2)
    kl-scale                 the same with poutine.scale(0.3) on z in model and guide (a KL weight)
    global-local             z0 ~ N(0, 1), z_n ~ N(z0, 1), x_n ~ N(z_n, 1), minibatch [1, 3]
    auto-normal, auto-diagonal-normal, auto-multivariate-normal, auto-delta
                             that model (all data) with Pyro's AutoGuide
    delta                    that model with z0 a point mass (MAP) and q(z_n) Gaussian
    bernoulli                pyro_vi's bernoulli toy: three Bernoulli guide sites
    categorical              c_n ~ Cat(1/3), x_n ~ N(mu_{c_n}, 1), N = 2; q(c_n) = Cat(softmax(logits_n))
    enumerated               GMM with config_enumerate assignments summed out, AutoDelta on the locs
    transformed              z ~ LogNormal(0, 1), x_n ~ N(log z, 1); q(z) = exp of N(loc, scale)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import autoguide, config_enumerate

from pyro_vi.engine import params as param_store
from pyro_vi.estimators import exact
from pyro_vi.estimators import problems as variance_models

DATA = torch.tensor([-0.5, 2.0, 1.0, 0.3])
KL_WEIGHT = 0.3


class Cell(NamedTuple):
    name: str
    model: Callable
    guide: Callable
    args: tuple
    exact: Callable[[], dict]  # d(-ELBO)/d(unconstrained params) at the current params


def _exact(model, guide, args):
    return lambda: exact.exact_elbo_gradient(model, guide, *args)


def _local(kl_weight=1.0):
    indices = torch.tensor([0, 2])

    def model(data, indices):
        with pyro.plate("data", len(data), subsample=indices):
            with poutine.scale(scale=kl_weight):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=data[indices])

    def guide(data, indices):
        loc = pyro.param("loc", torch.tensor([0.3, -0.2, 0.5, 0.1]))
        scale = pyro.param("scale", torch.tensor([0.8, 1.2, 0.6, 1.0]), constraint=constraints.positive)
        with pyro.plate("data", len(data), subsample=indices):
            with poutine.scale(scale=kl_weight):
                pyro.sample("z", dist.Normal(loc[indices], scale[indices]))

    return model, guide, (DATA, indices)


def local_closed_form(kl_weight: float) -> dict:
    """d(-ELBO)/d(loc, log scale) of the minibatch cells by hand:
    -ELBO = (N/|B|) sum_{n in B} [((x_n - m_n)^2 + s_n^2) / 2 + beta (m_n^2 + s_n^2) / 2 - beta log s_n] + const."""
    store = pyro.get_param_store()
    loc = store["loc"].detach()
    scale = store["scale"].detach()
    in_batch = torch.tensor([1.0, 0.0, 1.0, 0.0]) * 2.0  # N/|B| on the minibatch, 0 elsewhere
    d_loc = in_batch * (-(DATA - loc) + kl_weight * loc)
    d_scale = in_batch * (scale + kl_weight * scale - kl_weight / scale)
    return {"loc": d_loc, "scale": d_scale * scale}  # chain rule to log scale


def _global_local_model(data, indices=None):
    z0 = pyro.sample("z0", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(data), subsample=indices) as index:
        z = pyro.sample("z", dist.Normal(z0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=data[index])


def _global_local(point_mass=False):
    indices = torch.tensor([1, 3])

    def guide(data, indices=None):
        loc0 = pyro.param("loc0", torch.tensor(0.4))
        loc = pyro.param("loc", torch.tensor([0.3, -0.2, 0.5, 0.1]))
        scale = pyro.param("scale", torch.tensor([0.8, 1.2, 0.6, 1.0]), constraint=constraints.positive)
        if point_mass:
            pyro.sample("z0", dist.Delta(loc0))
        else:
            scale0 = pyro.param("scale0", torch.tensor(0.7), constraint=constraints.positive)
            pyro.sample("z0", dist.Normal(loc0, scale0))
        with pyro.plate("data", len(data), subsample=indices) as index:
            pyro.sample("z", dist.Normal(loc[index], scale[index]))

    return _global_local_model, guide, (DATA, indices)


def global_local_closed_form() -> dict:
    """d(-ELBO)/d params of the global-local cell by hand (s = N/|B| = 2 on the minibatch):
    -ELBO = (m0^2 + s0^2)/2 - log s0 + s sum_{n in B} [((m_n - m0)^2 + s_n^2 + s0^2)/2
            + ((x_n - m_n)^2 + s_n^2)/2 - log s_n] + const."""
    store = pyro.get_param_store()
    m0, s0 = store["loc0"].detach(), store["scale0"].detach()
    m, s = store["loc"].detach(), store["scale"].detach()
    weight = torch.tensor([0.0, 2.0, 0.0, 2.0])
    d_m0 = m0 - (weight * (m - m0)).sum()
    d_s0 = s0 - 1 / s0 + weight.sum() * s0
    d_m = weight * ((m - m0) - (DATA - m))
    d_s = weight * (2 * s - 1 / s)
    return {"loc0": d_m0, "scale0": d_s0 * s0, "loc": d_m, "scale": d_s * s}


def _auto(kind):
    guide = kind(_global_local_model, **({} if kind is autoguide.AutoDelta else {"init_scale": 0.5}))
    return _global_local_model, guide, (DATA,)


def _bernoulli():
    problem = variance_models.make_problem("bernoulli")
    return problem.model, problem.guide, problem.args


MEANS = torch.tensor([-1.0, 0.0, 2.0])


def _categorical():
    data = torch.tensor([-0.8, 1.5])

    def model(data):
        with pyro.plate("data", len(data)):
            c = pyro.sample("c", dist.Categorical(torch.ones(3) / 3))
            pyro.sample("x", dist.Normal(MEANS[c], 1.0), obs=data)

    def guide(data):
        logits = pyro.param("logits", torch.tensor([[0.2, -0.3, 0.1], [-0.5, 0.4, 0.0]]))
        with pyro.plate("data", len(data)):
            pyro.sample("c", dist.Categorical(logits=logits))

    return model, guide, (data,)


GMM_DATA = torch.tensor([-2.1, -1.4, 1.9, 2.6])


@config_enumerate
def _gmm_model(data):
    with pyro.plate("components", 2):
        locs = pyro.sample("locs", dist.Normal(0.0, 5.0))
    with pyro.plate("data", len(data)):
        c = pyro.sample("c", dist.Categorical(torch.ones(2) / 2))
        pyro.sample("x", dist.Normal(locs[c], 1.0), obs=data)


def _enumerated():
    guide = autoguide.AutoDelta(poutine.block(_gmm_model, hide=["c"]), init_loc_fn=lambda site: torch.tensor([-1.0, 1.0]))
    guide(GMM_DATA)

    def exact():
        # -ELBO = -log p(locs) - sum_n log sum_c p(c) N(x_n; locs_c, 1), the assignments summed out.
        name = "AutoDelta.locs"
        locs = param_store.unconstrained(name)
        log_prior = dist.Normal(0.0, 5.0).log_prob(locs).sum()
        log_lik = torch.logsumexp(dist.Normal(locs, 1.0).log_prob(GMM_DATA[:, None]) - torch.log(torch.tensor(2.0)), -1).sum()
        (grad,) = torch.autograd.grad(-(log_prior + log_lik), [locs])
        return {name: grad}

    return Cell("enumerated", _gmm_model, guide, (GMM_DATA,), exact)


def _transformed():
    data = torch.tensor([0.4, -0.2, 1.1])

    def model(data):
        z = pyro.sample("z", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(z.log(), 1.0), obs=data)

    def guide(data):
        loc = pyro.param("loc", torch.tensor(0.6))
        scale = pyro.param("scale", torch.tensor(0.7), constraint=constraints.positive)
        pyro.sample("z", dist.TransformedDistribution(dist.Normal(loc, scale), [dist.transforms.ExpTransform()]))

    return model, guide, (data,)


_BUILDERS = {
    "minibatch": lambda: _local(),
    "kl-scale": lambda: _local(KL_WEIGHT),
    "global-local": lambda: _global_local(),
    "auto-normal": lambda: _auto(autoguide.AutoNormal),
    "auto-diagonal-normal": lambda: _auto(autoguide.AutoDiagonalNormal),
    "auto-multivariate-normal": lambda: _auto(autoguide.AutoMultivariateNormal),
    "auto-delta": lambda: _auto(autoguide.AutoDelta),
    "delta": lambda: _global_local(point_mass=True),
    "bernoulli": _bernoulli,
    "categorical": _categorical,
    "enumerated": _enumerated,
    "transformed": _transformed,
}
CELLS = tuple(_BUILDERS)


def make_cell(name: str) -> Cell:
    """The cell ``name`` with its params registered afresh (seeded: AutoGuides initialize from draws)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    built = _BUILDERS[name]()
    if isinstance(built, Cell):
        return built
    model, guide, args = built
    guide(*args)  # register the params
    return Cell(name, model, guide, args, _exact(model, guide, args))
