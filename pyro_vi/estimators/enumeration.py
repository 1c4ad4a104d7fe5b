"""Exact enumeration of discrete latent sites (``enum``, Pyro's ``TraceEnum_ELBO``).

The discrete sites of the guide, and those of the model marked with ``config_enumerate`` that the
guide lacks, are summed over their support in parallel; the continuous sites keep the pathwise
gradient. The gradient is exact in the discrete sites, so a mixed guide loses their variance.
"""

from __future__ import annotations

from pyro.infer import TraceEnum_ELBO, config_enumerate

from pyro_vi.errors import ConfigError
from pyro_vi.estimators import traces
from pyro_vi.estimators.base import GradientEstimator

__all__ = ["Enumeration"]


class Enumeration(GradientEstimator, name="enum"):
    """enum: exact enumeration of discrete sites (TraceEnum_ELBO), pathwise at the continuous ones."""

    def __init__(self, num_particles: int = 1, max_plate_nesting: float = float("inf")):
        super().__init__(num_particles, max_plate_nesting)
        self._pyro_elbo = TraceEnum_ELBO(num_particles=num_particles, max_plate_nesting=self.max_plate_nesting)

    def wrap(self, model, guide):
        """Both model and guide with every discrete site marked for parallel enumeration."""
        return config_enumerate(model, "parallel"), config_enumerate(guide, "parallel")

    def _check_model_only_sites(self, sites):
        pass  # enum sums out the model's discrete sites the guide lacks

    def _check_sites(self, sites):
        model_only_discrete = [s for s in sites.model_only if traces.is_discrete(s["fn"])]
        if not (sites.discrete or model_only_discrete):
            raise ConfigError("estimator 'enum' needs discrete latent sites but this model has only continuous ones; use reparam")

    def loss(self, model, guide, *args, **kwargs) -> float:
        """TraceEnum_ELBO's estimate of -ELBO (exact in the discrete sites)."""
        self._check_once(model, guide, args, kwargs)
        return float(self._pyro_elbo.loss(*self.wrap(model, guide), *args, **kwargs))

    def _loss_and_surrogate(self, model, guide, args, kwargs):
        loss = self._pyro_elbo.differentiable_loss(model, guide, *args, **kwargs)
        return loss.detach(), loss
