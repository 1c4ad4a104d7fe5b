"""``check(model, guide, *args)``: did VI work? Pareto-smoothed importance sampling on the guide's draws.

Yao, Vehtari, Simpson and Gelman (2018), "Yes, but did it work?": draw z_s ~ q, s = 1..S, weight
them by w_s = p(x, z_s) / q(z_s), and fit a generalized Pareto tail to the largest weights
(``arviz.psislw``). Its shape k-hat says whether q is usable as an importance proposal for the
posterior, and so whether q's own summaries can be trusted:

    k-hat < 0.5         good: q is close; PSIS estimates converge quickly
    0.5 <= k-hat < 0.7  ok with care: PSIS-corrected means and sds are usable, q's own are suspect
    k-hat >= 0.7        unreliable: neither q nor PSIS can be trusted

(Weights that are equal to float rounding, q being the posterior itself, have no tail to fit:
k-hat is reported as 0.)

Also: the ELBO mean(log w_s) and the importance-weighted bound log mean(w_s) (both <= log p(x)),
each with its Monte Carlo standard error, the effective sample size of the weights, and per
latent element (``theta[1]``, 1-based, as posteriordb names them; matrices ``name[i,j]``) q's mean
and sd and, where k-hat < 0.7, the PSIS-corrected mean and sd. With ``reference`` draws (e.g.
posteriordb's), also the reference mean and sd, q's mean error in reference sds and the sd ratio
q / reference.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyro

from pyro_vi.diagnostics import draws as _draws
from pyro_vi.errors import ConfigError

__all__ = ["KHAT_GOOD", "KHAT_USABLE", "CheckResult", "ParameterSummary", "check", "element_names", "verdict"]

KHAT_GOOD = 0.5  # below: q is a good proposal
KHAT_USABLE = 0.7  # below: PSIS-corrected estimates are usable; above: unreliable


def verdict(khat: float) -> str:
    """``"good"`` (k-hat < 0.5), ``"ok with care"`` (< 0.7) or ``"unreliable"``."""
    if khat < KHAT_GOOD:
        return "good"
    if khat < KHAT_USABLE:
        return "ok with care"
    return "unreliable"


@dataclass
class ParameterSummary:
    """One scalar element of a latent (or deterministic) site: q's summaries, and the reference's."""

    name: str  # "mu", "theta[3]", "L[1,2]"
    q_mean: float
    q_sd: float
    psis_mean: float | None = None  # PSIS-corrected, when k-hat < 0.7
    psis_sd: float | None = None
    ref_mean: float | None = None
    ref_sd: float | None = None
    mean_error_sd: float | None = None  # (q_mean - ref_mean) / ref_sd
    sd_ratio: float | None = None  # q_sd / ref_sd

    def to_dict(self) -> dict:
        """The fields that are set, for ``check.json``."""
        return {key: value for key, value in vars(self).items() if value is not None}


@dataclass
class CheckResult:
    """What :func:`check` found. ``draws``: site -> ``(num_samples, *shape)`` array; ``log_weights``: ``(num_samples,)``."""

    khat: float
    verdict: str
    elbo: float
    elbo_standard_error: float
    iw_elbo: float  # log mean_s w_s: the importance-weighted bound
    iw_elbo_standard_error: float
    effective_sample_size: float  # (sum w)^2 / sum w^2 of the raw weights
    psis_effective_sample_size: float  # the same of the Pareto-smoothed weights
    num_samples: int
    vectorized: bool
    parameters: list = field(default_factory=list)  # ParameterSummary per element
    draws: dict = field(default_factory=dict, repr=False)
    log_weights: np.ndarray = field(default=None, repr=False)
    smoothed_log_weights: np.ndarray = field(default=None, repr=False)  # normalized: logsumexp = 0
    reference: dict = field(default_factory=dict, repr=False)  # element name -> reference draws used

    def element_draws(self) -> dict:
        """Element name -> (num_samples,) draws of q, for every parameter."""
        out = {}
        for site, values in self.draws.items():
            flat = values.reshape(values.shape[0], -1)
            for index, name in enumerate(element_names(site, values.shape[1:])):
                out[name] = flat[:, index]
        return out

    def to_dict(self) -> dict:
        """``check.json``'s content: k-hat and verdict, the bounds, the ESS, and ``parameters``."""
        return {"khat": self.khat, "verdict": self.verdict, "elbo": self.elbo, "elbo_standard_error": self.elbo_standard_error,
                "iw_elbo": self.iw_elbo, "iw_elbo_standard_error": self.iw_elbo_standard_error,
                "effective_sample_size": self.effective_sample_size,
                "psis_effective_sample_size": self.psis_effective_sample_size, "num_samples": self.num_samples,
                "vectorized": self.vectorized, "parameters": [row.to_dict() for row in self.parameters]}

    def to_inference_data(self):
        """The guide's draws as ArviZ ``InferenceData`` (one chain; the log weights in ``sample_stats``)."""
        az = arviz()
        posterior = {site: values[None] for site, values in self.draws.items()}
        return az.from_dict(posterior=posterior, sample_stats={"log_weight": self.log_weights[None]})

    def summary(self) -> str:
        """A few lines for a terminal: k-hat, bounds, ESS, and the worst-matching parameters."""
        lines = [f"k-hat {self.khat:.2f} ({self.verdict}); ELBO {self.elbo:.4g} +- {self.elbo_standard_error:.2g}, "
                 f"IW bound {self.iw_elbo:.4g} +- {self.iw_elbo_standard_error:.2g}; ESS {self.effective_sample_size:.0f} "
                 f"of {self.num_samples}"]
        compared = [row for row in self.parameters if row.mean_error_sd is not None]
        if compared:
            worst = max(compared, key=lambda row: abs(row.mean_error_sd))
            ratios = [row.sd_ratio for row in compared]
            lines.append(f"vs reference: max |mean error| {abs(worst.mean_error_sd):.3f} sd ({worst.name}), "
                         f"sd ratio {min(ratios):.3f} to {max(ratios):.3f}")
        return "\n".join(lines)


def arviz():
    """``import arviz`` with its refactor notice (a FutureWarning at 0.23's import) silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
        import arviz as az
    return az


def element_names(site: str, shape) -> list[str]:
    """``site`` for a scalar, else ``site[i]`` / ``site[i,j]`` (1-based, row-major), as posteriordb names them."""
    shape = tuple(shape)
    if not shape:
        return [site]
    return [f"{site}[{','.join(str(i + 1) for i in index)}]" for index in np.ndindex(*shape)]


def check(model: Callable, guide: Callable, *args, num_samples: int = 4000, reference: dict | None = None,
          seed: int | None = None, vectorize: bool | None = None, **kwargs) -> CheckResult:
    """Draw ``num_samples`` times from the guide (at its current params), weight by the model, run PSIS.

    Args:
        model, guide: a Pyro model and guide, called ``model(*args, **kwargs)`` as SVI calls them.
        num_samples: draws from q (4000 gives k-hat to about +-0.05 where it matters).
        reference: optional ``{element name: 1-D draws}`` of the posterior (``theta[1]``, ``mu``, ...).
        seed: seeds Pyro's RNGs first (``pyro.set_rng_seed``), for repeatable draws.
        vectorize: None draws under a particle plate where the model broadcasts, else one by one;
            True insists on the plate, False always loops.

    Returns:
        ``CheckResult``.

    Raises:
        ConfigError: ``num_samples`` below 10, a reference name the model does not produce, or a
            model/guide that cannot be importance-weighted (enumerated sites, sites missing from
            the guide, subsampling).
    """
    if num_samples < 10:
        raise ConfigError(f"num_samples must be at least 10 for a Pareto tail fit, got {num_samples}")
    if seed is not None:
        pyro.set_rng_seed(seed)
    drawn = _draws.draw(model, guide, args, kwargs, num_samples, vectorize=vectorize)
    log_weights = drawn.log_weights.numpy()
    if not np.isfinite(log_weights).all():
        bad = int((~np.isfinite(log_weights)).sum())
        raise ConfigError(f"{bad} of {num_samples} log weights are not finite: the guide puts mass where the model "
                          "has none (a support mismatch); check the guide's constraints")
    smoothed, khat = arviz().psislw(log_weights.copy())
    # Weights equal to float rounding (q is the posterior): no tail to fit (arviz gives inf); IS is exact.
    khat = 0.0 if np.ptp(log_weights) <= 1e-6 * max(1.0, abs(float(log_weights.mean()))) else float(khat)
    draws = {site: values.to(dtype=values.dtype if values.is_floating_point() else None).numpy().astype(np.float64)
             for site, values in drawn.values.items()}
    result = CheckResult(
        khat=khat, verdict=verdict(khat), **_bounds(log_weights),
        psis_effective_sample_size=float(1.0 / np.exp(2 * smoothed).sum()),
        num_samples=num_samples, vectorized=drawn.vectorized, draws=draws, log_weights=log_weights,
        smoothed_log_weights=smoothed,
    )
    weights = np.exp(smoothed) if khat < KHAT_USABLE else None
    elements = result.element_draws()
    if reference is not None:
        missing = [name for name in reference if name not in elements]
        if missing:
            produced = ", ".join(list(elements)[:12]) + (", ..." if len(elements) > 12 else "")
            raise ConfigError(f"reference parameter {missing[0]!r} is not produced by the model (its latent and "
                              f"deterministic sites give {produced}); rename it or leave it out")
        result.reference = {name: np.asarray(values, dtype=np.float64).reshape(-1) for name, values in reference.items()}
    for name, values in elements.items():
        row = ParameterSummary(name, float(values.mean()), float(values.std(ddof=1)))
        if weights is not None:
            row.psis_mean = float(weights @ values)
            row.psis_sd = float(math.sqrt(max(weights @ (values - row.psis_mean) ** 2, 0.0)))
        if name in result.reference:
            ref = result.reference[name]
            row.ref_mean, row.ref_sd = float(ref.mean()), float(ref.std(ddof=1))
            if row.ref_sd > 0:
                row.mean_error_sd = (row.q_mean - row.ref_mean) / row.ref_sd
                row.sd_ratio = row.q_sd / row.ref_sd
        result.parameters.append(row)
    return result


def _bounds(log_weights: np.ndarray) -> dict:
    """ELBO, IW bound (log-mean-exp) and their standard errors (the IW one by the delta method), raw ESS."""
    count = log_weights.size
    ratios = np.exp(log_weights - log_weights.max())  # w / max w
    mean_ratio = ratios.mean()
    return {
        "elbo": float(log_weights.mean()),
        "elbo_standard_error": float(log_weights.std(ddof=1) / math.sqrt(count)),
        "iw_elbo": float(log_weights.max() + math.log(mean_ratio)),
        # se(log mean w) ~ se(mean w) / mean w = sd(w) / (sqrt(S) mean w)
        "iw_elbo_standard_error": float(ratios.std(ddof=1) / (math.sqrt(count) * mean_ratio)),
        "effective_sample_size": float(ratios.sum() ** 2 / (ratios**2).sum()),
    }
