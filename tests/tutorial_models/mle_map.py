"""MLE and MAP estimation (https://pyro.ai/examples/mle_map.html), code as the tutorial writes it.

``model``/``guide`` are the MAP pair (a Delta guide); ``model_mle``/``guide_mle`` the MLE pair (the
fairness is a param of the model, the guide is empty). Exact answers: MLE 6/10; MAP under
Beta(10, 10) the posterior mode (6 + 9) / (10 + 18) = 15/28.
"""

import numpy as np
import torch
from torch.distributions import constraints

import pyro
import pyro.distributions as dist


def make_data():
    data = np.zeros(10, dtype=np.float32)
    data[0:6] = 1.0
    return {"data": data}


def original_model(data):
    f = pyro.sample("latent_fairness", dist.Beta(10.0, 10.0))
    with pyro.plate("data", data.size(0)):
        pyro.sample("obs", dist.Bernoulli(f), obs=data)


def model_mle(data):
    # note that we need to include the interval constraint;
    # in original_model() this constraint appears implicitly in
    # the support of the Beta distribution.
    f = pyro.param("latent_fairness", torch.tensor(0.5),
                   constraint=constraints.unit_interval)
    with pyro.plate("data", data.size(0)):
        pyro.sample("obs", dist.Bernoulli(f), obs=data)


def guide_mle(data):
    pass


def guide_map(data):
    f_map = pyro.param("f_map", torch.tensor(0.5),
                       constraint=constraints.unit_interval)
    pyro.sample("latent_fairness", dist.Delta(f_map))


model = original_model
guide = guide_map
