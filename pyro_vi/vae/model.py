"""The amortized variational autoencoder as a Pyro model/guide pair.

Generative network (decoder)::

    z_n ~ N(0, I)                      n = 1..N, z_n in R^z_dim
    x_n | z_n ~ p(x | decoder(z_n))    Bernoulli(logits), ContinuousBernoulli(logits) or N(loc, scale)

Inference network (encoder)::

    q(z_n | x_n) = N(loc(x_n), diag(exp(log_variance(x_n))))

The encoder outputs a log-variance, so any real output is a valid scale. Minibatches enter as
``x`` with their ``indices`` into the ``num_data`` training points: ``pyro.plate("data", num_data,
subsample=indices)`` scales the ELBO to the full data. ``kl_weight`` scales the latent site in both
model and guide (``poutine.scale``), so the ELBO becomes E_q[log p(x|z)] - kl_weight * KL: KL
annealing without touching the estimator.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from torch import Tensor, nn

from pyro_vi import preflight
from pyro_vi.vae.data import validate_images
from pyro_vi.errors import ConfigError, DataError

__all__ = ["LIKELIHOODS", "Encoder", "Decoder", "VAE", "load_checkpoint"]

LIKELIHOODS = ("bernoulli", "continuous-bernoulli", "gaussian")


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers = []
    for i, (size_in, size_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(size_in, size_out))
        if i < len(sizes) - 2:
            layers.append(nn.Softplus())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """x -> (loc, log_variance) of q(z | x)."""

    def __init__(self, x_dim: int, hidden_dims: Sequence[int], z_dim: int):
        super().__init__()
        self.body = _mlp([x_dim, *hidden_dims, 2 * z_dim])
        self.z_dim = z_dim

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(loc, log_variance)``, each ``(batch, z_dim)``, for images ``x`` of shape ``(batch, x_dim)``."""
        loc, log_variance = self.body(x).split(self.z_dim, dim=-1)
        return loc, log_variance


class Decoder(nn.Module):
    """z -> the likelihood's parameter (logits, or the Gaussian's loc)."""

    def __init__(self, z_dim: int, hidden_dims: Sequence[int], x_dim: int):
        super().__init__()
        self.body = _mlp([z_dim, *hidden_dims, x_dim])

    def forward(self, z: Tensor) -> Tensor:
        """The likelihood's parameter, ``(batch, x_dim)``, for latents ``z`` of shape ``(batch, z_dim)``."""
        return self.body(z)


class VAE(nn.Module):
    """Amortized VAE: ``model`` is the generative network with its prior, ``guide`` the encoder.

    Args:
        x_dim: pixels per image.
        z_dim: latent dimension.
        hidden_dims: hidden layer sizes of the encoder; the decoder mirrors them.
        likelihood: ``bernoulli``, ``continuous-bernoulli`` or ``gaussian``.
        x_scale: the Gaussian likelihood's scale; ``None`` learns one shared scale (a Pyro param).
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int = 50,
        hidden_dims: Sequence[int] = (400,),
        likelihood: str = "bernoulli",
        x_scale: float | None = 0.1,
    ):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ConfigError(f"unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
        if isinstance(hidden_dims, (str, bytes)) or not hasattr(hidden_dims, "__iter__"):
            raise ConfigError(f"hidden_dims must be a sequence of positive integers such as (400,), got {hidden_dims!r}")
        hidden_dims = tuple(hidden_dims)
        for name, value in (("x_dim", x_dim), ("z_dim", z_dim), *(("hidden size", h) for h in hidden_dims)):
            if not _is_positive_integer(value):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if x_scale is not None and not (isinstance(x_scale, numbers.Real) and 0 < x_scale < math.inf):
            raise ConfigError(f"x_scale must be positive and finite, got {x_scale!r}")
        preflight.check_allocation(
            4.0 * (preflight.mlp_floats([x_dim, *hidden_dims, 2 * z_dim]) + preflight.mlp_floats([z_dim, *hidden_dims[::-1], x_dim])),
            f"a VAE with z_dim {z_dim} and hidden sizes {tuple(hidden_dims)} ({x_dim} pixels; its parameters and Adam state)",
        )
        self.x_dim, self.z_dim, self.hidden_dims = int(x_dim), int(z_dim), tuple(int(h) for h in hidden_dims)
        self.likelihood_name, self.x_scale = likelihood, x_scale
        self.encoder = Encoder(self.x_dim, self.hidden_dims, self.z_dim)
        self.decoder = Decoder(self.z_dim, tuple(reversed(self.hidden_dims)), self.x_dim)

    @property
    def config(self) -> dict:
        """What identifies the architecture (checked when a checkpoint is loaded)."""
        return {
            "x_dim": self.x_dim,
            "z_dim": self.z_dim,
            "hidden_dims": list(self.hidden_dims),
            "likelihood": self.likelihood_name,
            "x_scale": self.x_scale,
        }

    def validate(self, x: Tensor, name: str = "data") -> Tensor:
        """Check that ``x`` suits this VAE: a finite ``(num_data, x_dim)`` float tensor, inside the
        likelihood's support ([0, 1] for the Bernoulli likelihoods). ``fit`` calls it once, before
        training, when given ``vae.model``; the steps themselves check nothing.

        Raises:
            DataError: one line saying what is wrong and what to do.
        """
        validate_images(x, self.likelihood_name, name=name)
        if x.shape[-1] != self.x_dim:
            raise DataError(
                f"{name} has {x.shape[-1]} pixels per row but the VAE takes x_dim={self.x_dim}; "
                f"build the VAE with x_dim={x.shape[-1]} or pass the data it was built for"
            )
        return x

    def likelihood(self, decoded: Tensor) -> dist.Distribution:
        """p(x | z) from the decoder output, one event per image."""
        if self.likelihood_name == "bernoulli":
            # validate_args=False lets grey levels in [0, 1] be scored (cross-entropy), as is usual.
            return dist.Bernoulli(logits=decoded, validate_args=False).to_event(1)
        if self.likelihood_name == "continuous-bernoulli":
            return dist.ContinuousBernoulli(logits=decoded).to_event(1)
        if self.x_scale is None:
            scale = pyro.param("x_scale", lambda: decoded.new_tensor(1.0), constraint=constraints.positive)
        else:
            scale = decoded.new_tensor(self.x_scale)
        return dist.Normal(decoded, scale).to_event(1)

    def prior(self, num: int, like: Tensor) -> dist.Distribution:
        """p(z) = N(0, I) for ``num`` points, on ``like``'s device."""
        zeros = like.new_zeros(num, self.z_dim)
        return dist.Normal(zeros, 1.0 + zeros).to_event(1)

    def model(self, x: Tensor, indices: Tensor | None = None, num_data: int | None = None, kl_weight: float = 1.0):
        """p(x, z) for a minibatch ``x`` of shape (batch, x_dim)."""
        pyro.module("decoder", self.decoder)
        with _data_plate(x, indices, num_data):
            with poutine.scale(scale=kl_weight):
                z = pyro.sample("z", self.prior(x.shape[0], x))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: Tensor, indices: Tensor | None = None, num_data: int | None = None, kl_weight: float = 1.0):
        """q(z | x) from the encoder."""
        pyro.module("encoder", self.encoder)
        with _data_plate(x, indices, num_data):
            loc, log_variance = self.encoder(x)
            with poutine.scale(scale=kl_weight):
                pyro.sample("z", dist.Normal(loc, torch.exp(0.5 * log_variance)).to_event(1))

    def posterior(self, x: Tensor) -> dist.Distribution:
        """The encoder's q(z | x) as a distribution, for evaluation and plots (no Pyro sites)."""
        loc, log_variance = self.encoder(x)
        return dist.Normal(loc, torch.exp(0.5 * log_variance)).to_event(1)


def _is_positive_integer(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(value) and int(value) == value and value > 0


def _data_plate(x: Tensor, indices: Tensor | None, num_data: int | None) -> pyro.plate:
    """``pyro.plate("data")`` over the minibatch, scaled to ``num_data`` points."""
    batch = x.shape[0]
    num_data = batch if num_data is None else int(num_data)
    if indices is None and num_data != batch:
        indices = torch.arange(batch, device=x.device)
    return pyro.plate("data", num_data, subsample=indices, device=x.device)


def load_checkpoint(path, device: torch.device | str = "cpu") -> tuple["VAE", dict]:
    """The VAE saved in a ``pyro-vi vae`` checkpoint, with its params in a cleared param store
    (the encoder and decoder bound to them), and the checkpoint's model config.

    Raises:
        CheckpointError: the file is not a usable checkpoint, or holds no (or another) VAE config.
    """
    from pyro_vi.engine import checkpoint
    from pyro_vi.errors import CheckpointError

    saved = checkpoint.load(path)
    config = saved["config"].get("model", {})
    try:
        vae = VAE(config["x_dim"], config["z_dim"], config["hidden_dims"], config["likelihood"], config["x_scale"])
    except KeyError as missing:
        raise CheckpointError(f"checkpoint {str(path)!r} has no VAE config ({missing} missing); pass one written by pyro-vi vae") from None
    except ConfigError as error:
        raise CheckpointError(f"checkpoint {str(path)!r} has an unusable VAE config ({error})") from None
    vae = vae.to(device)
    expected = {**checkpoint.module_params("encoder", vae.encoder), **checkpoint.module_params("decoder", vae.decoder)}
    if vae.likelihood_name == "gaussian" and vae.x_scale is None:
        expected["x_scale"] = ((), torch.float32)
    checkpoint.check_params(saved, expected, path, optional=("x_scale",))
    # The modules' own parameters become the store's entries; the checkpoint's values are copied into
    # them in place (the engine's restore on resume), a learned x_scale added with its constraint.
    pyro.clear_param_store()
    pyro.module("encoder", vae.encoder)
    pyro.module("decoder", vae.decoder)
    checkpoint.restore_params(saved, device)
    return vae, config
