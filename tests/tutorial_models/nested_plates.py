"""Nested plates, as the tensor shapes tutorial declares them (https://pyro.ai/examples/tensor_shapes.html):
reusable ``x_axis``/``y_axis`` plates with explicit dims, a latent per row (``with x_axis``), a latent
per column (``with y_axis``) and the observations in both (``with x_axis, y_axis``). A two-way
random-effects model with unit-variance noise, so the posterior is Gaussian in closed form
(``exact_posterior``); the guide is mean-field Normal with one param per row and per column.
"""

import numpy as np
import torch
from torch.distributions import constraints

import pyro
from pyro.distributions import Normal


def make_data(rows=3, columns=4, seed=0):
    generator = np.random.default_rng(seed)
    effects = generator.standard_normal((rows, 1)) + generator.standard_normal((1, columns))
    return {"data": (effects + generator.standard_normal((rows, columns))).astype(np.float32)}


def model(data):
    x_axis = pyro.plate("x_axis", data.shape[0], dim=-2)
    y_axis = pyro.plate("y_axis", data.shape[1], dim=-1)
    with x_axis:
        row = pyro.sample("row", Normal(0., 1.))
    with y_axis:
        column = pyro.sample("column", Normal(0., 1.))
    with x_axis, y_axis:
        pyro.sample("obs", Normal(row + column, 1.), obs=data)


def guide(data):
    rows, columns = data.shape
    row_loc = pyro.param("row_loc", torch.zeros(rows, 1))
    row_scale = pyro.param("row_scale", torch.ones(rows, 1), constraint=constraints.positive)
    column_loc = pyro.param("column_loc", torch.zeros(columns))
    column_scale = pyro.param("column_scale", torch.ones(columns), constraint=constraints.positive)
    x_axis = pyro.plate("x_axis", rows, dim=-2)
    y_axis = pyro.plate("y_axis", columns, dim=-1)
    with x_axis:
        pyro.sample("row", Normal(row_loc, row_scale))
    with y_axis:
        pyro.sample("column", Normal(column_loc, column_scale))


def exact_posterior(data):
    """Posterior mean of (rows..., columns...) and the mean-field optimum's sds 1/sqrt(precision_ii)."""
    data = np.asarray(data, dtype=np.float64)
    rows, columns = data.shape
    design = np.zeros((rows * columns, rows + columns))
    for i in range(rows):
        for j in range(columns):
            design[i * columns + j, i] = design[i * columns + j, rows + j] = 1.0
    precision = np.eye(rows + columns) + design.T @ design
    mean = np.linalg.solve(precision, design.T @ data.reshape(-1))
    return mean, 1.0 / np.sqrt(np.diag(precision))
