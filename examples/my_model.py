"""Your own model: the coin of Pyro's "SVI Part I", fitted by pyro_vi.fit and by the pyro-vi commands.

f ~ Beta(10, 10);  x_n | f ~ Bernoulli(f), n = 1..10, six heads and four tails.
The posterior is Beta(16, 14) (mean 16/30 = 0.533); the guide q(f) = Beta(alpha_q, beta_q) contains
it, so SVI can reach it exactly. The same file works on the command line:

    python examples/my_model.py --write-data examples/my_model_data.npz
    pyro-vi fit examples/my_model.py:model examples/my_model.py:guide --data examples/my_model_data.npz
    pyro-vi fit examples/my_model.py:model auto-normal --data examples/my_model_data.npz --out runs/fit-auto
    pyro-vi variance examples/my_model.py:model examples/my_model.py:guide --data examples/my_model_data.npz \
        --estimators reparam,score --checkpoint runs/fit/checkpoint.pt
    pyro-vi compare examples/my_model.py:model examples/my_model.py:guide --data examples/my_model_data.npz \
        --estimators reparam,score-baseline,rloo

The data file holds one array, ``data``, given to ``model(data=...)`` and ``guide(data=...)``.
"""

import argparse

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

import pyro_vi

PRIOR_HEADS, PRIOR_TAILS = 10.0, 10.0


def model(data):
    """f ~ Beta(10, 10);  x_n | f ~ Bernoulli(f)."""
    f = pyro.sample("latent_fairness", dist.Beta(data.new_tensor(PRIOR_HEADS), data.new_tensor(PRIOR_TAILS)))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("obs", dist.Bernoulli(f), obs=data)


def guide(data):
    """q(f) = Beta(alpha_q, beta_q), starting at Beta(15, 15)."""
    alpha_q = pyro.param("alpha_q", data.new_tensor(15.0), constraint=constraints.positive)
    beta_q = pyro.param("beta_q", data.new_tensor(15.0), constraint=constraints.positive)
    pyro.sample("latent_fairness", dist.Beta(alpha_q, beta_q))


def coin_data() -> np.ndarray:
    """Six heads and four tails."""
    return np.array([1.0] * 6 + [0.0] * 4, dtype=np.float32)


def exact_posterior(data: torch.Tensor) -> tuple[float, float]:
    """Beta(10 + heads, 10 + tails)."""
    heads = float(data.sum())
    return PRIOR_HEADS + heads, PRIOR_TAILS + data.shape[0] - heads


def main(args):
    """Write the coin data (``--write-data``), or fit the model and guide and compare with the exact posterior."""
    if args.write_data:
        np.savez(args.write_data, data=coin_data())
        print(f"wrote {args.write_data} (array 'data': 6 heads, 4 tails)")
        return
    data = torch.as_tensor(coin_data())
    pyro.clear_param_store()
    result = pyro_vi.fit(model, guide, data, num_steps=args.num_steps, optim=pyro_vi.engine.optim.Adam({"lr": args.learning_rate}),
                         seed=args.seed, progress=False)
    alpha, beta = float(result.params["alpha_q"]), float(result.params["beta_q"])
    exact_alpha, exact_beta = exact_posterior(data)
    print(f"q(f) = Beta({alpha:.2f}, {beta:.2f}), mean {alpha / (alpha + beta):.4f}; "
          f"exact posterior Beta({exact_alpha:.0f}, {exact_beta:.0f}), mean {exact_alpha / (exact_alpha + exact_beta):.4f}; "
          f"{result.steps_per_second:.0f} steps/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=2000)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-data", metavar="FILE.npz", default=None, help="write the coin's data file and exit")
    main(parser.parse_args())
