"""Bayesian regression (https://pyro.ai/examples/bayesian_regression.html), code as the tutorial
writes it: ``PyroModule[nn.Linear]`` with ``PyroSample`` priors, the noise scale ``sigma`` a latent
with a Uniform(0, 10) prior, and the tutorial's ``AutoDiagonalNormal`` guide.

The tutorial downloads the rugged data set; this file makes a synthetic one of the same shape
(``cont_africa``, ``rugged``, their product; log GDP with intercept ~9.2), 100 countries.
"""

import numpy as np
import torch
from torch import nn

import pyro
import pyro.distributions as dist
from pyro.infer.autoguide import AutoDiagonalNormal
from pyro.nn import PyroModule, PyroSample

TRUE_WEIGHT = (-1.9, -0.2, 0.4)
TRUE_BIAS = 9.2
TRUE_SIGMA = 0.9


def make_data(num_data=100, seed=0):
    generator = np.random.default_rng(seed)
    cont_africa = (generator.random(num_data) < 0.3).astype(np.float32)
    rugged = generator.gamma(1.5, 0.8, num_data).astype(np.float32)
    x = np.stack([cont_africa, rugged, cont_africa * rugged], axis=1).astype(np.float32)
    y = TRUE_BIAS + x @ np.array(TRUE_WEIGHT, dtype=np.float32) + TRUE_SIGMA * generator.standard_normal(num_data)
    return {"x": x, "y": y.astype(np.float32)}


class BayesianRegression(PyroModule):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = PyroModule[nn.Linear](in_features, out_features)
        self.linear.weight = PyroSample(dist.Normal(0., 1.).expand([out_features, in_features]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(0., 10.).expand([out_features]).to_event(1))

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.Uniform(0., 10.))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            obs = pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


# nn.Linear draws its (here unused: PyroSample replaces them) initial weights from torch's RNG:
# keep importing this file from moving the caller's RNG, so that a fit seeded before or after the
# import starts the same.
with torch.random.fork_rng():
    model = BayesianRegression(3, 1)
guide = AutoDiagonalNormal(model)
