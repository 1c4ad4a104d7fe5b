"""Eight schools (pyro examples/eight_schools/svi.py), code as the example writes it; the example
trains it with ``JitTrace_ELBO`` (``--jit``)."""

import torch
from torch.distributions import constraints, transforms

import pyro
import pyro.distributions as dist

J = 8
y = torch.tensor([28, 8, -3, 7, -1, 1, 18, 12]).type(torch.Tensor)
sigma = torch.tensor([15, 10, 16, 11, 9, 11, 10, 18]).type(torch.Tensor)
data = torch.stack([y, sigma], dim=1)


def make_data():
    return {"data": data.numpy()}


def model(data):
    y = data[:, 0]
    sigma = data[:, 1]

    with pyro.plate("data", J):
        eta = pyro.sample("eta", dist.Normal(torch.zeros(J), torch.ones(J)))
        mu = pyro.sample("mu", dist.Normal(torch.zeros(1), 10 * torch.ones(1)))
        tau = pyro.sample("tau", dist.HalfCauchy(scale=25 * torch.ones(1)))

        theta = mu + tau * eta

        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def guide(data):
    loc_eta = torch.randn(J)
    # note that we initialize our scales to be pretty narrow
    scale_eta = 0.1 * torch.rand(J)
    loc_mu = torch.randn(1)
    scale_mu = 0.1 * torch.rand(1)
    loc_logtau = torch.randn(1)
    scale_logtau = 0.1 * torch.rand(1)

    # register learnable params in the param store
    m_eta_param = pyro.param("loc_eta", loc_eta)
    s_eta_param = pyro.param("scale_eta", scale_eta, constraint=constraints.positive)
    m_mu_param = pyro.param("loc_mu", loc_mu)
    s_mu_param = pyro.param("scale_mu", scale_mu, constraint=constraints.positive)
    m_logtau_param = pyro.param("loc_logtau", loc_logtau)
    s_logtau_param = pyro.param(
        "scale_logtau", scale_logtau, constraint=constraints.positive
    )

    # guide distributions
    dist_eta = dist.Normal(m_eta_param, s_eta_param)
    dist_mu = dist.Normal(m_mu_param, s_mu_param)
    dist_tau = dist.TransformedDistribution(
        dist.Normal(m_logtau_param, s_logtau_param),
        transforms=transforms.ExpTransform(),
    )

    with pyro.plate("data", J):
        pyro.sample("eta", dist_eta)
        pyro.sample("mu", dist_mu)
        pyro.sample("tau", dist_tau)
