"""Estimators that do not apply: a name that does not exist, a count that cannot work, pathwise on
discrete sites, enum or gumbel without discrete sites. One ``ConfigError`` line each.
"""

from __future__ import annotations

import pyro
import pyro.distributions
import pytest
import torch

from pyro_vi.errors import ConfigError


def _discrete_model(data):
    c = pyro.sample("c", pyro.distributions.Bernoulli(0.3))
    pyro.sample("x", pyro.distributions.Normal(c, 1.0), obs=data)


def _discrete_guide(data):
    probability = pyro.param("probability", torch.tensor(0.5), constraint=pyro.distributions.constraints.unit_interval)
    pyro.sample("c", pyro.distributions.Bernoulli(probability))


def _continuous_model(data):
    z = pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))
    pyro.sample("x", pyro.distributions.Normal(z, 1.0), obs=data)


def _continuous_guide(data):
    pyro.sample("z", pyro.distributions.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))


def _check(name, model, guide, **options):
    from pyro_vi.estimators import get_estimator

    return get_estimator(name, **options).check(model, guide, torch.tensor(0.4))


ESTIMATOR_API_CASES = [
    pytest.param(lambda: _check("reparam", _discrete_model, _discrete_guide), "is pathwise but the guide samples discrete", id="reparam-discrete-guide"),
    pytest.param(lambda: _check("dreg", _discrete_model, _discrete_guide), "is pathwise but the guide samples discrete", id="dreg-discrete-guide"),
    pytest.param(lambda: _check("enum", _continuous_model, _continuous_guide), "'enum' needs discrete latent sites", id="enum-continuous-latents"),
    pytest.param(lambda: _check("gumbel", _continuous_model, _continuous_guide), "gumbel needs Bernoulli", id="gumbel-continuous-latents"),
    pytest.param(lambda: _check("reinforce", _continuous_model, _continuous_guide), "unknown estimator 'reinforce'", id="unknown-estimator"),
    pytest.param(lambda: _check("score", _continuous_model, _continuous_guide, num_particles=0), "num_particles must be a positive", id="particles-0"),
    pytest.param(lambda: _check("score", _continuous_model, _continuous_guide, num_particles=-3), "num_particles must be a positive", id="particles-negative"),
    pytest.param(lambda: _check("rloo", _continuous_model, _continuous_guide, num_particles=1), "rloo needs at least 2 particles", id="rloo-one-particle"),
]


@pytest.mark.parametrize("call, fragment", ESTIMATOR_API_CASES)
def test_api_estimator_does_not_apply(call, fragment):
    with pytest.raises(ConfigError) as caught:
        call()
    assert "\n" not in str(caught.value) and fragment.lower() in str(caught.value).lower(), str(caught.value)
