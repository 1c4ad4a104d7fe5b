"""The amortized VAE: encoder (inference network), decoder (generative network), its data and metrics.

* :mod:`~pyro_vi.vae.model`     ``VAE`` (model and guide), ``load_checkpoint``
* :mod:`~pyro_vi.vae.train`     ``fit`` on image data (``pyro_vi.fit_images``), ``TrainConfig``
* :mod:`~pyro_vi.vae.evaluate`  reconstruction and KL apart, IWAE log p(x), active units, gaps
* :mod:`~pyro_vi.vae.data`      MNIST, Fashion-MNIST and the embedded digits, binarization
"""

from pyro_vi.vae import data, evaluate, model, train
from pyro_vi.vae.data import Dataset, binarize, load_dataset, validate_images
from pyro_vi.vae.model import VAE, load_checkpoint
from pyro_vi.vae.train import TrainConfig

__all__ = ["VAE", "load_checkpoint", "TrainConfig", "Dataset", "load_dataset", "binarize", "validate_images"]
