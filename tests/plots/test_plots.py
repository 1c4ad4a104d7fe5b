"""pyro_vi.plots draws what it says: each figure's data read back from its artists, written to the
path it was given and closed (its one convention, ``plots._figure.finish``)."""

import numpy as np
import pytest
import torch

from pyro_vi.mixture import em as mixture_em
from pyro_vi.mixture import model as gmm
from pyro_vi.mixture.data import synthetic
from pyro_vi.plots import gap as plots_gap
from pyro_vi.plots import gmm as plots_gmm
from pyro_vi.plots import vae as plots_vae
from pyro_vi.plots._figure import finish, pyplot
from pyro_vi.vae.model import VAE


def _written_and_closed(figure, path):
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figure.number not in pyplot().get_fignums()


def test_finish_writes_and_closes_only_when_given_a_path(tmp_path):
    plt = pyplot()
    figure = plt.figure()
    assert finish(figure) is figure and figure.number in plt.get_fignums()  # no path: left open
    assert finish(figure, tmp_path / "f.png") is figure
    _written_and_closed(figure, tmp_path / "f.png")


def _tiles(grid, rows, cols, height, width):
    """The ``rows`` x ``cols`` tiles of an image grid, as (rows * cols, height * width), after checking
    that a border of ``grid_padding`` pixels of ``GRID_PAD_VALUE`` surrounds every tile."""
    grid = np.asarray(grid)
    pad = plots_vae.grid_padding((height, width))
    assert pad >= 1
    assert grid.shape == (rows * (height + pad) + pad, cols * (width + pad) + pad)
    border = np.ones(grid.shape, dtype=bool)
    tiles = []
    for row in range(rows):
        for col in range(cols):
            top, left = pad + row * (height + pad), pad + col * (width + pad)
            tiles.append(grid[top : top + height, left : left + width].reshape(-1))
            border[top : top + height, left : left + width] = False
    np.testing.assert_array_equal(grid[border], plots_vae.GRID_PAD_VALUE)  # tiles never touch
    return np.stack(tiles)


@pytest.fixture
def tiny_vae():
    torch.manual_seed(0)
    return VAE(12, z_dim=2, hidden_dims=(8,))


def test_reconstructions_put_the_inputs_above_the_decoded_means(tiny_vae, tmp_path):
    images = (torch.rand(5, 12, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    figure = plots_vae.reconstructions(tiny_vae, images, (3, 4), tmp_path / "r.png", num=5)
    tiles = _tiles(figure.axes[0].images[0].get_array(), 2, 5, 3, 4)
    np.testing.assert_array_equal(tiles[:5], images.numpy())  # top row: the inputs
    with torch.no_grad():
        means = tiny_vae.likelihood(tiny_vae.decoder(tiny_vae.encoder(images)[0])).base_dist.mean
    np.testing.assert_allclose(tiles[5:], means.numpy(), rtol=1e-6)
    _written_and_closed(figure, tmp_path / "r.png")


def test_prior_samples_and_manifold_tile_one_decoded_image_per_cell(tiny_vae, tmp_path):
    torch.manual_seed(3)
    samples = plots_vae.prior_samples(tiny_vae, (3, 4), tmp_path / "p.png", "cpu", rows=2, cols=3)
    torch.manual_seed(3)  # the same z ~ N(0, I), drawn with torch's global RNG
    with torch.no_grad():
        decoded = tiny_vae.likelihood(tiny_vae.decoder(torch.randn(6, 2))).base_dist.mean
    np.testing.assert_allclose(_tiles(samples.axes[0].images[0].get_array(), 2, 3, 3, 4), decoded.numpy(), rtol=1e-6)
    grid = plots_vae.manifold(tiny_vae, (3, 4), tmp_path / "m.png", "cpu", num=4)
    values = _tiles(grid.axes[0].images[0].get_array(), 4, 4, 3, 4)
    assert values.min() >= 0 and values.max() <= 1
    # the top-left cell decodes z = (-3, 3): x runs left to right, y top to bottom
    with torch.no_grad():
        corner = tiny_vae.likelihood(tiny_vae.decoder(torch.tensor([[-3.0, 3.0]]))).base_dist.mean.reshape(-1)
    np.testing.assert_allclose(values[0], corner.numpy(), rtol=1e-6)
    _written_and_closed(samples, tmp_path / "p.png")
    _written_and_closed(grid, tmp_path / "m.png")


def test_latent_space_scatters_the_encoder_means_and_elbo_curves_draw_each_series(tiny_vae, tmp_path):
    images = torch.rand(7, 12, generator=torch.Generator().manual_seed(2))
    figure = plots_vae.latent_space(tiny_vae, images, torch.arange(7) % 3, tmp_path / "z.png")
    with torch.no_grad():
        loc = tiny_vae.encoder(images)[0]
    np.testing.assert_allclose(figure.axes[0].collections[0].get_offsets(), loc.numpy(), rtol=1e-6)
    history = [{"epoch": e, "train_elbo": -10.0 + e, "test_elbo": -11.0 + e, "test_kl": 1.0 + e} for e in (1, 2, 3)]
    curves = plots_vae.elbo_curves(history, tmp_path / "e.png")
    elbo_axis, kl_axis = curves.axes
    assert [list(line.get_ydata()) for line in elbo_axis.lines] == [[-9.0, -8.0, -7.0], [-10.0, -9.0, -8.0]]
    assert list(kl_axis.lines[0].get_ydata()) == [2.0, 3.0, 4.0]
    _written_and_closed(figure, tmp_path / "z.png")
    _written_and_closed(curves, tmp_path / "e.png")


def test_mixture_panels_colour_points_by_their_e_step_component(tmp_path):
    data = synthetic(3, 2, 60, 5.0, 0).train
    initial = mixture_em.initialize(data, 3, "full", "kmeans++", torch.Generator().manual_seed(0))
    fitted = mixture_em.run_em(data, initial, tol=1e-6, max_iter=50, reg_covar=1e-6).params
    figure = plots_gmm.plot_assignments(data, [("start", initial), ("EM", fitted)], columns=4, path=tmp_path / "a.png")
    visible = [axis for axis in figure.axes if axis.get_visible()]
    assert [axis.get_title() for axis in visible] == ["start", "EM"]
    colors = pyplot().get_cmap("tab10").colors
    labels = gmm.assignment_probabilities(data, fitted).argmax(-1)
    np.testing.assert_allclose(visible[1].collections[0].get_facecolors()[:, :3], [colors[k] for k in labels])
    assert len(visible[1].patches) == 3  # one 2-sigma ellipse per component
    _written_and_closed(figure, tmp_path / "a.png")


def test_convergence_and_refinement_curves_draw_their_numbers(tmp_path):
    figure = plots_gmm.plot_convergence({"EM": [-5.0, -4.0, -3.5], "SVI": [-6.0, -4.5]}, reference=-3.4,
                                        reference_label="EM", path=tmp_path / "c.png")
    lines = figure.axes[0].lines
    assert [list(line.get_ydata()) for line in lines[:2]] == [[-5.0, -4.0, -3.5], [-6.0, -4.5]]
    assert list(lines[2].get_ydata()) == [-3.4, -3.4]  # the reference
    _written_and_closed(figure, tmp_path / "c.png")
    from pyro_vi.vae.evaluate import Gaps

    gaps = Gaps(log_px=-20.0, elbo_amortized=-24.0, elbo_refined=[-24.0, -22.5, -22.0], elbo_meanfield=-23.0,
                elbo_optimal=-22.0, optimal_local="refined", approximation_gap=2.0, amortization_gap=2.0,
                refine_steps=[0, 10, 100], meanfield_steps=100, iwae_k=50, num_points=3,
                log_px_per_point=torch.zeros(3), elbo_refined_per_point=torch.zeros(3, 3))
    curve = plots_gap.refinement_curve(gaps, tmp_path / "g.png")
    refined, log_px, meanfield = curve.axes[0].lines[:3]
    assert list(refined.get_xdata()) == [0, 10, 100] and list(refined.get_ydata()) == [-24.0, -22.5, -22.0]
    assert list(log_px.get_ydata()) == [-20.0, -20.0] and list(meanfield.get_ydata()) == [-23.0, -23.0]
    _written_and_closed(curve, tmp_path / "g.png")
