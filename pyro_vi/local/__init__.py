"""Per-datapoint (mean-field) variational parameters and semi-amortized refinement.

* :mod:`~pyro_vi.local.model`  ``LocalGuide`` (one q_n per datapoint), ``refine`` (encoder's q,
  then gradient steps on each q_n), per-datapoint ELBOs
* :mod:`~pyro_vi.local.train`  ``fit_local``: Hoffman-style or joint training of the decoder with
  local q_n
"""

from pyro_vi.local import model, train
from pyro_vi.local.model import LocalGuide, RefinementResult, elbo_per_datapoint, refine
from pyro_vi.local.train import LocalFitResult, LocalTrainConfig, fit_local

__all__ = ["LocalGuide", "RefinementResult", "elbo_per_datapoint", "refine", "LocalTrainConfig", "LocalFitResult", "fit_local"]
