"""Pyro ports of posteriordb's linear regressions: near-Gaussian posteriors (diamonds excepted: its 24
correlated predictors make it the hard one).

Each model takes the posterior's data as keyword arguments under their Stan names (the entries of
``data/data/<data>.json.zip``; entries the Stan model does not read are ignored) and samples every
parameter under its Stan name (``beta``: ``beta[1]`` ... as posteriordb names the draws). Where the
Stan model leaves a parameter flat (no prior statement), the port puts a wide proper prior on it,
``Normal(0, 1000)`` on coefficients and ``HalfNormal(1000)`` on a positive scale: at these data's
scales it moves no posterior mean by a visible fraction of its sd. Vectorized draws broadcast: a
global ``beta`` may carry batch dims left of the ``data`` plate (``(particles, 1, D)``).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

__all__ = ["WIDE_SCALE", "linear_predictor", "kidscore_momiq", "kidscore_interaction_c", "logmesquite_logvas", "logearn_interaction", "nes",
           "blr", "diamonds"]

WIDE_SCALE = 1000.0  # the sd of the proper priors standing in for Stan's flat ones


def linear_predictor(predictors: Tensor, coefficients: Tensor) -> Tensor:
    """predictors (N, D) times coefficients (D,) -> (N,); vectorized coefficients (..., 1, D), whose
    singleton is the ``data`` plate's dim, -> (..., N), without an (..., N, D) intermediate."""
    if coefficients.dim() == 1:
        return predictors @ coefficients
    return (predictors @ coefficients.transpose(-1, -2)).squeeze(-1)


def _regression(outcome: Tensor, predictors: Tensor, beta_prior: dist.Distribution, sigma_prior: dist.Distribution,
                outcome_name: str) -> None:
    """beta ~ beta_prior;  sigma ~ sigma_prior;  outcome_n ~ N(predictors_n . beta, sigma)."""
    beta = pyro.sample("beta", beta_prior.expand([predictors.shape[-1]]).to_event(1))  # (..., 1, D)
    sigma = pyro.sample("sigma", sigma_prior)  # (..., 1)
    with pyro.plate("data", predictors.shape[0]):
        pyro.sample(outcome_name, dist.Normal(linear_predictor(predictors, beta), sigma), obs=outcome)


def _flat(like: Tensor) -> tuple[dist.Distribution, dist.Distribution]:
    """The wide proper priors standing in for flat ones: (coefficients, positive scale)."""
    return dist.Normal(like.new_zeros(()), WIDE_SCALE), dist.HalfNormal(like.new_tensor(WIDE_SCALE))


def _with_intercept(*columns: Tensor) -> Tensor:
    """(N, 1 + len(columns)): a column of ones, then the columns."""
    return torch.stack([torch.ones_like(columns[0]), *columns], dim=-1)


def kidscore_momiq(kid_score: Tensor, mom_iq: Tensor, **_unused) -> None:
    """kidiq-kidscore_momiq: kid_score ~ N(beta[1] + beta[2] mom_iq, sigma); beta flat (wide), sigma ~ half-Cauchy(2.5)."""
    coefficient, _ = _flat(kid_score)
    _regression(kid_score, _with_intercept(mom_iq), coefficient, dist.HalfCauchy(kid_score.new_tensor(2.5)), "kid_score")


def kidscore_interaction_c(kid_score: Tensor, mom_hs: Tensor, mom_iq: Tensor, **_unused) -> None:
    """kidiq_with_mom_work-kidscore_interaction_c: centred mom_hs, mom_iq and their product; beta and sigma flat (wide)."""
    c_mom_hs, c_mom_iq = mom_hs - mom_hs.mean(), mom_iq - mom_iq.mean()
    _regression(kid_score, _with_intercept(c_mom_hs, c_mom_iq, c_mom_hs * c_mom_iq), *_flat(kid_score), "kid_score")


def logmesquite_logvas(weight: Tensor, diam1: Tensor, diam2: Tensor, canopy_height: Tensor, total_height: Tensor,
                       density: Tensor, group: Tensor, **_unused) -> None:
    """mesquite-logmesquite_logvas: log weight on log canopy volume, area, shape, total height, density
    and group; beta (7) and sigma flat (wide)."""
    predictors = _with_intercept(torch.log(diam1 * diam2 * canopy_height), torch.log(diam1 * diam2), torch.log(diam1 / diam2),
                                 torch.log(total_height), torch.log(density), group)
    _regression(torch.log(weight), predictors, *_flat(weight), "log_weight")


def logearn_interaction(earn: Tensor, height: Tensor, male: Tensor, **_unused) -> None:
    """earnings-logearn_interaction: log earn ~ N(beta . (1, height, male, height male), sigma); beta and sigma flat (wide)."""
    _regression(torch.log(earn), _with_intercept(height, male, height * male), *_flat(earn), "log_earn")


def nes(partyid7: Tensor, real_ideo: Tensor, race_adj: Tensor, educ1: Tensor, gender: Tensor, income: Tensor,
        age_discrete: Tensor, **_unused) -> None:
    """nes1976-nes: party id on ideology, race, age group (30-44, 45-64, 65+ against under 30), education,
    gender and income; beta (9) and sigma flat (wide)."""
    age = age_discrete.round()
    predictors = _with_intercept(real_ideo, race_adj, (age == 2).to(real_ideo.dtype), (age == 3).to(real_ideo.dtype),
                                 (age == 4).to(real_ideo.dtype), educ1, gender, income)
    _regression(partyid7, predictors, *_flat(partyid7), "partyid7")


def blr(X: Tensor, y: Tensor, **_unused) -> None:
    """sblrc-blr: beta ~ N(0, 10) (D of them), sigma ~ half-N(0, 10), y ~ N(X beta, sigma)."""
    _regression(y, X, dist.Normal(y.new_zeros(()), 10.0), dist.HalfNormal(y.new_tensor(10.0)), "y")


def diamonds(Y: Tensor, X: Tensor, prior_only: int = 0, **_unused) -> None:
    """diamonds-diamonds (brms): Y ~ N(Intercept + Xc b, sigma), Xc the centred predictors (X without its
    intercept column); b ~ N(0, 1), Intercept ~ Student-t(3, 8, 10), sigma ~ half-Student-t(3, 0, 10)."""
    predictors = X[:, 1:] - X[:, 1:].mean(0)  # (N, K - 1)
    b = pyro.sample("b", dist.Normal(Y.new_zeros(predictors.shape[-1]), 1.0).to_event(1))  # (..., 1, K - 1)
    intercept = pyro.sample("Intercept", dist.StudentT(Y.new_tensor(3.0), 8.0, 10.0))  # (..., 1)
    sigma = pyro.sample("sigma", dist.FoldedDistribution(dist.StudentT(Y.new_tensor(3.0), 0.0, 10.0)))
    if not int(prior_only):
        with pyro.plate("data", predictors.shape[0]):
            pyro.sample("Y", dist.Normal(intercept + linear_predictor(predictors, b), sigma), obs=Y)
