"""Built-in model/guide pairs for measuring gradient estimators, with exact gradients where they exist.

Each ``make_problem(name)`` registers its params (at the stated point) and returns a
``VarianceProblem``; ``problem.reference()`` gives the exact gradient of -ELBO with respect to
each unconstrained param at the params' current values (autograd through a closed-form -ELBO). The problems::

    gaussian       z ~ N(0, I_D), x ~ N(z, I_D); q(z) = N(loc, diag(scale^2))
    normal-normal  z ~ N(0, 1), x_n ~ N(z, 1/2^2), N = 20; q(z) = N(loc, scale^2) (conjugate)
    pyro-test      Pyro's test_gradient model: z_n ~ N(0, 1), x_n ~ N(z_n, 1), data [-0.5, 2.0];
                   q(z_n) = N(loc_n, scale), at loc = 0, scale = 1
    bernoulli      x_i ~ Bernoulli(1/2) with a factor exp(-(x_i - p_i)^2), p = [0.6, 0.51, 0.48];
                   q(x_i) = Bernoulli(sigmoid(logit)), one shared logit
    gmm            locs_k ~ N(0, 5^2), c_n ~ Cat(1/2, 1/2), x_n ~ N(locs_{c_n}, 1);
                   q(locs_k) = N(m_k, s_k^2), q(c_n) = Cat(softmax(logits_n)) (sampled assignments)
    vae            a VAE on the first 64 training images (binarized at 1/2 for a Bernoulli
                   likelihood) of ``dataset`` (digits, MNIST, ...): the TinyVAE at initialization,
                   or the VAE of a ``pyro-vi vae`` checkpoint at its trained weights (no reference)

Beyond the ELBO: ``normal_normal_log_evidence`` (log p(x) of the conjugate model, which the IWAE
bound equals for every k at the exact posterior) and ``pyro_test_iwae_gradient`` (the gradient
of minus the k-particle IWAE bound of ``pyro-test``, by Gauss-Hermite quadrature).

The references are computed by :mod:`~pyro_vi.estimators.exact` (``exact_gradient``: autograd
through a closed-form -ELBO); its ``exact_elbo`` / ``exact_elbo_gradient``, for any small pair, are
also reachable from here as ``problems.exact_elbo`` / ``problems.exact_elbo_gradient``.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor, nn

from pyro_vi.errors import ConfigError
from pyro_vi.estimators.exact import exact_elbo, exact_elbo_gradient, exact_gradient  # noqa: F401 (exact_elbo*: re-exported)

__all__ = [
    "MODELS",
    "VarianceProblem",
    "make_problem",
    "normal_normal_log_evidence",
    "pyro_test_iwae_gradient",
    "BERNOULLI_TARGETS",
    "TinyVAE",
]

MODELS = ("gaussian", "normal-normal", "pyro-test", "bernoulli", "gmm", "vae")


class VarianceProblem(NamedTuple):
    """A model/guide pair, its arguments, and (when it exists) its exact gradient."""

    name: str
    model: Callable
    guide: Callable
    args: tuple
    kwargs: dict
    reference: Callable[[], dict[str, Tensor]] | None  # exact d(-ELBO)/d(unconstrained params)


def make_problem(
    name: str,
    dim: int = 10,
    at_posterior: bool = False,
    seed: int = 0,
    checkpoint: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
) -> VarianceProblem:
    """The built-in problem ``name`` (see the module docstring), its params registered afresh.

    Args:
        dim: D of the ``gaussian`` toy.
        at_posterior: put the guide at the exact posterior (``gaussian``, ``normal-normal``).
        seed: seeds the toy data (and the VAE's initial weights).
        checkpoint: ``vae`` only: a checkpoint written by ``pyro-vi vae``; its VAE config is read
            from it and its weights loaded.
        dataset, data_dir: ``vae`` only: the images (default: the checkpoint's dataset, else digits).

    Raises:
        ConfigError: unknown name, bad dim, VAE options on another model, a dataset that is not
            the checkpoint's. CheckpointError: an unreadable checkpoint or one without a VAE config.
    """
    if name not in MODELS:
        raise ConfigError(f"unknown variance model {name!r}; choose one of {', '.join(MODELS)}")
    if name != "vae" and (checkpoint is not None or dataset is not None or data_dir is not None):
        raise ConfigError(f"checkpoint, dataset and data_dir apply to the vae model only, not {name!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"dim must be a positive integer, got {dim!r}")
    generator = torch.Generator().manual_seed(seed)
    for param in [key for key in pyro.get_param_store().keys()]:
        del pyro.get_param_store()[param]
    options = {"checkpoint": checkpoint, "dataset": dataset, "data_dir": data_dir} if name == "vae" else {}
    problem = _BUILDERS[name](generator, dim=dim, at_posterior=at_posterior, **options)
    problem.guide(*problem.args, **problem.kwargs)  # register the params at their initial values
    return problem



def _normal_entropy(scale: Tensor) -> Tensor:
    return 0.5 * torch.log(2 * math.pi * math.e * scale**2)


def _expected_normal_log_prob(x: Tensor, loc: Tensor, scale: Tensor, prior_loc, prior_scale) -> Tensor:
    """E_{z ~ N(loc, scale^2)} log N(x; z + prior_loc, prior_scale^2) (x and z interchangeable)."""
    return -0.5 * math.log(2 * math.pi * prior_scale**2) - ((x - loc - prior_loc) ** 2 + scale**2) / (2 * prior_scale**2)


# -- gaussian ------------------------------------------------------------------------------------


def _gaussian(generator, dim, at_posterior, **_):
    data = torch.randn(dim, generator=generator)

    def model(data):
        z = pyro.sample("z", dist.Normal(data.new_zeros(data.shape), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=data)

    def guide(data):
        # The posterior is N(x / 2, 1/2).
        loc = pyro.param("loc", data / 2 if at_posterior else data.new_zeros(data.shape))
        scale = pyro.param(
            "scale", data.new_full(data.shape, math.sqrt(0.5) if at_posterior else 1.0), constraint=constraints.positive
        )
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def negative_elbo(params):
        loc, scale = params["loc"], params["scale"]
        prior = _expected_normal_log_prob(0.0, loc, scale, 0.0, 1.0)
        likelihood = _expected_normal_log_prob(data, loc, scale, 0.0, 1.0)
        return -(prior + likelihood + _normal_entropy(scale)).sum()

    return VarianceProblem("gaussian", model, guide, (data,), {}, lambda: exact_gradient(negative_elbo, ["loc", "scale"]))


# -- normal-normal -------------------------------------------------------------------------------

_OBSERVATION_SCALE = 0.5


def _normal_normal(generator, at_posterior, **_):
    data = 1.0 + _OBSERVATION_SCALE * torch.randn(20, generator=generator)
    precision = 1.0 + len(data) / _OBSERVATION_SCALE**2
    posterior_loc = (data.sum() / _OBSERVATION_SCALE**2) / precision

    def model(data):
        z = pyro.sample("z", dist.Normal(data.new_zeros(()), 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(z, _OBSERVATION_SCALE), obs=data)

    def guide(data):
        loc = pyro.param("loc", posterior_loc.clone() if at_posterior else data.new_zeros(()))
        scale = pyro.param(
            "scale",
            data.new_tensor(precision**-0.5 if at_posterior else 1.0),
            constraint=constraints.positive,
        )
        pyro.sample("z", dist.Normal(loc, scale))

    def negative_elbo(params):
        loc, scale = params["loc"], params["scale"]
        prior = _expected_normal_log_prob(0.0, loc, scale, 0.0, 1.0)
        likelihood = _expected_normal_log_prob(data, loc, scale, 0.0, _OBSERVATION_SCALE).sum()
        return -(prior + likelihood + _normal_entropy(scale))

    return VarianceProblem("normal-normal", model, guide, (data,), {}, lambda: exact_gradient(negative_elbo, ["loc", "scale"]))


def normal_normal_log_evidence(data: Tensor) -> Tensor:
    """log p(x) of ``normal-normal``: x ~ N(0, sigma^2 I + 1 1^T) once z ~ N(0, 1) is integrated out."""
    data = data.double()
    covariance = _OBSERVATION_SCALE**2 * torch.eye(len(data), dtype=data.dtype) + 1.0
    return torch.distributions.MultivariateNormal(data.new_zeros(len(data)), covariance).log_prob(data)


# -- pyro-test -----------------------------------------------------------------------------------


def _pyro_test(generator, **_):
    data = torch.tensor([-0.5, 2.0])

    def model(data):
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Normal(data.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=data)

    def guide(data):
        loc = pyro.param("loc", data.new_zeros(data.shape))
        scale = pyro.param("scale", data.new_ones(1), constraint=constraints.positive)
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Normal(loc, scale))

    def negative_elbo(params):
        loc, scale = params["loc"], params["scale"]
        prior = _expected_normal_log_prob(0.0, loc, scale, 0.0, 1.0)
        likelihood = _expected_normal_log_prob(data, loc, scale, 0.0, 1.0)
        return -(prior + likelihood + _normal_entropy(scale)).sum()

    return VarianceProblem("pyro-test", model, guide, (data,), {}, lambda: exact_gradient(negative_elbo, ["loc", "scale"]))


def pyro_test_iwae_gradient(num_particles: int, num_nodes: int = 24) -> dict[str, Tensor]:
    """d(-IWAE_k)/d(unconstrained loc, scale) of ``pyro-test`` at the param store's values.

    The bound is a sum over the two datapoints of E[log (1/k) sum_i w(z_i)] with z_i = loc_n +
    scale * eps_i, eps ~ N(0, I_k); the expectation is a k-dimensional Gauss-Hermite product rule
    with ``num_nodes`` nodes per dimension. The log-sum-exp's soft kink slows convergence: at k <= 3
    and 24 nodes the result moves by about 1e-4 when the nodes are doubled, far under the Monte
    Carlo errors it is compared with. k = 1 gives the ELBO's gradient (exact: quadratic integrand).
    """
    import numpy

    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or not 1 <= num_particles <= 4:
        raise ConfigError(f"num_particles must be an integer in 1..4 for the quadrature (nodes^k points), got {num_particles!r}")
    nodes, weights = numpy.polynomial.hermite_e.hermegauss(num_nodes)  # weight exp(-eps^2 / 2)
    nodes, weights = torch.tensor(nodes), torch.tensor(weights) / math.sqrt(2 * math.pi)
    grids = torch.meshgrid(*([nodes] * num_particles), indexing="ij")
    noise = torch.stack([g.reshape(-1) for g in grids], -1)  # (num_nodes^k, k)
    weight = torch.stack(torch.meshgrid(*([weights] * num_particles), indexing="ij"), -1).reshape(-1, num_particles).prod(-1)
    data = torch.tensor([-0.5, 2.0], dtype=torch.float64)

    def negative_bound(params):
        loc, scale = params["loc"].double()[:, None, None], params["scale"].double()
        z = loc + scale * noise  # (num_data, num_nodes^k, k)
        log_weight = (
            torch.distributions.Normal(0.0, 1.0).log_prob(z)
            + torch.distributions.Normal(z, 1.0).log_prob(data[:, None, None])
            - torch.distributions.Normal(loc, scale).log_prob(z)
        )
        bound = torch.logsumexp(log_weight, -1) - math.log(num_particles)  # (num_data, num_nodes^k)
        return -(bound * weight).sum()

    return exact_gradient(negative_bound, ["loc", "scale"])


# -- bernoulli -----------------------------------------------------------------------------------

BERNOULLI_TARGETS = (0.6, 0.51, 0.48)


def _bernoulli(generator, **_):
    targets = torch.tensor(BERNOULLI_TARGETS)

    def model(targets):
        with pyro.plate("data", len(targets)):
            x = pyro.sample("x", dist.Bernoulli(targets.new_tensor(0.5)))
            pyro.factor("cost", -((x - targets) ** 2))

    def guide(targets):
        logit = pyro.param("logit", targets.new_zeros(()))
        with pyro.plate("data", len(targets)):
            pyro.sample("x", dist.Bernoulli(logits=logit))

    def negative_elbo(params):
        # Exact by enumeration of each x_i in {0, 1}: E_q[(x - p)^2 + log q(x) - log 1/2].
        probs = torch.sigmoid(params["logit"])
        cost = probs * (1 - targets) ** 2 + (1 - probs) * targets**2
        negative_entropy = probs * torch.log(probs) + (1 - probs) * torch.log1p(-probs)
        return (cost + negative_entropy + math.log(2)).sum()

    return VarianceProblem("bernoulli", model, guide, (targets,), {}, lambda: exact_gradient(negative_elbo, ["logit"]))


# -- gmm -----------------------------------------------------------------------------------------

_GMM_PRIOR_SCALE = 5.0


def _gmm(generator, **_):
    num_data, num_components = 20, 2
    centers = torch.tensor([-2.0, 2.0])
    data = centers[torch.arange(num_data) % num_components] + torch.randn(num_data, generator=generator)
    initial_logits = 0.1 * torch.randn(num_data, num_components, generator=generator)

    def model(data):
        with pyro.plate("components", num_components):
            locs = pyro.sample("locs", dist.Normal(data.new_zeros(()), _GMM_PRIOR_SCALE))
        with pyro.plate("data", len(data)):
            c = pyro.sample("c", dist.Categorical(logits=data.new_zeros(num_components)))
            pyro.sample("x", dist.Normal(locs[c], 1.0), obs=data)

    def guide(data):
        loc = pyro.param("locs_loc", torch.tensor([-1.0, 1.0]))
        scale = pyro.param("locs_scale", data.new_ones(num_components), constraint=constraints.positive)
        logits = pyro.param("assignment_logits", initial_logits.clone())
        with pyro.plate("components", num_components):
            pyro.sample("locs", dist.Normal(loc, scale))
        with pyro.plate("data", len(data)):
            pyro.sample("c", dist.Categorical(logits=logits))

    def negative_elbo(params):
        loc, scale, logits = params["locs_loc"], params["locs_scale"], params["assignment_logits"]
        log_q = torch.log_softmax(logits, -1)  # (num_data, num_components)
        probs = log_q.exp()
        expected_likelihood = _expected_normal_log_prob(data[:, None], loc, scale, 0.0, 1.0)  # (N, K)
        per_datapoint = (probs * (expected_likelihood - math.log(num_components) - log_q)).sum()
        prior = _expected_normal_log_prob(0.0, loc, scale, 0.0, _GMM_PRIOR_SCALE).sum()
        return -(per_datapoint + prior + _normal_entropy(scale).sum())

    names = ["locs_loc", "locs_scale", "assignment_logits"]
    return VarianceProblem("gmm", model, guide, (data,), {}, lambda: exact_gradient(negative_elbo, names))


# -- vae -----------------------------------------------------------------------------------------


class TinyVAE(nn.Module):
    """p(z) = N(0, I), p(x | z) = Bernoulli(decoder(z)); q(z | x) = N(encoder(x)), z in plate "data"."""

    def __init__(self, pixels: int = 64, z_dim: int = 8, hidden_dim: int = 64):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = nn.Sequential(nn.Linear(pixels, hidden_dim), nn.Softplus(), nn.Linear(hidden_dim, 2 * z_dim))
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden_dim), nn.Softplus(), nn.Linear(hidden_dim, pixels))

    def model(self, x: Tensor) -> None:
        """z_n ~ N(0, I);  x_n | z_n ~ Bernoulli(sigmoid(decoder(z_n)))."""
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: Tensor) -> None:
        """q(z_n | x_n) = N(loc(x_n), diag(scale(x_n)^2)) from the encoder."""
        pyro.module("encoder", self.encoder)
        loc, log_scale = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def _vae(generator, checkpoint=None, dataset=None, data_dir=None, **_):
    from pyro_vi.vae.data import binarize, load_dataset

    torch.manual_seed(int(torch.randint(2**31, (), generator=generator)))
    if checkpoint is None:
        images = load_dataset(dataset or "digits", data_dir).train_images[:64]
        vae = TinyVAE(pixels=images.shape[-1])
        return VarianceProblem("vae", vae.model, vae.guide, (binarize(images, "threshold"),), {}, None)
    from pyro_vi.vae.model import load_checkpoint

    vae, config = load_checkpoint(checkpoint)
    trained_on = config.get("dataset")
    if dataset is not None and trained_on not in (None, dataset):
        raise ConfigError(f"the checkpoint was trained on {trained_on}, not {dataset}; drop --dataset or pass another checkpoint")
    images = load_dataset(dataset or trained_on or "digits", data_dir).train_images[:64]
    if images.shape[-1] != vae.x_dim:
        raise ConfigError(f"the checkpoint's VAE takes {vae.x_dim} pixels but the dataset has {images.shape[-1]}")
    if vae.likelihood_name == "bernoulli":
        images = binarize(images, "threshold")
    return VarianceProblem("vae", vae.model, vae.guide, (images,), {}, None)


_BUILDERS = {
    "gaussian": _gaussian,
    "normal-normal": _normal_normal,
    "pyro-test": _pyro_test,
    "bernoulli": _bernoulli,
    "gmm": _gmm,
    "vae": _vae,
}
