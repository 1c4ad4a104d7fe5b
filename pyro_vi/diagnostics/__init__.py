"""Did VI work? Diagnostics of a fitted guide against the model, for any Pyro model/guide pair.

* :mod:`~pyro_vi.diagnostics.draws`  draws from the guide and their importance log weights (vectorized or looped)
* :mod:`~pyro_vi.diagnostics.psis`   ``check``: PSIS k-hat and its verdict, ELBO and IW bound, ESS, per-element
  summaries of q (PSIS-corrected where k-hat allows) and against reference draws
"""

from pyro_vi.diagnostics import draws, psis
from pyro_vi.diagnostics.psis import CheckResult, ParameterSummary, check, element_names, verdict

__all__ = ["draws", "psis", "check", "CheckResult", "ParameterSummary", "element_names", "verdict"]
