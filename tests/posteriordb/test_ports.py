"""The Pyro ports of posteriordb's posteriors against posteriordb's reference draws.

Needs a posteriordb folder (``$PYRO_VI_POSTERIORDB``: a clone of stan-dev/posteriordb or the
thirteen-posterior subset in its layout); skipped without one.

* every port runs on its data under ``check``'s particle plate and produces every reference name;
* near-Gaussian ports (and the mixture, the HMM, diamonds): a full-rank Gaussian q fitted to the reference draws (in the guide's
  unconstrained space) is a near-perfect proposal for the port's posterior exactly when the port's
  density is Stan's; the PSIS-corrected means and sds (the port's posterior, by importance sampling)
  then match the reference within Monte Carlo error and k-hat is small;
* ``slow``: NUTS on each port agrees with the reference means.
"""

import os

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import MCMC, NUTS, Predictive
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal, init_to_value
from pyro.nn import PyroParam
from torch.distributions import biject_to

import pyro_vi
from pyro_vi import posteriordb
from pyro_vi.diagnostics import element_names
from pyro_vi.diagnostics.draws import site_shapes
from pyro_vi.posteriordb.files import ENVIRONMENT_VARIABLE

ROOT = os.environ.get(ENVIRONMENT_VARIABLE)
pytestmark = pytest.mark.skipif(not ROOT or not os.path.isdir(ROOT), reason=f"no posteriordb folder (set {ENVIRONMENT_VARIABLE})")


def test_every_posterior_in_the_folder_has_a_port():
    assert sorted(posteriordb.posterior_names(ROOT)) == sorted(posteriordb.PORTS)


@pytest.mark.parametrize("name", sorted(posteriordb.PORTS))
def test_each_port_produces_every_reference_parameter_vectorized(name):
    problem = posteriordb.load(name, ROOT)
    guide = AutoNormal(problem.model)
    result = pyro_vi.check(problem.model, guide, num_samples=16, reference=problem.reference, seed=0, vectorize=True,
                           **problem.data)
    compared = {row.name for row in result.parameters if row.ref_mean is not None}
    assert compared == set(problem.reference)
    assert np.isfinite(result.log_weights).all()


def _reference_guide(problem):
    """AutoMultivariateNormal with the mean and covariance of the reference draws, unconstrained."""
    guide = AutoMultivariateNormal(problem.model)
    guide(**problem.data)  # its prototype: the latent sites in the guide's order
    columns = []
    for name, site in guide.prototype_trace.iter_stochastic_nodes():
        shape = site["value"].shape
        draws = np.stack([problem.reference[element] for element in element_names(name, shape)], -1)
        value = torch.as_tensor(draws, dtype=torch.get_default_dtype()).reshape(-1, *shape)
        columns.append(biject_to(site["fn"].support).inv(value).reshape(value.shape[0], -1))
    unconstrained = torch.cat(columns, -1)
    scale_tril = torch.linalg.cholesky(torch.cov(unconstrained.T))
    guide.loc = PyroParam(unconstrained.mean(0))
    guide.scale = PyroParam(scale_tril.diagonal(), AutoMultivariateNormal.scale_constraint)
    guide.scale_tril = PyroParam(scale_tril / scale_tril.diagonal()[:, None], AutoMultivariateNormal.scale_tril_constraint)
    return guide


# Beyond the near-Gaussian regressions: ports whose every latent site the reference names (the others,
# eight schools, garch and the GP, sample a non-centred or unit site Stan reports only transformed).
REWEIGHTED = (*posteriordb.NEAR_GAUSSIAN, "low_dim_gauss_mix-low_dim_gauss_mix", "hmm_example-hmm_example", "diamonds-diamonds")


@pytest.mark.parametrize("name", REWEIGHTED)
def test_ports_reweight_to_the_reference(name):
    """PSIS from a full-rank q matched to the reference: the port's posterior moments by importance sampling.

    The corrected mean's Monte Carlo sd is about ref_sd / sqrt(ESS) (ESS of the smoothed weights),
    the reference mean's about ref_sd / sqrt(1000) (posteriordb's 10,000 draws, taken as at least
    1000 effective); 5 of their combined sds is the bound. The sd's relative Monte Carlo sd is about
    sqrt(1 / (2 ESS) + 1 / 2000): 5 of it. A port with another prior, likelihood or constraint than
    Stan's moves some mean by far more or makes k-hat large.
    """
    problem = posteriordb.load(name, ROOT)
    guide = _reference_guide(problem)
    result = pyro_vi.check(problem.model, guide, num_samples=4000, reference=problem.reference, seed=0, **problem.data)
    # q is close to the port's posterior: nearly equal weights. (k-hat itself is noisy when the
    # weights hardly vary, so the effective sample size is the criterion here.)
    ess = result.psis_effective_sample_size
    assert ess > 0.5 * result.num_samples, result.summary()
    weights = np.exp(result.smoothed_log_weights)
    mean_bound = 5 * np.sqrt(1 / ess + 1 / 1000)
    sd_bound = 5 * np.sqrt(1 / (2 * ess) + 1 / 2000)
    for element, values in result.element_draws().items():
        reference = problem.reference[element]
        mean = weights @ values
        sd = np.sqrt(weights @ (values - mean) ** 2)
        assert abs(mean - reference.mean()) / reference.std() < mean_bound, (element, mean, reference.mean(), ess)
        assert abs(sd / reference.std() - 1) < sd_bound, (element, sd, reference.std(), ess)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(posteriordb.PORTS))
def test_nuts_on_each_port_agrees_with_the_reference_means(name):
    """pyro.infer.MCMC (NUTS, 500 draws after 500 warm-up, started at the reference medians where the
    reference names the site).

    Bound: 5 Monte Carlo sds of the difference of the two means, each from its ESS (NUTS's from
    arviz, at least 20; the reference's taken as 1000).
    """
    problem = posteriordb.load(name, ROOT)
    guide = AutoNormal(problem.model)
    guide(**problem.data)  # its prototype trace: the latent sites
    start = {}
    for site_name, fields in guide.prototype_trace.iter_stochastic_nodes():
        names = element_names(site_name, fields["value"].shape)
        if all(element in problem.reference for element in names):
            median = np.array([np.median(problem.reference[element]) for element in names])
            start[site_name] = torch.as_tensor(median, dtype=torch.get_default_dtype()).reshape(fields["value"].shape)
    kernel = NUTS(problem.model, init_strategy=init_to_value(values=start), max_tree_depth=8)
    mcmc = MCMC(kernel, num_samples=500, warmup_steps=500, num_chains=1, disable_progbar=True)
    mcmc.run(**problem.data)
    # Every site the reference names, the deterministic ones (eight schools' theta) computed from the draws.
    sites = site_shapes(pyro.poutine.trace(problem.model).get_trace(**problem.data))
    draws = Predictive(problem.model, posterior_samples=mcmc.get_samples(), return_sites=list(sites), parallel=False)(**problem.data)
    draws = {site: draws[site].reshape(-1, *shape).numpy() for site, shape in sites.items()}
    az = pyro_vi.diagnostics.psis.arviz()
    ess = az.ess(az.from_dict(posterior={site: values[None] for site, values in draws.items()}))
    checked = 0
    for site, values in draws.items():
        flat = values.reshape(values.shape[0], -1)
        site_ess = np.asarray(ess[site]).reshape(-1)
        for index, element in enumerate(element_names(site, values.shape[1:])):
            if element not in problem.reference:
                continue
            ref = problem.reference[element]
            bound = 5 * np.sqrt(1 / max(site_ess[index], 20) + 1 / 1000)
            assert abs(flat[:, index].mean() - ref.mean()) / ref.std() < bound, (element, flat[:, index].mean(), ref.mean())
            checked += 1
    assert checked == len(problem.reference)
