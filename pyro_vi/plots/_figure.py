"""The one matplotlib helper of :mod:`pyro_vi.plots` and its one convention for saving figures.

Every plotting function draws one figure and returns it; given a ``path`` it also writes it there
(atomically, :func:`pyro_vi.io.save_figure`) and closes it, so a command that draws many figures
holds none of them open. matplotlib is imported on the first figure, with the Agg backend.
"""

from __future__ import annotations

__all__ = ["pyplot", "finish"]


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def finish(figure, path=None, **savefig):
    """Write ``figure`` to ``path`` (``savefig`` options such as ``dpi``) and close it, when a path
    is given; return the figure either way."""
    if path is not None:
        from pyro_vi import io

        io.save_figure(figure, path, **savefig)
        pyplot().close(figure)
    return figure
