"""Figures of gradient-estimator statistics (matplotlib imported lazily, Agg backend)."""

from __future__ import annotations

from pathlib import Path

from pyro_vi import io


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def total_variance_by_estimator(rows: list[dict], path: Path) -> None:
    """Bar chart of total gradient variance per estimator (log scale), one bar per particle count."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    estimators = list(dict.fromkeys(row["estimator"] for row in rows))
    particles = sorted({row["num_particles"] for row in rows})
    width = 0.8 / len(particles)
    for j, k in enumerate(particles):
        values = [next((r["total_variance"] for r in rows if r["estimator"] == e and r["num_particles"] == k), 0) for e in estimators]
        axis.bar([i + j * width for i in range(len(estimators))], values, width, label=f"k = {k}")
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(estimators))], estimators, rotation=30, ha="right")
    axis.set_yscale("log")
    axis.set_ylabel("total gradient variance")
    axis.legend()
    figure.tight_layout()
    io.save_figure(figure, path)
    plt.close(figure)


def variance_vs_particles(rows: list[dict], path: Path, key: str = "total_variance", ylabel: str = "total gradient variance") -> None:
    """One line per estimator: ``key`` against the number of particles (log-log)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for estimator in dict.fromkeys(row["estimator"] for row in rows):
        points = sorted((r["num_particles"], r[key]) for r in rows if r["estimator"] == estimator and r[key] is not None)
        axis.plot([p for p, _ in points], [v for _, v in points], marker="o", label=estimator)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("particles")
    axis.set_ylabel(ylabel)
    axis.legend(fontsize=8)
    figure.tight_layout()
    io.save_figure(figure, path)
    plt.close(figure)
