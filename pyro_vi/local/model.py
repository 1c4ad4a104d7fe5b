"""Per-datapoint (non-amortized) guides for the VAE's model, and semi-amortized refinement.

Mean-field VI gives every datapoint its own Gaussian::

    q(z_n) = N(loc_n, diag(scale_n^2)),   n = 1..N,

stored as two Pyro params of shape ``(num_data, z_dim)`` and indexed by the minibatch through
``pyro.plate("data", num_data, subsample=indices)``: expressive (no encoder to share), but each q_n
is only as good as the steps spent on it. Amortized VI predicts (loc_n, scale_n) = encoder(x_n);
semi-amortized VI starts from the encoder's prediction and takes K gradient steps on the ELBO of
each point (Kim et al. 2018; Cremer et al. 2018 use it to measure the amortization gap).

``refine`` optimizes a batch of local Gaussians with the decoder fixed. Every point's ELBO depends
only on its own (loc_n, scale_n), so one Adam step on the summed ELBO is a step for each point at
once; Adam's per-coordinate steps make the result independent of the batch.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from torch import Tensor

__all__ = ["LocalGuide", "RefinementResult", "elbo_per_datapoint", "refine"]


class LocalGuide:
    """q(z_n) = N(loc_n, diag(scale_n^2)) for each of ``num_data`` points: Pyro params
    ``<name>_loc`` and ``<name>_scale`` of shape (num_data, z_dim).

    Called like the VAE's guide, ``(x, indices, num_data, kl_weight)``; ``indices`` picks the
    minibatch's rows (all rows when ``None``).

    Args:
        num_data: how many datapoints own a q.
        z_dim: latent dimension.
        name: prefix of the Pyro param names.
        init_scale: initial scale of every q_n (locs start at 0: the prior's mean).
    """

    def __init__(self, num_data: int, z_dim: int, name: str = "local", init_scale: float = 1.0):
        self.num_data, self.z_dim, self.name, self.init_scale = int(num_data), int(z_dim), name, float(init_scale)

    def params(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The (num_data, z_dim) loc and scale params (created on ``like``'s device on first use)."""
        loc = pyro.param(f"{self.name}_loc", lambda: like.new_zeros(self.num_data, self.z_dim))
        scale = pyro.param(
            f"{self.name}_scale", lambda: like.new_full((self.num_data, self.z_dim), self.init_scale),
            constraint=constraints.positive,
        )
        return loc, scale

    def set(self, loc: Tensor, scale: Tensor, indices: Tensor | None = None) -> None:
        """Overwrite rows ``indices`` (all when ``None``) of the params, e.g. from an encoder."""
        current_loc, current_scale = self.params(loc)
        rows = slice(None) if indices is None else indices
        with torch.no_grad():
            current_loc.unconstrained()[rows] = loc
            current_scale.unconstrained()[rows] = scale.log()  # biject_to(positive) is exp

    def __call__(self, x: Tensor, indices: Tensor | None = None, num_data: int | None = None, kl_weight: float = 1.0):
        loc, scale = self.params(x)
        if indices is None:
            indices = torch.arange(x.shape[0], device=x.device)
        size = self.num_data if num_data is None else int(num_data)
        with pyro.plate("data", size, subsample=indices, device=x.device):
            with poutine.scale(scale=kl_weight):
                pyro.sample("z", dist.Normal(loc[indices], scale[indices]).to_event(1))


class RefinementResult(NamedTuple):
    """Per-datapoint ELBOs (nats) after each requested number of refinement steps."""

    steps: list[int]  # e.g. [0, 1, 5, 20, 100]
    elbo: Tensor  # (len(steps), num_data)
    loc: Tensor  # (num_data, z_dim) after the last step
    scale: Tensor  # (num_data, z_dim)


def elbo_per_datapoint(
    vae, x: Tensor, loc: Tensor, scale: Tensor, num_samples: int = 1, analytic_kl: bool = True
) -> Tensor:
    """Monte Carlo ELBO of q_n = N(loc_n, scale_n^2) for each row of ``x``: (num_data,).

    E_q[log p(x_n | z)] by ``num_samples`` reparameterized draws, minus KL(q_n || N(0, I)) in
    closed form (``analytic_kl``) or by the same draws. Differentiable in loc and scale.
    """
    q = dist.Normal(loc, scale).to_event(1)
    z = q.rsample((num_samples,))  # (num_samples, num_data, z_dim)
    log_likelihood = vae.likelihood(vae.decoder(z)).log_prob(x)  # (num_samples, num_data)
    prior = vae.prior(x.shape[0], x)
    if analytic_kl:
        return log_likelihood.mean(0) - torch.distributions.kl_divergence(q, prior)
    return (log_likelihood + prior.log_prob(z) - q.log_prob(z)).mean(0)


def refine(
    vae,
    x: Tensor,
    loc: Tensor,
    scale: Tensor,
    steps: Sequence[int] = (0, 1, 5, 20, 100),
    learning_rate: float = 1e-2,
    num_samples: int = 1,
    evaluate: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> RefinementResult:
    """Take gradient steps on each datapoint's ELBO over its own (loc_n, scale_n), decoder fixed.

    Args:
        vae: anything with ``decoder``, ``likelihood`` and ``prior`` (the VAE).
        x: (num_data, pixels) points to refine, e.g. a test batch.
        loc, scale: (num_data, z_dim) starting q's, e.g. the encoder's (semi-amortized) or the
            prior's (mean-field from scratch).
        steps: the step counts at which to record the ELBO (0 = the starting q).
        learning_rate: Adam's step size on (loc, log scale).
        num_samples: draws per point per gradient step.
        evaluate: ``evaluate(loc, scale) -> (num_data,)`` ELBOs to record; default a 100-draw
            ``elbo_per_datapoint`` with the analytic KL.

    Returns:
        RefinementResult with the recorded ELBOs and the final (loc, scale).
    """
    steps = sorted(set(int(s) for s in steps))
    if steps[0] < 0:
        raise ValueError(f"refinement steps must be >= 0, got {steps}")
    if evaluate is None:
        def evaluate(loc, scale):
            return elbo_per_datapoint(vae, x, loc, scale, num_samples=100)

    decoder_grad = [p.requires_grad for p in vae.decoder.parameters()]
    for p in vae.decoder.parameters():
        p.requires_grad_(False)
    try:
        loc = loc.detach().clone().requires_grad_()
        log_scale = scale.detach().log().clone().requires_grad_()
        optimizer = torch.optim.Adam([loc, log_scale], lr=learning_rate)
        recorded, taken = [], 0
        for target in steps:
            while taken < target:
                loss = -elbo_per_datapoint(vae, x, loc, log_scale.exp(), num_samples=num_samples).sum()
                # Gradients of (loc, log scale) only: a learned x_scale (a Pyro param) keeps no stale .grad.
                loc.grad, log_scale.grad = torch.autograd.grad(loss, [loc, log_scale])
                optimizer.step()
                taken += 1
            with torch.no_grad():
                recorded.append(evaluate(loc, log_scale.exp()))
    finally:
        for p, flag in zip(vae.decoder.parameters(), decoder_grad):
            p.requires_grad_(flag)
    return RefinementResult(steps, torch.stack(recorded), loc.detach(), log_scale.detach().exp())
