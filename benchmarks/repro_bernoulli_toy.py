"""Reproduction 3: the Bernoulli toy of Liu et al. (2019) / Kool et al. (2020).

x_i ~ Bernoulli(1/2) with a factor exp(-(x_i - p_i)^2), p = [0.6, 0.51, 0.48]; guide
q(x_i) = Bernoulli(sigmoid(logit)) with one shared logit (``variance_models.make_problem("bernoulli")``).
The exact gradient of -ELBO = E_q[sum_i (x_i - p_i)^2 + log q(x) - log 2^-3] is computed by
enumerating the 2^3 outcomes (and checked against the problem's closed form). For k particles in
``--particles``: mean, variance, and bias +- standard error of score (k averaged), rloo (k, leave
one out) and gumbel (Concrete relaxation, k averaged; BIASED, at ``--temperatures``). Writes JSON, a
figure (variance and bias vs k) and a row in RESULTS.md.
"""

import argparse
import itertools
import sys
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from pyro_vi import get_estimator, gradient_variance  # noqa: E402
from pyro_vi.estimators import problems as variance_models  # noqa: E402


def exact_gradient_by_enumeration(logit: float, targets=variance_models.BERNOULLI_TARGETS) -> float:
    """d(-ELBO)/d logit, summing over all 2^D outcomes x of the guide."""
    logit = torch.tensor(float(logit), dtype=torch.float64, requires_grad=True)
    targets = torch.tensor(targets, dtype=torch.float64)
    negative_elbo = 0.0
    for outcome in itertools.product((0.0, 1.0), repeat=len(targets)):
        x = torch.tensor(outcome, dtype=torch.float64)
        log_q = torch.distributions.Bernoulli(logits=logit).log_prob(x).sum()
        log_p = len(targets) * torch.log(torch.tensor(0.5, dtype=torch.float64)) - ((x - targets) ** 2).sum()
        negative_elbo = negative_elbo + log_q.exp() * (log_q - log_p)
    (gradient,) = torch.autograd.grad(negative_elbo, logit)
    return float(gradient)


def main(args):
    _common.setup_threads(torch.get_num_threads())  # torch honours OMP_NUM_THREADS
    ks = [2, 8] if args.quick else args.particles
    num_replicates = 10000 if args.quick else args.replicates
    problem = variance_models.make_problem("bernoulli", seed=args.seed)
    logit = pyro.get_param_store()["logit"].item()  # where the guide starts (0)
    exact = exact_gradient_by_enumeration(logit)
    closed_form = float(problem.reference()["logit"])
    print(f"exact d(-ELBO)/d logit at logit 0: enumeration {exact:.6f}, closed form {closed_form:.6f}")
    contenders = [("score", None), ("rloo", None)] + [("gumbel", t) for t in args.temperatures]
    rows = []
    for name, temperature in contenders:
        for k in ks:
            problem = variance_models.make_problem("bernoulli", seed=args.seed)
            options = {} if temperature is None else {"temperature": temperature}
            estimator = get_estimator(name, num_particles=k, **options)
            result = gradient_variance(problem.model, problem.guide, *problem.args, estimator=estimator,
                                       num_replicates=num_replicates, seed=args.seed,
                                       reference={"logit": torch.tensor(exact)})
            bias, standard_error = float(result.bias["logit"]), float(result.bias_standard_error["logit"])
            rows.append({"estimator": name, "temperature": temperature, "num_particles": k,
                         "mean": float(result.mean["logit"]), "variance": float(result.variance["logit"]),
                         "bias": bias, "bias_standard_error": standard_error, "bias_in_standard_errors": bias / standard_error})
            label = name if temperature is None else f"{name} (t={temperature})"
            print(f"{label:16s} k={k:3d} mean {rows[-1]['mean']:+.4f} variance {rows[-1]['variance']:.4g} "
                  f"bias {bias:+.4f} ± {standard_error:.4f} ({bias / standard_error:+.1f} SE)")
    stem = "repro_bernoulli_toy" + ("_quick" if args.quick else "")
    out = Path(args.out_dir) if args.out_dir else _common.RESULTS_DIR
    payload = {"targets": variance_models.BERNOULLI_TARGETS, "logit": logit, "exact_gradient": exact,
               "exact_gradient_closed_form": closed_form, "replicates": num_replicates, "rows": rows,
               "machine": _common.machine(), "commit": _common.commit()}
    _common.write_json(stem, payload, out)
    figure(rows, exact, out / f"{stem}.png")
    if not args.no_table:
        k = ks[-1]
        at_k = [r for r in rows if r["num_particles"] == k]
        numbers = f"exact {exact:.4f}; k={k}: " + ", ".join(
            f"{r['estimator']}{'' if r['temperature'] is None else ' t=' + str(r['temperature'])} var {r['variance']:.3g} bias {r['bias']:+.4f}±{r['bias_standard_error']:.4f}"
            for r in at_k)
        score = next(r["variance"] for r in at_k if r["estimator"] == "score")
        ratios = ", ".join(f"{r['estimator']}{'' if r['temperature'] is None else ' t=' + str(r['temperature'])}/score variance {r['variance'] / score:.3g}"
                           for r in at_k if r["estimator"] != "score")
        _common.append_results_row(f"Bernoulli toy (Liu 2019 / Kool 2020), R={num_replicates}", numbers, ratios, args.results_table)
    return payload


def figure(rows, exact, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key in dict.fromkeys((r["estimator"], r["temperature"]) for r in rows):
        points = [r for r in rows if (r["estimator"], r["temperature"]) == key]
        label = key[0] if key[1] is None else f"{key[0]} (t={key[1]})"
        ks = [r["num_particles"] for r in points]
        left.plot(ks, [r["variance"] for r in points], marker="o", label=label)
        right.errorbar(ks, [r["bias"] for r in points], yerr=[2 * r["bias_standard_error"] for r in points], marker="o", capsize=3, label=label)
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("k (particles)")
    left.set_ylabel("variance of the gradient estimate")
    right.axhline(0, color="grey", linestyle=":")
    right.set_xscale("log", base=2)
    right.set_xlabel("k (particles)")
    right.set_ylabel(f"bias (mean - exact {exact:.4f}), ±2 SE")
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    """The command line (``argv``: a list, for tests)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    parser.add_argument("--replicates", type=int, default=20000)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 1.0], help="gumbel's Concrete temperatures")
    _common.add_common_arguments(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
