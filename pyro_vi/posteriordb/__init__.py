"""posteriordb's reference posteriors: its files, and Pyro ports of thirteen of its Stan models.

* :mod:`~pyro_vi.posteriordb.files`        read a posteriordb folder (a clone of stan-dev/posteriordb, or a
  subset in its layout): data as keyword arguments, reference draws by parameter name
* :mod:`~pyro_vi.posteriordb.regressions`  the linear regressions (near-Gaussian posteriors; diamonds the hard one)
* :mod:`~pyro_vi.posteriordb.models`       hierarchical, Gaussian-process, mixture and time-series posteriors

``PORTS`` maps a posterior's name (``<data>-<model>``) to its port; :func:`load` gives a port with its
data and reference draws, ready for ``pyro_vi.fit`` and ``pyro_vi.check``::

    problem = load("eight_schools-eight_schools_noncentered")          # $PYRO_VI_POSTERIORDB, or root=
    guide = AutoMultivariateNormal(problem.model)
    fit(problem.model, guide, num_steps=5000, **problem.data)
    check(problem.model, guide, reference=problem.reference, **problem.data)
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

from pyro_vi.errors import ConfigError
from pyro_vi.posteriordb import files, models, regressions
from pyro_vi.posteriordb.files import find_posterior, posterior_names, read_data, read_reference

__all__ = ["files", "models", "regressions", "PORTS", "NEAR_GAUSSIAN", "Problem", "load", "find_posterior",
           "posterior_names", "read_data", "read_reference"]

# posteriordb name -> the Pyro port of its Stan model.
PORTS: dict[str, Callable] = {
    "eight_schools-eight_schools_noncentered": models.eight_schools_noncentered,
    "kidiq-kidscore_momiq": regressions.kidscore_momiq,
    "kidiq_with_mom_work-kidscore_interaction_c": regressions.kidscore_interaction_c,
    "mesquite-logmesquite_logvas": regressions.logmesquite_logvas,
    "earnings-logearn_interaction": regressions.logearn_interaction,
    "nes1976-nes": regressions.nes,
    "gp_pois_regr-gp_pois_regr": models.gp_pois_regr,
    "low_dim_gauss_mix-low_dim_gauss_mix": models.low_dim_gauss_mix,
    "arK-arK": models.arK,
    "garch-garch11": models.garch11,
    "hmm_example-hmm_example": models.hmm_example,
    "diamonds-diamonds": regressions.diamonds,
    "sblrc-blr": regressions.blr,
}
# The regressions whose posteriors are near-Gaussian (a full-rank Gaussian guide should match them).
NEAR_GAUSSIAN = ("kidiq-kidscore_momiq", "kidiq_with_mom_work-kidscore_interaction_c", "mesquite-logmesquite_logvas",
                 "earnings-logearn_interaction", "nes1976-nes", "sblrc-blr", "arK-arK")


class Problem(NamedTuple):
    """A port with its data and reference: ``model(**data)``; ``reference``: element name -> draws (or None)."""

    name: str
    model: Callable
    data: dict
    reference: dict | None


def load(name: str, root: str | os.PathLike | None = None, device="cpu") -> Problem:
    """The port of posterior ``name``, its data (keyword arguments) and reference draws from the
    posteriordb folder ``root`` (default ``$PYRO_VI_POSTERIORDB``).

    Raises:
        ConfigError: no port of that name, or no posteriordb folder.
        DataError: its data or reference cannot be read.
    """
    if name not in PORTS:
        raise ConfigError(f"no Pyro port of posterior {name!r}; ported: {', '.join(sorted(PORTS))}")
    posterior = find_posterior(name, root)
    reference = read_reference(posterior.reference_file) if posterior.reference_file is not None else None
    return Problem(name, PORTS[name], read_data(posterior.data_file, device), reference)
