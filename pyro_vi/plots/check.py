"""The marginals of a guide against the posterior's reference draws (``pyro_vi.diagnostics.check``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pyro_vi.plots._figure import finish, pyplot

__all__ = ["marginals"]


def marginals(result, path: Path | None = None, max_panels: int = 36):
    """One panel per parameter element: q's draws (histogram), the PSIS-reweighted q where k-hat < 0.7
    (line), and the reference draws (histogram) when there are any.

    Args:
        result: a ``pyro_vi.diagnostics.CheckResult``.
        path: where the PNG goes (then the figure is closed).
        max_panels: at most this many elements, those with a reference first (the title says how many are left out).

    Returns:
        The figure.
    """
    plt = pyplot()
    elements = result.element_draws()
    names = [name for name in elements if name in result.reference] + [name for name in elements if name not in result.reference]
    shown = names[:max_panels]
    columns = min(6, max(1, len(shown)))
    rows = max(1, math.ceil(len(shown) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.1 * rows), squeeze=False)
    weights = np.exp(result.smoothed_log_weights) if result.khat < 0.7 else None
    for axis, name in zip(axes.flat, shown):
        values = elements[name]
        reference = result.reference.get(name)
        pooled = values if reference is None else np.concatenate([values, reference])
        low, high = np.quantile(pooled, [0.002, 0.998])
        bins = np.linspace(low, high, 41) if high > low else 20
        if reference is not None:
            axis.hist(reference, bins=bins, density=True, color="0.7", label="reference")
        axis.hist(values, bins=bins, density=True, histtype="step", lw=1.3, color="C0", label="q")
        if weights is not None:
            axis.hist(values, bins=bins, weights=weights, density=True, histtype="step", lw=1.0, color="C3",
                      linestyle="--", label="q, PSIS-reweighted")
        axis.set_title(name, fontsize=9)
        axis.tick_params(labelsize=7)
        axis.set_yticks([])
    for axis in list(axes.flat)[len(shown):]:
        axis.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    left_out = f"; {len(names) - len(shown)} more not shown" if len(names) > len(shown) else ""
    figure.suptitle(f"marginals: k-hat {result.khat:.2f} ({result.verdict}){left_out}", fontsize=10)
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.05, 1, 0.95))
    return finish(figure, path, dpi=100)
