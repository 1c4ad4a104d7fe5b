"""Exact ELBOs and their gradients, the references the gradient lab measures estimators against.

* :func:`exact_gradient`: d(-ELBO)/d(unconstrained params) by autograd through a closed-form -ELBO
  written in the constrained params (what every built-in problem of
  :mod:`~pyro_vi.estimators.problems` ships).
* :func:`exact_elbo` / :func:`exact_elbo_gradient`: for any small model/guide pair, E_q[log p - log q]
  by symmetric sigma points (exact for Gaussian noise and quadratic integrands) times enumeration of
  the discrete guide sites: the reference of the estimator matrix in
  ``tests/estimators/test_estimator_matrix.py``.
* :class:`noise_from`: every Gaussian rsample's standard normal noise drawn by a given function.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from torch import Tensor

from pyro_vi.engine import params

__all__ = ["exact_gradient", "exact_elbo", "exact_elbo_gradient", "noise_from"]


def exact_gradient(negative_elbo: Callable[[dict[str, Tensor]], Tensor], names: list[str]) -> dict[str, Tensor]:
    """d negative_elbo / d (unconstrained param) at the param store's current values.

    Args:
        negative_elbo: the closed-form -ELBO as a function of the constrained params, by name.
        names: the params to differentiate.
    """
    unconstrained = {name: params.unconstrained(name).detach().clone().requires_grad_(True) for name in names}
    constrained = {name: torch.distributions.transform_to(params.constraint(name))(value) for name, value in unconstrained.items()}
    grads = torch.autograd.grad(negative_elbo(constrained), list(unconstrained.values()))
    return {name: grad.detach() for name, grad in zip(names, grads)}


def exact_elbo(model: Callable, guide: Callable, *args, **kwargs) -> Tensor:
    """E_q[log p(x, z) - log q(z)] exactly (scales, masks and subsampling as the traces apply them).

    Exact when (i) the guide's continuous sites are affine in the standard normal noise torch draws
    for them (Normal, MultivariateNormal, their AutoGuides, Delta sites, transforms whose Jacobian
    cancels against the model's) and log p - log q is at most quadratic in that noise, and (ii) the
    discrete guide sites have a small joint support that does not depend on the noise. The Gaussian
    expectation uses the 2D symmetric sigma points eps = +-sqrt(D) e_j (their mean of eps eps^T is the
    identity and odd moments vanish, so every quadratic is integrated exactly); discrete sites are
    summed over their joint support with weights q(c). Differentiable in the params.
    """
    sizes = []
    with noise_from(lambda shape, dtype=None, device=None: sizes.append(int(torch.Size(shape).numel())) or torch.zeros(shape)):
        dry_run = poutine.trace(guide).get_trace(*args, **kwargs)
    num_noise = sum(sizes)
    discrete = [
        site
        for site in dry_run.nodes.values()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
        and site["fn"].support.is_discrete
    ]
    supports = [site["fn"].enumerate_support(expand=True) for site in discrete]  # (K, *batch)
    element_choices = []  # one entry per (site, batch element): its K possible values
    for site, support in zip(discrete, supports):
        flat = support.reshape(support.shape[0], -1)
        element_choices += [(site["name"], index, flat[:, index]) for index in range(flat.shape[1])]
    if num_noise:
        eye = torch.eye(num_noise, dtype=torch.float64) * math.sqrt(num_noise)
        points = torch.cat([eye, -eye])  # (2D, D)
    else:
        points = torch.zeros(1, 0, dtype=torch.float64)
    total = 0.0
    for choice in itertools.product(*[range(len(values)) for _, _, values in element_choices]):
        config = {site["name"]: support[0].clone() for site, support in zip(discrete, supports)}
        for (name, index, values), k in zip(element_choices, choice):
            config[name].reshape(-1)[index] = values[k]
        elbo = 0.0
        for point in points:
            position = [0]

            def draw(shape, dtype=None, device=None, point=point, position=position):
                size = int(torch.Size(shape).numel())
                value = point[position[0] : position[0] + size].reshape(shape)
                position[0] += size
                return value.to(torch.get_default_dtype())

            with noise_from(draw):
                guide_trace = poutine.trace(poutine.condition(guide, data=config)).get_trace(*args, **kwargs)
            for name in config:
                guide_trace.nodes[name]["is_observed"] = False  # replayed into the model as a latent
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
            guide_trace, model_trace = prune_subsample_sites(guide_trace), prune_subsample_sites(model_trace)
            guide_trace.compute_log_prob()
            model_trace.compute_log_prob()
            elbo = elbo + model_trace.log_prob_sum() - guide_trace.log_prob_sum()
        weight = 1.0
        if config:
            weight = torch.exp(sum(guide_trace.nodes[name]["unscaled_log_prob"].sum() for name in config))
        total = total + weight * elbo / len(points)
    return total


def exact_elbo_gradient(model: Callable, guide: Callable, *args, **kwargs) -> dict[str, Tensor]:
    """d(-ELBO)/d(unconstrained param) for every param the guide and model read, by autograd
    through ``exact_elbo``."""
    names, tensors = params.discover(model, guide, *args, **kwargs)
    grads = torch.autograd.grad(-exact_elbo(model, guide, *args, **kwargs), tensors, allow_unused=True)
    return {name: torch.zeros_like(tensor) if g is None else g.detach() for name, tensor, g in zip(names, tensors, grads)}


class noise_from:
    """Inside the block, torch's and Pyro's ``_standard_normal`` (the noise of every Gaussian
    rsample) returns ``draw(shape, dtype=dtype, device=device)``; put back after.

    Args:
        draw: ``(shape, dtype, device) -> Tensor`` of standard normal noise (or any values to push
            through rsample); ``torch.randn`` draws out of place, which vmap batches.
    """

    def __init__(self, draw):
        self.draw = draw

    def __enter__(self):
        self._block = params.standard_normal_replaced(self.draw)
        self._block.__enter__()
        return self

    def __exit__(self, *exc):
        return self._block.__exit__(*exc)
