"""Evaluation of a fitted VAE, per image in nats: the ELBO split into reconstruction and KL,
log p(x) by importance sampling (IWAE bound), active units, and the amortization and
approximation gaps::

    ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z))
              `---- recon ----'   `------ kl ------'

The KL between the Gaussian encoder and the N(0, I) prior is closed form; the reconstruction term
is a Monte Carlo average over ``num_samples`` draws of z. A VAE whose KL is ~0 has collapsed.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import kl_divergence

from pyro_vi.errors import ConfigError, DataError

__all__ = ["ElboTerms", "elbo_terms", "iwae_log_likelihood", "ActiveUnits", "active_units", "Gaps", "gaps"]


def _check_counts(**counts: int) -> None:
    """Each count a positive integer (``num_samples=0`` would average nothing: NaN)."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _check_images(images) -> None:
    if not torch.is_tensor(images) or images.dim() != 2 or images.shape[0] == 0:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise DataError(f"images must be a non-empty (num_images, pixels) tensor, got {shape}")


class ElboTerms(NamedTuple):
    """Averages per datapoint, in nats."""

    elbo: float
    recon: float
    kl: float


@torch.no_grad()
def elbo_terms(vae, images: Tensor, batch_size: int = 1000, num_samples: int = 1) -> ElboTerms:
    """ELBO, reconstruction and analytic KL of ``vae`` on ``images``, averaged per image."""
    _check_counts(batch_size=batch_size, num_samples=num_samples)
    _check_images(images)
    recon_total, kl_total = 0.0, 0.0
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        q = vae.posterior(x)
        z = q.rsample((num_samples,))  # (num_samples, batch, z_dim)
        recon = vae.likelihood(vae.decoder(z)).log_prob(x).mean(0)  # (batch,)
        kl = kl_divergence(q, vae.prior(x.shape[0], x))  # (batch,)
        recon_total += float(recon.sum())
        kl_total += float(kl.sum())
    num = images.shape[0]
    return ElboTerms(elbo=(recon_total - kl_total) / num, recon=recon_total / num, kl=kl_total / num)


# ----------------------------------------------------------------------------------------------
# log p(x) by importance sampling, active units, and the gaps of Cremer et al. (2018)
#
#     log p(x) - ELBO(encoder q) = [log p(x) - ELBO(q*)] + [ELBO(q*) - ELBO(encoder q)]
#                                   approximation gap      amortization gap
#
# q* is the best Gaussian q for each x found by optimizing its (loc, scale) directly: the better
# (on average) of refinement from the encoder's q and mean-field optimization from the prior.
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def iwae_log_likelihood(
    vae, images: Tensor, num_samples: int = 5000, chunk_size: int = 250, batch_size: int = 100
) -> Tensor:
    """log p(x) per image (nats) by importance sampling with the encoder as proposal: L_k, k = ``num_samples``.

    Memory is O(chunk_size x batch_size x pixels); time O(num_samples x num_images).

    Raises:
        ConfigError: a count that is not a positive integer.  DataError: no images.
    """
    _check_counts(num_samples=num_samples, chunk_size=chunk_size, batch_size=batch_size)
    _check_images(images)
    from pyro_vi.estimators import importance

    estimates = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        estimate = importance.importance_estimate(
            vae.model, vae.guide, x, num_samples=num_samples, chunk_size=chunk_size, plate_name="data"
        )
        estimates.append(estimate.log_marginal)
    return torch.cat(estimates)


class ActiveUnits(NamedTuple):
    """How many latent dimensions the encoder uses (``active_units``)."""

    count: int  # latent dimensions with variance above the threshold
    variances: Tensor  # (z_dim,) Var_x(E_q[z_j | x])
    threshold: float


@torch.no_grad()
def active_units(vae, images: Tensor, threshold: float = 0.01, batch_size: int = 1000) -> ActiveUnits:
    """Burda et al. (2016): unit j is active if Var_x(E_q(z|x)[z_j]) > threshold (0.01)."""
    _check_counts(batch_size=batch_size)
    _check_images(images)
    means = torch.cat([vae.posterior(images[s : s + batch_size]).mean for s in range(0, images.shape[0], batch_size)])
    variances = means.var(0)
    return ActiveUnits(int((variances > threshold).sum()), variances, threshold)


class Gaps(NamedTuple):
    """Averages per image, in nats (``elbo_refined`` at each of ``refine_steps``)."""

    log_px: float
    elbo_amortized: float
    elbo_refined: list[float]  # one per refine step count; refine_steps[0] is always 0 (= elbo_amortized)
    elbo_meanfield: float  # local q optimized from the prior for meanfield_steps
    elbo_optimal: float  # the better of elbo_refined[-1] and elbo_meanfield
    optimal_local: str  # "refined" or "meanfield": which one is elbo_optimal
    approximation_gap: float  # log_px - elbo_optimal
    amortization_gap: float  # elbo_optimal - elbo_amortized
    refine_steps: list[int]  # the steps asked for, with 0 (the encoder's q) added if missing
    meanfield_steps: int
    iwae_k: int
    num_points: int
    log_px_per_point: Tensor  # (num_points,)
    elbo_refined_per_point: Tensor  # (len(refine_steps), num_points)


def gaps(
    vae,
    images: Tensor,
    iwae_k: int = 5000,
    refine_steps=(0, 1, 5, 20, 100),
    meanfield_steps: int = 500,
    learning_rate: float = 1e-2,
    elbo_samples: int = 100,
    refine_samples: int = 10,
    batch_size: int = 100,
    chunk_size: int = 250,
) -> Gaps:
    """log p(x), the amortized / refined / mean-field ELBOs, and the two gaps on ``images``.

    Args:
        vae: a trained VAE (encoder and decoder).
        images: (num_points, pixels), already binarized.
        iwae_k: proposals per image for log p(x).
        refine_steps: the step counts at which the semi-amortized ELBO is recorded; step 0 (the
            encoder's q, which ``elbo_amortized`` is) is always recorded too, asked for or not.
        meanfield_steps: steps of the from-the-prior mean-field optimization.
        learning_rate: Adam's step size for both local optimizations.
        elbo_samples: draws per image for each recorded ELBO (analytic KL).
        refine_samples: draws per image per refinement gradient step; a fixed step size leaves
            the refined q jittering around its optimum, costing ELBO that shrinks with more draws.
    """
    from pyro_vi.local import model as local

    _check_counts(iwae_k=iwae_k, elbo_samples=elbo_samples, refine_samples=refine_samples, batch_size=batch_size,
                  chunk_size=chunk_size)
    _check_images(images)
    if isinstance(meanfield_steps, bool) or not isinstance(meanfield_steps, numbers.Integral) or meanfield_steps < 0:
        raise ConfigError(f"meanfield_steps must be an integer >= 0, got {meanfield_steps!r}")
    if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0 for s in refine_steps):
        raise ConfigError(f"refine_steps must be integers >= 0, got {refine_steps!r}")
    if not (isinstance(learning_rate, numbers.Real) and 0 < learning_rate < math.inf):
        raise ConfigError(f"learning_rate must be positive and finite, got {learning_rate!r}")
    refine_steps = sorted({0} | {int(s) for s in refine_steps})  # refined[0] is the encoder's q
    log_px, refined, meanfield = [], [], []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]

        def evaluate(loc, scale, x=x):
            return local.elbo_per_datapoint(vae, x, loc, scale, num_samples=elbo_samples)

        with torch.no_grad():
            q = vae.posterior(x)
            loc, scale = q.base_dist.loc, q.base_dist.scale
        refined.append(local.refine(vae, x, loc, scale, refine_steps, learning_rate, refine_samples, evaluate).elbo)
        prior_loc, prior_scale = torch.zeros_like(loc), torch.ones_like(scale)
        meanfield.append(
            local.refine(vae, x, prior_loc, prior_scale, (meanfield_steps,), learning_rate, refine_samples, evaluate).elbo[-1]
        )
        log_px.append(iwae_log_likelihood(vae, x, iwae_k, chunk_size, batch_size))
    log_px, refined, meanfield = torch.cat(log_px), torch.cat(refined, dim=1), torch.cat(meanfield)
    elbo_amortized = float(refined[0].mean())
    elbo_refined = [float(r.mean()) for r in refined]
    elbo_meanfield = float(meanfield.mean())
    optimal_local = "refined" if elbo_refined[-1] >= elbo_meanfield else "meanfield"
    elbo_optimal = max(elbo_refined[-1], elbo_meanfield)
    return Gaps(
        log_px=float(log_px.mean()),
        elbo_amortized=elbo_amortized,
        elbo_refined=elbo_refined,
        elbo_meanfield=elbo_meanfield,
        elbo_optimal=elbo_optimal,
        optimal_local=optimal_local,
        approximation_gap=float(log_px.mean()) - elbo_optimal,
        amortization_gap=elbo_optimal - elbo_amortized,
        refine_steps=refine_steps,
        meanfield_steps=int(meanfield_steps),
        iwae_k=int(iwae_k),
        num_points=int(images.shape[0]),
        log_px_per_point=log_px,
        elbo_refined_per_point=refined,
    )
