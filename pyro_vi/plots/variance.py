"""Figures of gradient-estimator statistics (matplotlib imported lazily, Agg backend)."""

from __future__ import annotations

from pathlib import Path

from pyro_vi.plots._figure import finish, pyplot

__all__ = ["total_variance_by_estimator", "variance_vs_particles"]


def total_variance_by_estimator(rows: list[dict], path: Path | None = None):
    """Bar chart of total gradient variance per estimator (log scale), one bar per particle count.

    Args:
        rows: ``pyro-vi variance``'s summary rows (``estimator``, ``num_particles``, ``total_variance``).
        path: where the PNG goes (then the figure is closed).

    Returns:
        The figure.
    """
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    estimators = list(dict.fromkeys(row["estimator"] for row in rows))
    particles = sorted({row["num_particles"] for row in rows})
    width = 0.8 / len(particles)
    for j, k in enumerate(particles):
        # (position, value) of the estimators measured at k: a skipped one (rloo at k = 1) leaves a gap
        bars = [(i + j * width, r["total_variance"]) for i, e in enumerate(estimators) for r in rows
                if r["estimator"] == e and r["num_particles"] == k]
        axis.bar([x for x, _ in bars], [v for _, v in bars], width, label=f"k = {k}")
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(estimators))], estimators, rotation=30, ha="right")
    axis.set_yscale("log")
    axis.set_ylabel("total gradient variance")
    _legend_outside(axis)
    return finish(figure, path, bbox_inches="tight")


def variance_vs_particles(rows: list[dict], path: Path | None = None, key: str = "total_variance",
                          ylabel: str = "total gradient variance"):
    """One line per estimator: ``key`` of the summary rows against the number of particles (log-log).
    Returns the figure, written to ``path`` (and closed) when given."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for estimator in dict.fromkeys(row["estimator"] for row in rows):
        points = sorted((r["num_particles"], r[key]) for r in rows if r["estimator"] == estimator and r[key] is not None)
        axis.plot([p for p, _ in points], [v for _, v in points], marker="o", label=estimator)
    axis.set_xscale("log")
    axis.set_yscale("log")
    # Plain particle counts as the only x labels (log-scale minor labels read "2x10^0, 3x10^0, ...").
    from matplotlib.ticker import NullLocator

    particles = sorted({row["num_particles"] for row in rows})
    axis.xaxis.set_minor_locator(NullLocator())
    axis.set_xticks(particles, [str(k) for k in particles])
    axis.set_xlabel("particles")
    axis.set_ylabel(ylabel)
    _legend_outside(axis)
    return finish(figure, path, bbox_inches="tight")


def _legend_outside(axis) -> None:
    """The legend right of the axes, where it cannot cover a line or a bar."""
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    axis.figure.tight_layout()
