"""Evaluation of a fitted VAE: the ELBO split into reconstruction and KL, per image in nats.

    ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z))
              `---- recon ----'   `------ kl ------'

The KL between the Gaussian encoder and the N(0, I) prior is closed form; the reconstruction term
is a Monte Carlo average over ``num_samples`` draws of z. A VAE whose KL is ~0 has collapsed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import kl_divergence


class ElboTerms(NamedTuple):
    """Averages per datapoint, in nats."""

    elbo: float
    recon: float
    kl: float


@torch.no_grad()
def elbo_terms(vae, images: Tensor, batch_size: int = 1000, num_samples: int = 1) -> ElboTerms:
    """ELBO, reconstruction and analytic KL of ``vae`` on ``images``, averaged per image."""
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
