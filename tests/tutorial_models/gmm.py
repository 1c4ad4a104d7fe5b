"""The Gaussian mixture model tutorial (https://pyro.ai/examples/gmm.html), code as the tutorial
writes it: ``config_enumerate`` model, ``AutoDelta(poutine.block(model, expose=[...]))`` guide with
the tutorial's ``init_loc_fn``, trained with ``TraceEnum_ELBO(max_plate_nesting=1)``.
"""

import torch

import pyro
import pyro.distributions as dist
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoDelta

data = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])


def make_data():
    return {"data": data.numpy()}


K = 2  # Fixed number of components.


@config_enumerate
def model(data):
    # Global variables.
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(K)))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with pyro.plate("components", K):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))

    with pyro.plate("data", len(data)):
        # Local variables.
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


optim = pyro.optim.Adam({"lr": 0.1, "betas": [0.8, 0.99]})
elbo = TraceEnum_ELBO(max_plate_nesting=1)


def init_loc_fn(site):
    if site["name"] == "weights":
        # Initialize weights to uniform.
        return torch.ones(K) / K
    if site["name"] == "scale":
        return (data.var() / 2).sqrt()
    if site["name"] == "locs":
        return data[torch.multinomial(torch.ones(len(data)) / len(data), K)]
    raise ValueError(site["name"])


global_guide = AutoDelta(
    poutine.block(model, expose=["weights", "locs", "scale"]),
    init_loc_fn=init_loc_fn,
)
guide = global_guide
