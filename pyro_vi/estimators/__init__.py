"""Gradient estimators of the ELBO and the lab that measures them.

The estimators, chosen by name (``get_estimator("rloo", num_particles=4)``), one module per family:

* :mod:`~pyro_vi.estimators.base`                 ``ESTIMATORS``, ``get_estimator``, ``GradientEstimator``
* :mod:`~pyro_vi.estimators.pathwise`             reparam, stl, analytic-kl, gumbel
* :mod:`~pyro_vi.estimators.score`                score, score-naive, rloo, score-graph and its baselines
* :mod:`~pyro_vi.estimators.enumeration`          enum
* :mod:`~pyro_vi.estimators.importance_weighted`  iwae, dreg
* :mod:`~pyro_vi.estimators.traces`               the traces and per-particle surrogate they share

The lab:

* :mod:`~pyro_vi.estimators.importance`  importance weights, log p(x) estimates (IWAE bounds)
* :mod:`~pyro_vi.estimators.variance`    variance, SNR and bias of any estimator on any model/guide
* :mod:`~pyro_vi.estimators.vectorized`  its replicates as one ``vmap(grad(loss))`` pass
* :mod:`~pyro_vi.estimators.problems`    the lab's built-in problems with exact gradients
* :mod:`~pyro_vi.estimators.exact`       exact ELBOs and gradients of small model/guide pairs
* :mod:`~pyro_vi.estimators.toys`        one-dimensional toys with closed-form gradients
"""

from pyro_vi.estimators.base import ESTIMATORS, UNBIASED, GradientEstimator, get_estimator
from pyro_vi.estimators.enumeration import Enumeration
from pyro_vi.estimators.importance_weighted import DoublyReparameterized, ImportanceWeighted
from pyro_vi.estimators.pathwise import AnalyticKL, Pathwise, Relaxed, StickingTheLanding
from pyro_vi.estimators.score import (
    AverageBaseline, GraphScore, LeaveOneOut, NaiveScore, NetworkBaseline, ScoreFunction,
)

__all__ = [
    "ESTIMATORS",
    "UNBIASED",
    "get_estimator",
    "GradientEstimator",
    "Pathwise",
    "StickingTheLanding",
    "AnalyticKL",
    "ScoreFunction",
    "NaiveScore",
    "LeaveOneOut",
    "GraphScore",
    "AverageBaseline",
    "NetworkBaseline",
    "Enumeration",
    "Relaxed",
    "ImportanceWeighted",
    "DoublyReparameterized",
]

# the lab's modules, after the estimators they measure
from pyro_vi.estimators import exact, importance, problems, toys, variance, vectorized  # noqa: E402
