"""Reproduction 2: Pyro's own gradient test model, every unbiased estimator.

z_n ~ N(0, 1), x_n | z_n ~ N(z_n, 1), data [-0.5, 2.0]; guide N(loc_n, scale), loc in the data
plate, scale shared, at loc = 0, scale = 1. The exact gradient of -ELBO is loc [0.5, -2.0],
log-scale [2.0]; each estimator's mean must match it within 4 standard errors. Writes JSON, a
variance bar chart and a row in RESULTS.md.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from pyro_vi import gradient_variance  # noqa: E402
from pyro_vi.estimators import problems as variance_models  # noqa: E402
from pyro_vi.plots import variance as plots_variance  # noqa: E402

CELLS = [("reparam", 1), ("score", 1), ("score-naive", 1), ("score-graph", 1), ("score-baseline", 1),
              ("score-nn-baseline", 1), ("rloo", 2), ("stl", 1), ("analytic-kl", 1)]


def main(args):
    _common.setup_threads()
    num_replicates = 200 if args.quick else args.replicates
    rows = []
    for name, num_particles in CELLS:
        problem = variance_models.make_problem("pyro-test", seed=args.seed)
        exact = problem.reference()
        result = gradient_variance(problem.model, problem.guide, *problem.args, estimator=name,
                                   num_particles=num_particles, num_replicates=num_replicates, seed=args.seed, reference=exact)
        z = max(float((result.bias[p].abs() / result.bias_standard_error[p]).max()) for p in result.bias)
        rows.append({"estimator": name, "num_particles": num_particles, "total_variance": result.total_variance,
                     "snr": result.snr, "mean": {p: v.tolist() for p, v in result.mean.items()},
                     "variance": {p: v.tolist() for p, v in result.variance.items()}, "max_bias_in_standard_errors": z})
        print(f"{name:18s} k={num_particles} mean loc {[round(v, 3) for v in result.mean['loc'].tolist()]} "
              f"scale {[round(v, 3) for v in result.mean['scale'].tolist()]} total variance {result.total_variance:.3f} max |bias|/se {z:.2f}")
    out = Path(args.out_dir) if args.out_dir else _common.RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    _common.write_json("repro_pyro_gradient_test" + ("_quick" if args.quick else ""), {"replicates": num_replicates, "rows": rows}, out)
    plots_variance.total_variance_by_estimator(rows, out / ("repro_pyro_gradient_test" + ("_quick" if args.quick else "") + ".png"))
    if not args.no_table:
        numbers = ", ".join(f"{r['estimator']} {r['total_variance']:.2f}" for r in rows)
        reference = rows[0]["total_variance"]
        ratios = ", ".join(f"{r['estimator']}/reparam {r['total_variance'] / reference:.2f}" for r in rows[1:])
        _common.append_results_row(f"Pyro gradient-test model, total variance, R={num_replicates}", numbers, ratios, args.results_table)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=4000)
    _common.add_common_arguments(parser)
    main(parser.parse_args())
