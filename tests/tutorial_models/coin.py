"""SVI Part I: the coin (https://pyro.ai/examples/svi_part_i.html), code as the tutorial writes it.

Prior Beta(10, 10), 6 heads and 4 tails: the exact posterior is Beta(16, 14), and the guide's
family contains it.
"""

import numpy as np
import torch
import torch.distributions.constraints as constraints

import pyro
import pyro.distributions as dist


def make_data():
    # create some data with 6 observed heads and 4 observed tails
    return {"data": np.array([1.0] * 6 + [0.0] * 4, dtype=np.float32)}


def model(data):
    # define the hyperparameters that control the Beta prior
    alpha0 = torch.tensor(10.0)
    beta0 = torch.tensor(10.0)
    # sample f from the Beta prior
    f = pyro.sample("latent_fairness", dist.Beta(alpha0, beta0))
    # loop over the observed data
    for i in range(len(data)):
        # observe datapoint i using the ernoulli likelihood
        pyro.sample("obs_{}".format(i), dist.Bernoulli(f), obs=data[i])


def guide(data):
    # register the two variational parameters with Pyro
    # - both parameters will have initial value 15.0.
    # - because we invoke constraints.positive, the optimizer
    # will take gradients on the unconstrained parameters
    # (which are related to the constrained parameters by a log)
    alpha_q = pyro.param("alpha_q", torch.tensor(15.0),
                         constraint=constraints.positive)
    beta_q = pyro.param("beta_q", torch.tensor(15.0),
                        constraint=constraints.positive)
    # sample latent_fairness from the distribution Beta(alpha_q, beta_q)
    pyro.sample("latent_fairness", dist.Beta(alpha_q, beta_q))
