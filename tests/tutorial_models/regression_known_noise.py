"""The Bayesian regression tutorial's model with the noise scale known (``SIGMA``): weights and bias
are then the only latents, and with Gaussian priors the posterior is Gaussian in closed form
(``exact_posterior``). Same ``PyroModule[nn.Linear]``/``PyroSample`` code as the tutorial.
"""

import numpy as np
import torch
from torch import nn

import pyro
import pyro.distributions as dist
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample

SIGMA = 0.9
WEIGHT_PRIOR_SD, BIAS_PRIOR_SD = 1.0, 10.0


def make_data(num_data=100, seed=0):
    generator = np.random.default_rng(seed)
    cont_africa = (generator.random(num_data) < 0.3).astype(np.float32)
    rugged = generator.gamma(1.5, 0.8, num_data).astype(np.float32)
    x = np.stack([cont_africa, rugged, cont_africa * rugged], axis=1).astype(np.float32)
    y = 9.2 + x @ np.array([-1.9, -0.2, 0.4], dtype=np.float32) + SIGMA * generator.standard_normal(num_data)
    return {"x": x, "y": y.astype(np.float32)}


class BayesianRegression(PyroModule):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = PyroModule[nn.Linear](in_features, out_features)
        self.linear.weight = PyroSample(dist.Normal(0., WEIGHT_PRIOR_SD).expand([out_features, in_features]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(0., BIAS_PRIOR_SD).expand([out_features]).to_event(1))

    def forward(self, x, y=None):
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            obs = pyro.sample("obs", dist.Normal(mean, SIGMA), obs=y)
        return mean


def exact_posterior(x, y):
    """Mean and covariance of (weight_1..weight_3, bias) given the data, in float64."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    prior_precision = np.diag([WEIGHT_PRIOR_SD**-2] * x.shape[1] + [BIAS_PRIOR_SD**-2])
    precision = prior_precision + design.T @ design / SIGMA**2
    covariance = np.linalg.inv(precision)
    mean = covariance @ design.T @ y / SIGMA**2
    return mean, covariance


# nn.Linear draws its (here unused: PyroSample replaces them) initial weights from torch's RNG:
# keep importing this file from moving the caller's RNG, so that a fit seeded before or after the
# import starts the same.
with torch.random.fork_rng():
    model = BayesianRegression(3, 1)
guide = AutoNormal(model)
