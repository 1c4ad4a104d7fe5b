"""Gaussian mixture: EM vs SVI vs scikit-learn on the same synthetic data.

The same model and the same starting point (k-means++), three ways to maximize the same
objective: EM (coordinate ascent, closed-form steps), SVI with a MAP guide and the assignments
summed out (gradient ascent on the same log-likelihood), SVI with the Bayesian guide (distributions
over the globals, sampled assignments, score-function gradients; its point estimate carries the weak priors), and
scikit-learn's GaussianMixture.
"""

import argparse
import time

import pyro_vi
from pyro_vi import mixture


def main(args):
    """Fit the same synthetic data by EM, SVI (MAP and Bayesian guides) and scikit-learn; print one row each."""
    device = pyro_vi.resolve_device(args.device)
    data = mixture.data.synthetic(args.num_components, args.dim, args.num_data, args.separation, args.seed)
    train, test = data.train.to(device), data.test.to(device)

    mixture.em.warm_up(train, args.num_components)  # time the fits, not Pyro's first trace
    start = time.perf_counter()
    em = mixture.fit_em(train, args.num_components, "full", seed=args.seed, tol=args.tol)
    em_seconds = time.perf_counter() - start
    start = time.perf_counter()
    svi = mixture.svi.run_svi(train, em.initial_params, "map", num_steps=args.num_steps, learning_rate=args.learning_rate)
    svi_seconds = time.perf_counter() - start
    # Bayesian guide: a distribution over the globals and a sampled q_n(z) per point (score function,
    # TraceGraph_ELBO), from the same start with every q_n uniform; it needs proper priors.
    start = time.perf_counter()
    prior = mixture.Prior.from_data(train, args.num_components)
    bayesian = mixture.svi.run_svi(train, em.initial_params, "bayesian", prior=prior, num_steps=args.num_steps,
                                   learning_rate=args.learning_rate)
    bayesian_seconds = time.perf_counter() - start
    sklearn = mixture.eval.fit_sklearn(train, em.initial_params, tol=args.tol)

    print(f"{'method':<14} {'train ll':>10} {'test ll':>10} {'ARI':>6} {'iters':>6} {'seconds':>8}")
    rows = [("em", em.params, em.iterations, em_seconds), ("svi-map", svi.params, svi.steps, svi_seconds),
            ("svi-bayesian", bayesian.params, bayesian.steps, bayesian_seconds),
            ("sklearn", sklearn.params, sklearn.iterations, sklearn.seconds)]
    for name, params, iterations, seconds in rows:
        labels = mixture.model.assignment_probabilities(train, params).argmax(-1)
        print(f"{name:<14} {mixture.eval.average_log_likelihood(train, params):>10.4f} "
              f"{mixture.eval.average_log_likelihood(test, params):>10.4f} "
              f"{mixture.eval.adjusted_rand_index(data.train_labels, labels):>6.3f} {iterations:>6d} {seconds:>8.3f}")
    print(f"{'truth':<14} {mixture.eval.average_log_likelihood(train, data.true_params.to(device=device)):>10.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-components", type=int, default=4)
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--num-data", type=int, default=2000)
    parser.add_argument("--separation", type=float, default=3.0)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--num-steps", type=int, default=300)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    main(parser.parse_args())
