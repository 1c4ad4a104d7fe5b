"""Gradient variance of estimators on Pyro's gradient test model.

z_n ~ N(0, 1), x_n | z_n ~ N(z_n, 1), data [-0.5, 2.0]; guide q(z_n) = N(loc_n, scale) at
loc = 0, scale = 1, where d(-ELBO)/dloc = [0.5, -2.0] and d(-ELBO)/dlog(scale) = 2. Prints, per
estimator, the mean gradient, its total variance and SNR over replicates.
"""

import argparse

from pyro_vi import gradient_variance
from pyro_vi.estimators import problems


def main(args):
    """Print the gradient mean, total variance and SNR of each estimator on Pyro's test_gradient problem."""
    problem = problems.make_problem("pyro-test", seed=args.seed)
    exact = problem.reference()
    print(f"exact: loc {exact['loc'].tolist()}, scale {exact['scale'].tolist()}")
    for name in args.estimators.split(","):
        result = gradient_variance(
            problem.model, problem.guide, *problem.args, estimator=name, num_replicates=args.replicates,
            num_particles=args.particles, seed=args.seed, reference=exact,
        )
        mean = {param: [round(v, 3) for v in value.tolist()] for param, value in result.mean.items()}
        print(f"{name:12s} k={args.particles} mean {mean} total variance {result.total_variance:.3f} SNR {result.snr:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimators", default="reparam,score,score-naive,rloo,stl,analytic-kl")
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--particles", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
