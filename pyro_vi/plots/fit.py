"""The convergence figure of ``pyro-vi fit``: the smoothed ELBO and every param against steps."""

from __future__ import annotations

import math
from pathlib import Path

from pyro_vi.plots._figure import finish, pyplot

__all__ = ["traces", "MAX_PANELS"]

MAX_PANELS = 24  # params drawn; the title says how many more there were


def traces(trace, losses, convergence: dict | None = None, path: str | Path | None = None):
    """The ELBO per step with its running mean, then one panel per param (an ``AutoContinuous``
    guide: per site, its loc and its scale), each element a line against steps.

    Args:
        trace: a ``pyro_vi.engine.posterior.ParamTrace`` (``steps``, ``values``, ``sizes``).
        losses: the loss of every step of the run.
        convergence: ``pyro_vi.engine.posterior.convergence(losses)``; its note is the ELBO panel's title.
        path: where the PNG goes (then the figure is closed); None keeps it open.

    Returns:
        The figure.
    """
    import numpy as np

    from pyro_vi.engine.posterior import smoothed

    plt = pyplot()
    names = list(trace.values)[:MAX_PANELS]
    columns = min(3, len(names) + 1)
    rows = math.ceil((len(names) + 1) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.6 * rows), squeeze=False)
    axes = axes.ravel()

    elbo = -np.asarray(losses, dtype=float)
    steps = np.arange(1, len(elbo) + 1)
    window = max(1, len(elbo) // 50)
    axes[0].plot(steps, elbo, lw=0.5, alpha=0.35, color="tab:blue", label="ELBO per step")
    if len(elbo):
        axes[0].plot(steps[window - 1:], smoothed(losses, window), lw=1.5, color="tab:blue",
                     label=f"running mean ({window} steps)")
        finite = elbo[np.isfinite(elbo)]
        if finite.size > 20:  # the first steps can be far below: keep the settled part readable
            low, high = np.percentile(finite, [2, 100])
            axes[0].set_ylim(low - 0.05 * (high - low + 1e-12), high + 0.05 * (high - low + 1e-12))
    note = (convergence or {}).get("note", "")
    axes[0].set_title("ELBO" + (f"\n{_wrap(note, 60)}" if note else ""), fontsize=7)
    axes[0].set_xlabel("step", fontsize=8)
    axes[0].legend(fontsize=7)

    recorded = np.asarray(trace.steps)
    for axis, name in zip(axes[1:], names):
        values = np.asarray(trace.values[name], dtype=float)  # (recorded steps, elements kept)
        if values.ndim == 2 and values.shape[1]:
            for element in range(values.shape[1]):
                axis.plot(recorded, values[:, element], lw=1)
        size = trace.sizes.get(name, values.shape[-1] if values.ndim == 2 else 0)
        shown = values.shape[1] if values.ndim == 2 else 0
        axis.set_title(name + (f" (first {shown} of {size})" if size > shown else ""), fontsize=8)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in axes[len(names) + 1:]:
        axis.axis("off")
    hidden = len(trace.values) - len(names)
    if hidden > 0:
        figure.suptitle(f"{hidden} more params not drawn", fontsize=8)
    figure.tight_layout()
    return finish(figure, path, dpi=100)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))
