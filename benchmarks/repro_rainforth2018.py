"""Reproduction 4: Rainforth et al. (2018), "Tighter variational bounds are not necessarily better".

Gaussian toy: z ~ N(prior_loc, I_D), x | z ~ N(z, I_D); encoder q(z | x) = N(A x + b, 2/3 I_D) with
A (``encoder_weight``) and b (``encoder_bias``) Pyro params, started at the optimum (A = I/2,
b = prior_loc / 2) plus N(0, ``--perturbation``^2) noise. For K importance samples the
signal-to-noise ratio |E g| / sd(g) of the gradient of the K-sample bound, averaged over the
elements of each param, is measured for ``iwae`` (the IWAE gradient) and ``dreg`` (Tucker et al.'s
doubly reparameterized gradient) with ``pyro_vi.gradient_variance``. Rainforth et al.: IWAE's
inference-network SNR falls like 1/sqrt(K) while the generative-network SNR (prior_loc) grows like
sqrt(K); DReG's inference-network SNR does not fall. Writes JSON, a log-log figure and a row in
RESULTS.md.

The last claim depends on the setting: with the defaults (D = 5, 16 datapoints, perturbation 0.1)
DReG's SNR rises with K, but with ``--dim 10 --num-data 4`` it falls too (2.24 at K = 1 to 0.97 at
K = 300, R = 1000; IWAE's 0.56 to 0.15), see RESULTS.md.

The SNR is estimated from R replicates: for normal gradients its standard error is about
sqrt((1 + SNR^2 / 2) / R) per element (delta method), reported as ``snr_standard_error`` (the mean
of the per-element errors: an upper bound for the error of the element average), and even a zero
mean shows an SNR of about sqrt(2 / pi) / sqrt(R) (the noise floor, also reported).
"""

import argparse
import math
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from pyro_vi import gradient_variance  # noqa: E402

ENCODER_SCALE = math.sqrt(2 / 3)  # fixed, as in the paper (the exact posterior scale is sqrt(1/2))
GUIDE_PARAMS = ("encoder_weight", "encoder_bias")
MODEL_PARAMS = ("prior_loc",)


def model(x):
    """z_n ~ N(prior_loc, I);  x_n | z_n ~ N(z_n, I)."""
    prior_loc = pyro.param("prior_loc", x.new_zeros(x.shape[-1]))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(prior_loc, 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def guide(x):
    """q(z_n | x_n) = N(A x_n + b, 2/3 I)."""
    weight = pyro.param("encoder_weight", torch.eye(x.shape[-1]) / 2)
    bias = pyro.param("encoder_bias", x.new_zeros(x.shape[-1]))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x @ weight.T + bias, ENCODER_SCALE).to_event(1))


def setup(dim: int, num_data: int, perturbation: float, seed: int) -> torch.Tensor:
    """Draw the data and register the params at the optimum plus noise; returns x (num_data, dim)."""
    generator = torch.Generator().manual_seed(seed)
    true_loc = torch.randn(dim, generator=generator)
    x = true_loc + math.sqrt(2) * torch.randn(num_data, dim, generator=generator)  # marginal N(loc, 2 I)
    pyro.clear_param_store()

    def noise(*shape):
        return perturbation * torch.randn(*shape, generator=generator)

    pyro.param("prior_loc", true_loc + noise(dim))
    pyro.param("encoder_weight", torch.eye(dim) / 2 + noise(dim, dim))
    pyro.param("encoder_bias", true_loc / 2 + noise(dim))
    return x


def _snr_standard_error(result, names) -> float:
    """Mean over elements of sqrt((1 + snr^2 / 2) / R): the delta-method error of each element's SNR."""
    errors = []
    for name in names:
        snr = result.mean[name].double().abs() / result.variance[name].double().sqrt()
        errors.append(((1 + snr**2 / 2) / result.num_replicates).sqrt().reshape(-1))
    return float(torch.cat(errors).mean())


def _snr(result, names) -> float:
    values = [result.snr_per_param[name] * result.mean[name].numel() for name in names]
    return sum(values) / sum(result.mean[name].numel() for name in names)


def main(args):
    _common.setup_threads(torch.get_num_threads())  # torch honours OMP_NUM_THREADS
    ks = [1, 4, 32] if args.quick else args.particles
    num_replicates = 200 if args.quick else args.replicates
    dim = 5 if args.quick else args.dim
    x = setup(dim, args.num_data, args.perturbation, args.seed)
    rows = []
    for estimator in ("iwae", "dreg"):
        for k in ks:
            setup(dim, args.num_data, args.perturbation, args.seed)  # same params for every run
            # about 4M floats per batched pass: replicates x particles x data x dim
            chunk_size = max(1, min(num_replicates, int(4e6 / (k * args.num_data * dim))))
            result = gradient_variance(model, guide, x, estimator=estimator, num_particles=k,
                                       num_replicates=num_replicates, seed=args.seed, chunk_size=chunk_size)
            row = {"estimator": estimator, "num_particles": k,
                   "guide_snr": _snr(result, GUIDE_PARAMS), "guide_snr_standard_error": _snr_standard_error(result, GUIDE_PARAMS),
                   "model_snr": _snr(result, MODEL_PARAMS), "model_snr_standard_error": _snr_standard_error(result, MODEL_PARAMS),
                   "snr_per_param": result.snr_per_param, "total_variance": result.total_variance, "seconds": result.seconds}
            rows.append(row)
            print(f"{estimator:5s} K={k:4d} guide SNR {row['guide_snr']:.3f} ± {row['guide_snr_standard_error']:.3f}  "
                  f"model SNR {row['model_snr']:.3f} ± {row['model_snr_standard_error']:.3f}  ({result.seconds:.1f} s)")
    noise_floor = math.sqrt(2 / math.pi) / math.sqrt(num_replicates)
    stem = "repro_rainforth2018" + ("_quick" if args.quick else "")
    out = Path(args.out_dir) if args.out_dir else _common.RESULTS_DIR
    payload = {"dim": dim, "num_data": args.num_data, "perturbation": args.perturbation, "replicates": num_replicates,
               "encoder_scale": ENCODER_SCALE, "snr_noise_floor": noise_floor, "rows": rows,
               "machine": _common.machine(), "commit": _common.commit()}
    _common.write_json(stem, payload, out)
    figure(rows, noise_floor, out / f"{stem}.png")
    if not args.no_table:
        def ratio(estimator, key):
            points = [r for r in rows if r["estimator"] == estimator]
            return points[-1][key] / points[0][key]
        numbers = ", ".join(f"{r['estimator']} K={r['num_particles']} guide {r['guide_snr']:.3g}" for r in rows)
        ratios = (f"guide SNR K={ks[-1]}/K={ks[0]}: iwae {ratio('iwae', 'guide_snr'):.3f}, dreg {ratio('dreg', 'guide_snr'):.3f}; "
                  f"model SNR: iwae {ratio('iwae', 'model_snr'):.3f}, dreg {ratio('dreg', 'model_snr'):.3f}")
        _common.append_results_row(f"Rainforth et al. 2018 Gaussian toy, gradient SNR vs K, D={dim}, R={num_replicates}",
                                   numbers, ratios, args.results_table)
    return payload


def figure(rows, noise_floor, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, key, title in zip(axes, ("guide_snr", "model_snr"), ("inference network (A, b)", "generative model (prior_loc)")):
        for estimator in ("iwae", "dreg"):
            points = [r for r in rows if r["estimator"] == estimator]
            axis.errorbar([r["num_particles"] for r in points], [r[key] for r in points],
                          yerr=[r[key + "_standard_error"] for r in points], marker="o", capsize=3, label=estimator)
        axis.axhline(noise_floor, color="grey", linestyle=":", label="noise floor")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("K (importance samples)")
        axis.set_title(title)
    axes[0].set_ylabel("gradient SNR |mean| / sd")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    """The command line (``argv``: a list, for tests)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, nargs="+", default=[1, 3, 10, 30, 100, 300])
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=5)
    parser.add_argument("--num-data", type=int, default=16, help="datapoints in the bound (one per-datapoint bound each)")
    parser.add_argument("--perturbation", type=float, default=0.1, help="sd of the noise added to the optimal params")
    _common.add_common_arguments(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
