"""Reproduction 1: Mohamed, Rosca, Figurnov and Mnih (2020), section 3, figure 2.

x ~ N(loc = 1, scale = 1); costs (x - k)^2, exp(-k x^2), cos(k x) over a range of k. For each, the
per-sample variance of the estimates of d/d loc and d/d scale of E[f(x; k)] by score,
score-optimal-baseline and reparam (pathwise): Monte Carlo (``--samples`` draws) next to the exact
value by Gauss-Hermite quadrature (``pyro_vi.estimators.toys``). Writes JSON, a 2 x 3 figure of
variance against k (lines exact, markers Monte Carlo) and a row in RESULTS.md.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from pyro_vi.estimators import toys as gradient_toys  # noqa: E402


def main(args):
    num_k = 7 if args.quick else args.num_k
    num_samples = 20_000 if args.quick else args.samples
    rows = []
    for cost in gradient_toys.COSTS:
        for k in np.linspace(*gradient_toys.K_RANGES[cost], num_k):
            exact_gradient = gradient_toys.exact_gradient(cost, float(k))
            for estimator in gradient_toys.TOY_ESTIMATORS:
                for index, param in enumerate(gradient_toys.PARAMS):
                    moments = gradient_toys.exact_moments(estimator, cost, float(k), param)
                    samples = gradient_toys.gradient_samples(estimator, cost, float(k), param, num_samples, seed=args.seed + index)
                    variance = float(samples.var(ddof=1))
                    variance_standard_error = float(np.sqrt(max(moments.fourth_central_moment - moments.variance**2, 0.0) / num_samples))
                    rows.append({
                        "cost": cost, "k": float(k), "estimator": estimator, "param": param,
                        "exact_gradient": exact_gradient[param], "monte_carlo_mean": float(samples.mean()),
                        "mean_standard_error": float(np.sqrt(moments.variance / num_samples)),
                        "exact_variance": moments.variance, "monte_carlo_variance": variance,
                        "variance_standard_error": variance_standard_error,
                        "variance_error_in_standard_errors": abs(variance - moments.variance) / variance_standard_error if variance_standard_error > 0 else 0.0,
                    })
    worst = max(r["variance_error_in_standard_errors"] for r in rows)
    worst_mean = max(abs(r["monte_carlo_mean"] - r["exact_gradient"]) / r["mean_standard_error"] for r in rows if r["mean_standard_error"] > 0)
    for cost in gradient_toys.COSTS:
        for param in gradient_toys.PARAMS:
            line = "  ".join(
                f"{e} {np.median([r['exact_variance'] for r in rows if (r['cost'], r['param'], r['estimator']) == (cost, param, e)]):.3g}"
                for e in gradient_toys.TOY_ESTIMATORS
            )
            print(f"{cost:6s} d/d {param:5s} median exact variance over k: {line}")
    print(f"max |MC variance - exact| / SE {worst:.2f}; max |MC mean - exact gradient| / SE {worst_mean:.2f}")
    stem = "repro_mohamed2020" + ("_quick" if args.quick else "")
    out = Path(args.out_dir) if args.out_dir else _common.RESULTS_DIR
    payload = {"samples": num_samples, "loc": 1.0, "scale": 1.0, "k_ranges": gradient_toys.K_RANGES, "rows": rows,
               "max_variance_error_in_standard_errors": worst, "max_mean_error_in_standard_errors": worst_mean,
               "machine": _common.machine(), "commit": _common.commit()}
    _common.write_json(stem, payload, out)
    figure(rows, out / f"{stem}.png")
    if not args.no_table:
        ratios = []
        for cost in gradient_toys.COSTS:
            def median(estimator, cost=cost):
                return np.median([r["exact_variance"] for r in rows if (r["cost"], r["param"], r["estimator"]) == (cost, "loc", estimator)])
            ratios.append(f"{cost} d/dloc median score/reparam {median('score') / median('reparam'):.3g}, "
                          f"score-optimal-baseline/reparam {median('score-optimal-baseline') / median('reparam'):.3g}")
        numbers = f"{num_k} k per cost, {num_samples} draws; max MC-vs-Gauss-Hermite variance error {worst:.2f} SE, mean error {worst_mean:.2f} SE"
        _common.append_results_row("Mohamed et al. 2020 sec. 3 toys, per-sample gradient variance", numbers, "; ".join(ratios), args.results_table)
    return payload


def figure(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), sharex="col")
    titles = {"square": "$(x-k)^2$", "exp": "$\\exp(-kx^2)$", "cos": "$\\cos(kx)$"}
    for column, cost in enumerate(gradient_toys.COSTS):
        for row, param in enumerate(gradient_toys.PARAMS):
            axis = axes[row, column]
            for estimator, color in zip(gradient_toys.TOY_ESTIMATORS, ("C0", "C1", "C2")):
                points = [r for r in rows if (r["cost"], r["param"], r["estimator"]) == (cost, param, estimator)]
                ks = [r["k"] for r in points]
                axis.plot(ks, [r["exact_variance"] for r in points], color=color, label=estimator)
                axis.plot(ks, [r["monte_carlo_variance"] for r in points], "o", color=color, markersize=3)
            axis.set_yscale("log")
            axis.set_title(f"{titles[cost]}, d/d {param}")
            if row == 1:
                axis.set_xlabel("k")
            if column == 0:
                axis.set_ylabel("variance (line exact, dots MC)")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    """The command line (``argv``: a list, for tests)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-k", type=int, default=25, help="values of k per cost")
    parser.add_argument("--samples", type=int, default=200_000, help="Monte Carlo draws per (cost, k, estimator, param)")
    _common.add_common_arguments(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
