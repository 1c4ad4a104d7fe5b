"""Figures for the Gaussian mixture: assignments with component ellipses at chosen iterations, and
log-likelihood / ELBO per point against iteration for EM and SVI on one axis.

Data with more than two dimensions are drawn on their first two coordinates (the first two
principal components for ``digits``), with the ellipses of the matching 2x2 covariance blocks.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from torch import Tensor

from pyro_vi.mixture import model as gmm
from pyro_vi.mixture.model import MixtureParams
from pyro_vi.plots._figure import finish, pyplot

__all__ = ["plot_assignments", "plot_convergence"]


def _draw_ellipses(axis, params: MixtureParams, colors, num_std: float = 2.0) -> None:
    """The ``num_std``-standard-deviation ellipse of every component's first two coordinates."""
    import numpy as np
    from matplotlib.patches import Ellipse

    covariances = params.covariance_matrix[:, :2, :2].detach().cpu().double().numpy()
    locs = params.loc[:, :2].detach().cpu().double().numpy()
    for k, (loc, covariance) in enumerate(zip(locs, covariances)):
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        angle = math.degrees(math.atan2(eigenvectors[1, -1], eigenvectors[0, -1]))
        width, height = 2 * num_std * np.sqrt(np.maximum(eigenvalues[::-1], 0))
        axis.add_patch(Ellipse(loc, width, height, angle=angle, fill=False, color=colors[k % len(colors)], lw=2))
        axis.plot(*loc, marker="x", color="black", markersize=6)


def plot_assignments(data: Tensor, snapshots: Sequence[tuple[str, MixtureParams]], columns: int = 4, path=None):
    """One panel per ``(title, params)``: points coloured by their most probable component under
    those parameters (the E-step), with 2-sigma ellipses. Returns the figure, written to ``path``
    (and closed) when given."""
    plt = pyplot()
    rows = max(1, math.ceil(len(snapshots) / columns))
    columns = min(columns, max(1, len(snapshots)))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    points = data[:, :2].detach().cpu().double().numpy()
    if points.shape[1] == 1:  # 1-D data: plot against zero
        import numpy as np

        points = np.concatenate([points, np.zeros_like(points)], axis=1)
    # Every panel on the data's own limits, so the points stay put and a broad early ellipse is
    # clipped instead of shrinking the picture.
    low, high = points.min(0), points.max(0)
    margin = 0.1 * (high - low) + 1e-9
    for axis, (title, params) in zip(axes.flat, snapshots):
        labels = gmm.assignment_probabilities(data, params).argmax(-1).cpu().numpy()
        axis.scatter(points[:, 0], points[:, 1], c=[colors[k % len(colors)] for k in labels], s=4, alpha=0.5)
        if data.shape[-1] >= 2:
            _draw_ellipses(axis, params, colors)
        axis.set_xlim(low[0] - margin[0], high[0] + margin[0])
        axis.set_ylim(low[1] - margin[1], high[1] + margin[1])
        axis.set_title(title, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    for axis in list(axes.flat)[len(snapshots):]:
        axis.set_visible(False)
    figure.tight_layout()
    return finish(figure, path, dpi=100)


def plot_convergence(curves: Mapping[str, Sequence[float]], reference: float | None = None, reference_label: str = "",
                     path=None):
    """Each curve (log-likelihood or ELBO per point, in nats) against iteration/step on one symlog-x
    axis, ``reference`` as a dashed line. Returns the figure, written to ``path`` (and closed) when given."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for label, values in curves.items():
        axis.plot(range(len(values)), values, label=label, marker="." if len(values) < 60 else None)
    if reference is not None:
        axis.axhline(reference, color="gray", linestyle="--", label=reference_label)
    axis.set_xscale("symlog", linthresh=1)
    axis.set_xlim(left=0)
    axis.set_xlabel("iteration (EM) / step (SVI)")
    axis.set_ylabel("per-point log-likelihood / ELBO")
    finite = [v for values in curves.values() for v in values if math.isfinite(v)]
    if finite:  # an SVI start far below the optimum would flatten everything else
        top, bottom = max(finite), min(finite)
        margin = 0.05 * max(top - bottom, 1e-3)
        axis.set_ylim(max(bottom, top - max(1.0, abs(top))) - margin, top + margin)
    axis.legend()
    figure.tight_layout()
    return finish(figure, path, dpi=100)
