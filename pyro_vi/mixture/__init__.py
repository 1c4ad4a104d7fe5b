"""Gaussian mixtures: the Pyro model with discrete assignments, EM and SVI on the same ELBO.

* :mod:`~pyro_vi.mixture.model`  the model, its MAP and Bayesian guides, ``MixtureParams``, ``Prior``
* :mod:`~pyro_vi.mixture.em`     EM: coordinate ascent on the ELBO (``fit_em``)
* :mod:`~pyro_vi.mixture.svi`    SVI with enumerated or sampled assignments (``fit_svi``)
* :mod:`~pyro_vi.mixture.eval`   log-likelihood, BIC, matching to the truth, scikit-learn's fit
* :mod:`~pyro_vi.mixture.data`   synthetic mixtures, data files, the digits in PCA coordinates
"""

from pyro_vi.mixture import data, em, eval, model, svi
from pyro_vi.mixture.em import EMResult, fit_em
from pyro_vi.mixture.model import MixtureParams, Prior
from pyro_vi.mixture.svi import SVIResult, fit_svi

__all__ = ["MixtureParams", "Prior", "fit_em", "EMResult", "fit_svi", "SVIResult"]
