"""The figure of ``pyro-vi gap``: ELBO against refinement steps, with log p(x) as a line."""

from __future__ import annotations

from pathlib import Path

from pyro_vi.plots._figure import finish, pyplot

__all__ = ["refinement_curve"]


def refinement_curve(gaps, path: str | Path | None = None):
    """ELBO of the refined q after each step count (symlog x axis), the mean-field ELBO and
    log p(x) as horizontal lines, in nats per image; the two gaps in the title.

    Args:
        gaps: the result of ``pyro_vi.vae.evaluate.gaps``.
        path: where the PNG goes (then the figure is closed); None keeps it open.

    Returns:
        The figure.
    """
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(5.5, 4))
    axes.plot(gaps.refine_steps, gaps.elbo_refined, "o-", label="ELBO, encoder q refined (semi-amortized)")
    axes.axhline(gaps.log_px, color="black", label=f"log p(x) (IWAE, k={gaps.iwae_k})")
    axes.axhline(gaps.elbo_meanfield, color="tab:red", linestyle="--",
                 label=f"ELBO, mean-field from the prior ({gaps.meanfield_steps} steps)")
    axes.set_xscale("symlog", linthresh=1)
    axes.set_xlim(-0.2, max(gaps.refine_steps[-1], 1) * 1.5)
    axes.set_xlabel("refinement steps")
    axes.set_ylabel("nats per image")
    axes.set_title(f"approximation gap {gaps.approximation_gap:.2f}, amortization gap {gaps.amortization_gap:.2f} nats\n"
                   f"({gaps.num_points} points)", fontsize=9)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return finish(figure, path, dpi=120)
