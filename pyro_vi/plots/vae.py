"""Figures of a fitted VAE (matplotlib, Agg backend, imported only when a figure is drawn).

- ``elbo_curves``: train and test ELBO per image against epoch, with the test KL on a second axis.
- ``reconstructions``: inputs (top row) next to the decoder's mean for the encoder's mean z.
- ``prior_samples``: decoder means for z ~ N(0, I).
- ``latent_space``: encoder means coloured by label (PCA to 2-D when z_dim > 2).
- ``manifold``: decoder means on a grid over [-3, 3]^2 (z_dim = 2 only).

Image grids are tiled by ``torchvision.utils.make_grid`` with a grey border around each tile
(``grid_padding``), so that a grid of small digits reads as digits, not as striped columns.

Each writes its figure to ``path`` (then closes it) and returns it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_vi.plots._figure import finish, pyplot

__all__ = ["GRID_PAD_VALUE", "grid_padding", "elbo_curves", "reconstructions", "prior_samples", "latent_space", "manifold"]


def _mean_image(vae, z: Tensor) -> Tensor:
    decoded = vae.decoder(z)
    return decoded if vae.likelihood_name == "gaussian" else vae.likelihood(decoded).base_dist.mean


GRID_PAD_VALUE = 0.5  # mid-grey: neither ink (1) nor background (0) of a binarized digit


def grid_padding(image_shape) -> int:
    """Pixels of border between the tiles of an image grid: 1 for 8x8 digits, 2 for 28x28 MNIST."""
    return 1 if min(image_shape) < 16 else 2


def _grid(images: Tensor, image_shape, rows: int, cols: int):
    """``rows`` x ``cols`` tiles of ``images`` (flattened, row-major) with ``grid_padding`` pixels of
    ``GRID_PAD_VALUE`` around each, as a 2-D NumPy array for ``imshow``."""
    from torchvision.utils import make_grid

    height, width = image_shape
    tiles = images[: rows * cols].reshape(-1, 1, height, width).clamp(0, 1).cpu()
    grid = make_grid(tiles, nrow=cols, padding=grid_padding(image_shape), pad_value=GRID_PAD_VALUE)[0]
    # a NumPy array: matplotlib's np.array(copy=...) on a Tensor is a NumPy 2 DeprecationWarning
    return grid.numpy()


def elbo_curves(history: list[dict], path):
    """Train (and test) ELBO per image in nats against epoch, the test KL on a second axis.

    Args:
        history: one dict per epoch with ``epoch`` and ``train_elbo`` (and ``test_elbo``, ``test_kl``).
        path: where the PNG goes.
    """
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(epochs, [h["train_elbo"] for h in history], label="train ELBO")
    if "test_elbo" in history[0]:
        axis.plot(epochs, [h["test_elbo"] for h in history], label="test ELBO")
        kl_axis = axis.twinx()
        kl_axis.plot(epochs, [h["test_kl"] for h in history], "k:", label="test KL")
        kl_axis.set_ylabel("test KL (nats)")
        kl_axis.legend(loc="lower right")
    axis.set_xlabel("epoch")
    axis.set_ylabel("ELBO per image (nats)")
    axis.legend(loc="upper left")
    figure.tight_layout()
    return finish(figure, path, dpi=120)


@torch.no_grad()
def reconstructions(vae, images: Tensor, image_shape, path, num: int = 10):
    """The first ``num`` images (top row) above the decoder's mean at the encoder's mean z (bottom)."""
    plt = pyplot()
    x = images[:num]
    loc, _ = vae.encoder(x)
    grid = _grid(torch.cat([x, _mean_image(vae, loc)]), image_shape, 2, x.shape[0])
    figure, axis = plt.subplots(figsize=(num, 2.2))
    axis.imshow(grid, cmap="gray", vmin=0, vmax=1)
    axis.set_title("inputs (top) and reconstructions (bottom)")
    axis.axis("off")
    return finish(figure, path, dpi=100, bbox_inches="tight")


@torch.no_grad()
def prior_samples(vae, image_shape, path, device, rows: int = 8, cols: int = 8):
    """A ``rows`` x ``cols`` grid of decoder means for z ~ N(0, I) (drawn with torch's global RNG)."""
    plt = pyplot()
    z = torch.randn(rows * cols, vae.z_dim, device=device)
    figure, axis = plt.subplots(figsize=(cols, rows))
    axis.imshow(_grid(_mean_image(vae, z), image_shape, rows, cols), cmap="gray", vmin=0, vmax=1)
    axis.set_title("decoder means for z ~ N(0, I)")
    axis.axis("off")
    return finish(figure, path, dpi=100, bbox_inches="tight")


@torch.no_grad()
def latent_space(vae, images: Tensor, labels: Tensor, path):
    """The encoder's means of ``images`` coloured by ``labels``; their first two principal
    components when z has more than two dimensions."""
    plt = pyplot()
    loc, _ = vae.encoder(images)
    loc = loc.cpu()
    if loc.shape[1] > 2:
        centred = loc - loc.mean(0)
        _, _, components = torch.linalg.svd(centred, full_matrices=False)
        points, title = centred @ components[:2].T, "PCA of posterior means"
    else:
        points, title = loc, "posterior means"
    figure, axis = plt.subplots(figsize=(6, 5))
    scatter = axis.scatter(points[:, 0], points[:, 1], c=labels.cpu(), cmap="tab10", s=6)
    figure.colorbar(scatter, ax=axis, label="label")
    axis.set_title(title)
    return finish(figure, path, dpi=120)


@torch.no_grad()
def manifold(vae, image_shape, path, device, num: int = 15):
    """Decoder means on a ``num`` x ``num`` grid over z in [-3, 3]^2 (a VAE with z_dim = 2)."""
    plt = pyplot()
    ticks = torch.linspace(-3, 3, num, device=device)
    z = torch.stack(torch.meshgrid(ticks, ticks.flip(0), indexing="xy"), -1).reshape(-1, 2)
    figure, axis = plt.subplots(figsize=(8, 8))
    axis.imshow(_grid(_mean_image(vae, z), image_shape, num, num), cmap="gray", vmin=0, vmax=1)
    axis.set_title("decoder means over z in [-3, 3]^2")
    axis.axis("off")
    return finish(figure, path, dpi=100, bbox_inches="tight")
