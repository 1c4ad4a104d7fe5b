"""Figures, one module per job; every figure is written with :func:`pyro_vi.io.save_figure`.

* :mod:`~pyro_vi.plots.fit`       ``pyro-vi fit``'s traces: the smoothed ELBO and every param against steps
* :mod:`~pyro_vi.plots.vae`       ELBO curves, reconstructions, prior samples, latent space, manifold
* :mod:`~pyro_vi.plots.gmm`       assignments and convergence of EM vs SVI
* :mod:`~pyro_vi.plots.gap`       the refinement curve of the amortization gap
* :mod:`~pyro_vi.plots.variance`  gradient variance by estimator and particle count
* :mod:`~pyro_vi.plots.check`     a guide's marginals against reference draws (``pyro_vi.diagnostics.check``)

One convention throughout: a plotting function draws one figure and returns it; given a ``path``
it writes the figure there (atomically) and closes it. matplotlib (Agg) is imported on first use.
"""

from pyro_vi.plots import check, fit, gap, gmm, vae, variance

__all__ = ["check", "fit", "gap", "gmm", "vae", "variance"]
