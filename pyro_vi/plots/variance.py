"""Figures of gradient-estimator statistics (matplotlib imported lazily, Agg backend).

Every figure draws an estimator in its own colour, the same in every figure (``estimator_color``:
a fixed palette keyed by the estimator's name, shared with ``pyro-vi compare`` and the tutorials),
and says in its title where the gradients were measured (``where``: "initial params", "checkpoint
PATH at step k", ...). With a single particle count, the "against particles" figures become a
chart by estimator (one point each, with error bars when the rows carry standard errors) instead
of a column of dots.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

from pyro_vi.plots._figure import finish, pyplot

__all__ = ["ESTIMATOR_COLORS", "estimator_color", "total_variance_by_estimator", "variance_vs_particles", "by_estimator"]

# One colour per estimator name (matplotlib's tab10 first, then tab20b shades): a pathwise estimator
# and its score-function rival never share a hue family.
ESTIMATOR_COLORS = {
    "reparam": "#1f77b4",  # blue
    "score": "#d62728",  # red
    "score-baseline": "#2ca02c",  # green
    "rloo": "#ff7f0e",  # orange
    "stl": "#9467bd",  # purple
    "gumbel": "#8c564b",  # brown
    "score-naive": "#e377c2",  # pink
    "enum": "#7f7f7f",  # grey
    "score-graph": "#bcbd22",  # olive
    "analytic-kl": "#17becf",  # cyan
    "iwae": "#393b79",  # navy
    "dreg": "#e7ba52",  # gold
    "score-nn-baseline": "#637939",  # dark olive green
}
_OTHER_COLORS = ("#843c39", "#7b4173", "#5254a3", "#8ca252", "#bd9e39", "#ad494a", "#a55194", "#6b6ecf")


def estimator_color(name: str) -> str:
    """The colour of estimator ``name`` in every figure (an unknown name gets a fixed one from its
    name's checksum, the same in every run)."""
    if name in ESTIMATOR_COLORS:
        return ESTIMATOR_COLORS[name]
    return _OTHER_COLORS[zlib.crc32(name.encode()) % len(_OTHER_COLORS)]


def _title(what: str, where: str | None) -> str:
    return what if where is None else f"{what}\nmeasured at {where}"


def total_variance_by_estimator(rows: list[dict], path: Path | None = None, where: str | None = None):
    """Bar chart of total gradient variance per estimator (log scale): one bar per particle count,
    in the estimator's colour, particle counts told apart by hatching; +-2 standard errors where the
    rows carry ``total_variance_standard_error``.

    Args:
        rows: ``pyro-vi variance``'s summary rows (``estimator``, ``num_particles``, ``total_variance``).
        path: where the PNG goes (then the figure is closed).
        where: where the gradients were measured, for the title.

    Returns:
        The figure.
    """
    plt = pyplot()
    from matplotlib.patches import Patch

    figure, axis = plt.subplots(figsize=(7, 4))
    estimators = list(dict.fromkeys(row["estimator"] for row in rows))
    particles = sorted({row["num_particles"] for row in rows})
    hatches = ["", "//", "..", "xx", "\\\\", "oo", "--", "++"]
    width = 0.8 / len(particles)
    for j, k in enumerate(particles):
        # a skipped estimator (rloo at k = 1) leaves a gap
        for i, estimator in enumerate(estimators):
            for row in rows:
                if row["estimator"] == estimator and row["num_particles"] == k:
                    axis.bar(i + j * width, row["total_variance"], width, color=estimator_color(estimator),
                             hatch=hatches[j % len(hatches)], edgecolor="white", yerr=_two_se(row), ecolor="black",
                             capsize=2)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(estimators))], estimators, rotation=30, ha="right")
    axis.set_yscale("log")
    axis.set_ylabel("total gradient variance")
    axis.set_title(_title("total gradient variance by estimator", where), fontsize=10)
    if len(particles) > 1:
        handles = [Patch(facecolor="0.6", edgecolor="white", hatch=hatches[j % len(hatches)], label=f"k = {k}")
                   for j, k in enumerate(particles)]
        _legend_outside(axis, handles=handles)
    else:
        axis.set_xlabel(f"k = {particles[0]} particles")
        figure.tight_layout()
    return finish(figure, path, bbox_inches="tight")


def _two_se(row: dict, key: str = "total_variance") -> float | None:
    """Twice the row's standard error of ``key`` (None when it has none or it is not finite)."""
    error = row.get(f"{key}_standard_error")
    return 2 * error if isinstance(error, (int, float)) and math.isfinite(error) else None


def variance_vs_particles(rows: list[dict], path: Path | None = None, key: str = "total_variance",
                          ylabel: str = "total gradient variance", where: str | None = None):
    """One line per estimator, in its colour: ``key`` of the summary rows against the number of
    particles (log-log). With a single particle count, ``by_estimator`` instead: a column of dots
    says nothing. Returns the figure, written to ``path`` (and closed) when given."""
    particles = sorted({row["num_particles"] for row in rows})
    if len(particles) == 1:
        return by_estimator(rows, path, key=key, xlabel=ylabel, where=where)
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for estimator in dict.fromkeys(row["estimator"] for row in rows):
        points = sorted((r["num_particles"], r[key]) for r in rows if r["estimator"] == estimator and r[key] is not None)
        axis.plot([p for p, _ in points], [v for _, v in points], marker="o", label=estimator, color=estimator_color(estimator))
    axis.set_xscale("log")
    axis.set_yscale("log")
    # Plain particle counts as the only x labels (log-scale minor labels read "2x10^0, 3x10^0, ...").
    from matplotlib.ticker import NullLocator

    axis.xaxis.set_minor_locator(NullLocator())
    axis.set_xticks(particles, [str(k) for k in particles])
    axis.set_xlabel("particles")
    axis.set_ylabel(ylabel)
    axis.set_title(_title(f"{ylabel} against particles", where), fontsize=10)
    _legend_outside(axis)
    return finish(figure, path, bbox_inches="tight")


def by_estimator(rows: list[dict], path: Path | None = None, key: str = "total_variance",
                 xlabel: str = "total gradient variance", where: str | None = None):
    """``key`` of each summary row as one point per estimator (a row each, in its colour, log scale),
    with +-2 standard errors where the rows carry ``{key}_standard_error``: the figure for a single
    particle count. Rows whose ``key`` is None (an SNR that is not finite) are left out.

    Returns:
        The figure, written to ``path`` (and closed) when given.
    """
    plt = pyplot()
    shown = [row for row in rows if row[key] is not None]
    labels = [row["estimator"] if len({r["num_particles"] for r in rows}) == 1 else f"{row['estimator']} (k={row['num_particles']})"
              for row in shown]
    figure, axis = plt.subplots(figsize=(6, 0.9 + 0.45 * max(1, len(shown))))
    for y, row in enumerate(shown):
        error = _two_se(row, key)
        # log scale: the lower bar stops at a tenth of the value rather than going below zero
        xerr = None if error is None else [[min(error, 0.9 * row[key])], [error]]
        axis.errorbar(row[key], y, xerr=xerr, fmt="o", markersize=8, color=estimator_color(row["estimator"]),
                      ecolor="black", elinewidth=1, capsize=3)
    axis.set_yticks(range(len(shown)), labels)
    axis.set_ylim(-0.6, len(shown) - 0.4)
    axis.invert_yaxis()  # the first estimator on top
    axis.set_xscale("log")
    axis.grid(True, axis="x", which="major", alpha=0.3)
    particles = sorted({row["num_particles"] for row in rows})
    axis.set_xlabel(xlabel + (" (+-2 SE over the draws)" if any(_two_se(r, key) for r in shown) else ""))
    counts = f"k = {particles[0]} particles" if len(particles) == 1 else "by estimator"
    axis.set_title(_title(f"{xlabel}, {counts}", where), fontsize=10)
    figure.tight_layout()
    return finish(figure, path, bbox_inches="tight")


def _legend_outside(axis, handles=None) -> None:
    """The legend right of the axes, where it cannot cover a line or a bar."""
    axis.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    axis.figure.tight_layout()
