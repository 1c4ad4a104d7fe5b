"""Hostile arguments to ``pyro_vi.fit`` and ``pyro_vi.fit_images``: each refused up front with the
precise ``PyroVIError`` naming it, or (a torch optimizer class) made to work as Pyro would wrap it.

Before these checks a torch optimizer class trained nothing and returned normally, data with
``requires_grad`` had their ``.grad`` filled, and the rest were raw ``TypeError``/``ValueError``/
``AttributeError`` from torch or Pyro.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO

import pyro_vi
from pyro_vi.errors import ConfigError, DataError

DATA = torch.tensor([1.0] * 6 + [0.0] * 4)


def model(data):
    fairness = pyro.sample("fairness", dist.Beta(10.0, 10.0))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("obs", dist.Bernoulli(fairness), obs=data)


def guide(data):
    alpha = pyro.param("alpha", torch.tensor(15.0), constraint=constraints.positive)
    beta = pyro.param("beta", torch.tensor(15.0), constraint=constraints.positive)
    pyro.sample("fairness", dist.Beta(alpha, beta))


def _fit(*args, **kwargs):
    return pyro_vi.fit(*args, num_steps=kwargs.pop("num_steps", 2), progress=False, **kwargs)


def test_a_torch_optimizer_class_trains_as_pyro_would_wrap_it():
    result = _fit(model, guide, DATA, optim=torch.optim.Adam, num_steps=50, seed=0)
    pyro.clear_param_store()
    wrapped = _fit(model, guide, DATA, optim=pyro.optim.PyroOptim(torch.optim.Adam, {}), num_steps=50, seed=0)
    assert result.params["alpha"] != 15.0  # it trained (it used to return the initial values)
    assert torch.equal(result.params["alpha"], wrapped.params["alpha"])


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(optim=torch.optim.Adam([torch.zeros(1, requires_grad=True)])), ConfigError, "torch.optim.Adam instance"),
    (dict(optim=pyro.optim.Adam), ConfigError, "got a function; pass e.g. pyro.optim.Adam"),
    (dict(optim="adam"), ConfigError, "optim must be a Pyro optimizer"),
    (dict(optim=pyro.optim.Adam({"lr": "0.01"})), ConfigError, "lr must be a non-negative finite number"),
    (dict(optim=pyro.optim.Adam({"lr": math.nan})), ConfigError, "lr must be a non-negative finite number"),
    (dict(optim=pyro.optim.Adam({"lr": -0.1})), ConfigError, "lr must be a non-negative finite number"),
    (dict(optim=pyro_vi.engine.optim.Adam({"lr": math.inf})), ConfigError, "lr must be a non-negative finite number"),
    (dict(optim=pyro.optim.Adam({"lr": 0.1, "betas": (2.0, 0.9)})), ConfigError, "Invalid beta"),
    (dict(loss=Trace_ELBO), ConfigError, "pass Trace_ELBO()"),
    (dict(loss="trace"), ConfigError, "loss must be a Pyro ELBO"),
], ids=["torch-instance", "pyro-class", "string-optim", "string-lr", "nan-lr", "negative-lr", "inf-lr", "bad-betas",
        "elbo-class", "string-loss"])
def test_a_bad_loss_or_optimizer_is_a_config_error(kwargs, error, fragment):
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        _fit(model, guide, DATA, **kwargs)


@pytest.mark.parametrize("arguments, error, fragment", [
    ((3, guide, DATA), ConfigError, "model must be a function"),
    ((model, None, DATA), ConfigError, "guide must be a function"),
    ((model, guide, DATA.to_sparse()), DataError, "dense"),
], ids=["model-not-callable", "guide-none", "sparse-data"])
def test_a_bad_model_guide_or_data_is_refused(arguments, error, fragment):
    with pytest.raises(error, match=fragment):
        _fit(*arguments)


def test_data_that_require_grad_are_refused_and_untouched():
    data = DATA.clone().requires_grad_()
    with pytest.raises(DataError, match="requires grad"):
        _fit(model, guide, data)
    assert data.grad is None
    assert len(pyro.get_param_store()) == 0  # refused before any step


def test_fit_images_refuses_a_config_that_is_not_a_train_config():
    vae = pyro_vi.VAE(4, z_dim=2, hidden_dims=(4,))
    with pytest.raises(ConfigError, match="TrainConfig"):
        pyro_vi.fit_images(vae.model, vae.guide, torch.rand(8, 4).round(), {"epochs": 1}, progress=False)
