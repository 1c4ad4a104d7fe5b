"""Gradient estimators of the ELBO and the lab that measures them.

* :mod:`~pyro_vi.estimators.core`        the estimators, one class per family, chosen by name
* :mod:`~pyro_vi.estimators.importance`  importance weights, log p(x) estimates (IWAE bounds)
* :mod:`~pyro_vi.estimators.variance`    variance, SNR and bias of any estimator on any model/guide
* :mod:`~pyro_vi.estimators.problems`    the lab's built-in problems with exact gradients
* :mod:`~pyro_vi.estimators.toys`        one-dimensional toys with closed-form gradients
"""

from pyro_vi.estimators.core import (
    ESTIMATORS,
    UNBIASED,
    AnalyticKL,
    AverageBaseline,
    Enumeration,
    GradientEstimator,
    GraphScore,
    ImportanceWeighted,
    LeaveOneOut,
    NetworkBaseline,
    Pathwise,
    Relaxed,
    ScoreFunction,
    get_estimator,
)

__all__ = [
    "ESTIMATORS",
    "UNBIASED",
    "get_estimator",
    "GradientEstimator",
    "Pathwise",
    "AnalyticKL",
    "ScoreFunction",
    "LeaveOneOut",
    "GraphScore",
    "AverageBaseline",
    "NetworkBaseline",
    "Enumeration",
    "Relaxed",
    "ImportanceWeighted",
]

# the submodules, after the names above (variance and problems import them)
from pyro_vi.estimators import importance, problems, toys, variance  # noqa: E402
