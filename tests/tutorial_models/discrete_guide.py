"""Discrete latents in the guide: the tensor shapes tutorial's ``model4``/``guide4``
(https://pyro.ai/examples/tensor_shapes.html), code as the tutorial writes it. ``x_active`` and
``y_active`` are Bernoulli sites of the guide: sampled (score function, ``Trace_ELBO`` or
``TraceGraph_ELBO``; set ``enumerated = False``) or enumerated in parallel
(``guide_enumerated`` with ``TraceEnum_ELBO(max_plate_nesting=2)``; set ``enumerated = True``).
"""

import torch
from torch.distributions import constraints

import pyro
from pyro.distributions import Bernoulli
from pyro.distributions.util import broadcast_shape
from pyro.infer import config_enumerate


def make_data():
    return {}


width = 8
height = 10
sparse_pixels = torch.LongTensor([[3, 2], [3, 5], [3, 9], [7, 1]])
enumerated = False  # set to either True or False below


def fun(observe):
    p_x = pyro.param("p_x", torch.tensor(0.1), constraint=constraints.unit_interval)
    p_y = pyro.param("p_y", torch.tensor(0.1), constraint=constraints.unit_interval)
    x_axis = pyro.plate('x_axis', width, dim=-2)
    y_axis = pyro.plate('y_axis', height, dim=-1)

    # Note that the shapes of these sites depend on whether Pyro is enumerating.
    with x_axis:
        x_active = pyro.sample("x_active", Bernoulli(p_x))
    with y_axis:
        y_active = pyro.sample("y_active", Bernoulli(p_y))
    if enumerated:
        assert x_active.shape == (2, 1, 1)
        assert y_active.shape == (2, 1, 1, 1)
    else:
        assert x_active.shape == (width, 1)
        assert y_active.shape == (height,)

    # The first trick is to broadcast. This works with or without enumeration.
    p = 0.1 + 0.5 * x_active * y_active
    if enumerated:
        assert p.shape == (2, 2, 1, 1)
    else:
        assert p.shape == (width, height)
    dense_pixels = p.new_zeros(broadcast_shape(p.shape, (width, height)))

    # The second trick is to index using ellipsis slicing.
    # This allows Pyro to add arbitrary dimensions on the left.
    for x, y in sparse_pixels:
        dense_pixels[..., x, y] = 1
    if enumerated:
        assert dense_pixels.shape == (2, 2, width, height)
    else:
        assert dense_pixels.shape == (width, height)

    with x_axis, y_axis:
        if observe:
            pyro.sample("pixels", Bernoulli(p), obs=dense_pixels)


def model4():
    fun(observe=True)


def guide4():
    fun(observe=False)


model = model4
guide = guide4
guide_enumerated = config_enumerate(guide4, "parallel")
