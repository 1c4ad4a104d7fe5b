"""SVI for the Gaussian mixture: gradient ascent on the ELBO that EM climbs coordinate-wise.

Two guides from ``pyro_vi.mixture.model``:

``map``        point masses on the globals, ``z`` summed out exactly (TraceEnum_ELBO): the ELBO is
               log p(x | theta) + log p(theta), i.e. the log-likelihood under flat priors.
``bayesian``   Dirichlet/Normal/LogNormal factors and a sampled Categorical q_n(z) per point; the
               gradient in the q_n parameters is a score-function estimate (``loss="tracegraph"``,
               TraceGraph_ELBO, by default, which uses the "data" plate to give each q_n only its
               own point's cost; ``"trace"`` is Trace_ELBO).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO
from torch import Tensor

from pyro_vi import engine
from pyro_vi.engine.step import reads_only
from pyro_vi.mixture import em as mixture_em
from pyro_vi.errors import ConfigError
from pyro_vi.mixture import model as gmm
from pyro_vi.mixture.model import MixtureParams, Prior

__all__ = ["GUIDES", "LOSSES", "SVIResult", "run_svi", "fit_svi"]

# The guides, and the Pyro losses that can train the Bayesian one (named as pyro-vi fit's --loss).
GUIDES = ("map", "bayesian")
LOSSES = {"trace": Trace_ELBO, "tracegraph": TraceGraph_ELBO}


class SVIResult(NamedTuple):
    """The best restart's fit; histories are per step and per data point."""

    params: MixtureParams  # MAP values, or the Bayesian guide's point estimate
    elbos: list[float]  # ELBO / num_data before each step
    steps: int
    snapshots: dict[int, MixtureParams]  # point estimate after the requested steps (0 = init)
    assignment_probabilities: Tensor  # (num_data, K): E-step at params (map) or q_n (bayesian)
    restart_elbos: list[float]  # final ELBO / num_data of every restart
    compiled_steps: int = 0  # steps taken by the recorded program (``pyro_vi.fit``'s compile)


def run_svi(
    data: Tensor,
    initial: MixtureParams,
    guide: str = "map",
    prior: Prior | None = None,
    num_steps: int = 1000,
    learning_rate: float = 0.05,
    loss: str = "tracegraph",
    target_elbo: float | None = None,
    target_rtol: float = 0.005,
    record_steps: Sequence[int] = (),
    initial_assignments: Tensor | None = None,
    compile: bool | str | None = None,
) -> SVIResult:
    """Adam on the ELBO from ``initial``, in a fresh param store.

    ``initial_assignments`` ``(num_data, K)`` starts the Bayesian guide's q_n there instead of uniform
    (``gmm.assignment_probabilities(data, initial)`` is the E-step: the best q_n for ``initial``).

    Stops after ``num_steps``, or as soon as the per-point ELBO is within ``target_rtol`` (relative)
    of ``target_elbo`` when that is given (how the benchmark times "SVI until as good as EM").

    ``compile`` is ``pyro_vi.fit``'s. Its default (None) records the step when ``num_steps`` is long,
    except when ``target_elbo`` is given: such a run usually stops within tens of steps (30 at
    N = 100,000, K = 5), too few to repay the recording (about 0.75 s there, a dozen plain steps).
    """
    num_components = initial.weights.shape[-1]
    covariance = initial.covariance_type
    pyro.clear_param_store()
    if guide == "map":
        model, guide_fn = gmm.enumerated_model, gmm.make_map_guide(initial)
        elbo = TraceEnum_ELBO(max_plate_nesting=1)
    elif guide == "bayesian":
        if prior is None:
            raise ConfigError("the Bayesian guide needs proper priors; pass a Prior (e.g. Prior.from_data)")
        if loss not in LOSSES:
            raise ConfigError(f"unknown loss {loss!r} for the Bayesian guide; choose one of {', '.join(LOSSES)}")
        model, guide_fn = gmm.model, gmm.make_bayesian_guide(initial, data.shape[0], initial_assignments)
        elbo = LOSSES[loss]()
    else:
        raise ConfigError(f"unknown guide {guide!r}; choose one of {', '.join(GUIDES)}")
    num_data = data.shape[0]
    snapshots = {0: initial} if 0 in record_steps else {}

    @reads_only  # it reads the params and stops early: fit's default compile still applies
    def after_step(step: int, loss: float | None) -> bool:
        if step in record_steps:
            snapshots[step] = _point_estimate(guide, guide_fn, covariance)
        elbo = -loss / num_data if loss is not None else math.nan
        return target_elbo is not None and abs(elbo - target_elbo) <= target_rtol * abs(target_elbo)

    if compile is None:  # the built-in family records where it pays (its tests show equality with the plain run)
        compile = False if target_elbo is not None else "auto"
    result = engine.fit(
        model, guide_fn, data, num_components, covariance, prior,
        num_steps=num_steps, loss=elbo, optim=pyro.optim.Adam({"lr": learning_rate}),
        callback=after_step, progress=False, compile=compile,
    )
    elbos, step = [-loss / num_data for loss in result.losses], result.steps
    params = _point_estimate(guide, guide_fn, covariance)
    if guide == "map":
        probabilities = gmm.assignment_probabilities(data, params)
    else:
        probabilities = gmm.bayesian_assignment_probabilities()
    return SVIResult(params, elbos, step, snapshots, probabilities, [elbos[-1]], result.compiled_steps)


def _point_estimate(guide: str, guide_fn, covariance: str) -> MixtureParams:
    if guide == "map":
        with torch.no_grad():
            return MixtureParams.from_sites({name: value.detach() for name, value in guide_fn.median().items()})
    return gmm.bayesian_point_estimate(covariance)


def fit_svi(
    data: Tensor,
    num_components: int,
    covariance: str = "full",
    guide: str = "map",
    init: str = "kmeans++",
    num_restarts: int = 1,
    seed: int = 0,
    prior: Prior | None = None,
    num_steps: int = 1000,
    learning_rate: float = 0.05,
    loss: str = "tracegraph",
    reg_covar: float = 1e-6,
    record_steps: Sequence[int] = (),
) -> SVIResult:
    """Best (highest final ELBO) of ``num_restarts`` SVI runs, each from its own ``init`` draw,
    drawn exactly as ``mixture_em.fit_em`` draws them for the same ``seed``."""
    mixture_em.validate_options(data, num_components, covariance, num_restarts)
    generator = torch.Generator().manual_seed(seed)
    best, finals = None, []
    for restart in range(num_restarts):
        initial = mixture_em.initialize(data, num_components, covariance, init, generator, reg_covar)
        pyro.set_rng_seed(seed + restart)
        result = run_svi(data, initial, guide, prior, num_steps, learning_rate, loss, record_steps=record_steps)
        finals.append(result.elbos[-1])
        if best is None or result.elbos[-1] > best.elbos[-1]:
            best = result
    return best._replace(restart_elbos=finals)
