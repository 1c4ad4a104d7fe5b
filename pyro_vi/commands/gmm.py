"""``pyro-vi gmm``: fit a Gaussian mixture by EM or SVI, next to scikit-learn from the same start.

``--method em`` is EM (``pyro_vi.mixture.fit_em``); ``svi-map`` SVI with point masses on the globals
and the assignments summed out; ``svi-bayesian`` SVI with distributions over the globals and sampled
assignments (``pyro_vi.mixture.fit_svi``, ``guide="map"`` / ``"bayesian"``). Writes ``OUT/metrics.json``
(log-likelihoods are averages per point, in nats; keys use the API's words: ``num_components``,
``train_log_likelihood``, ...), ``OUT/assignments.png`` (points coloured by assignment with 2-sigma
component ellipses after chosen iterations) and ``OUT/convergence.png`` (EM log-likelihood and SVI
ELBO per point against iteration, on one axis).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import torch

from pyro_vi import io, mixture, preflight
from pyro_vi.commands import _args
from pyro_vi.device import resolve_device
from pyro_vi.errors import ConfigError, PyroVIError, TrainingDivergedError

__all__ = ["HELP", "METHODS", "DEFAULT_INIT", "add_arguments", "run"]

HELP = "Gaussian mixture by EM or SVI (MAP or Bayesian guide), compared with scikit-learn."
METHODS = ("em", "svi-map", "svi-bayesian")
_RENAMED_METHODS = {"svi-meanfield": "svi-bayesian"}  # old spellings, still accepted


def _method(text: str) -> str:
    """``--method``'s type: the old spelling ``svi-meanfield`` is read as ``svi-bayesian``."""
    return _RENAMED_METHODS.get(text, text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The data, fit and output options of ``pyro-vi gmm``."""
    data = parser.add_argument_group("data")
    data.add_argument("--data", default="synthetic", help="synthetic, digits, or a CSV/NPY file of rows (default synthetic)")
    data.add_argument("--num-data", type=int, default=500, help="synthetic: training points (default 500; test gets a quarter)")
    data.add_argument("--dim", type=int, default=2, help="synthetic: dimensions (default 2)")
    data.add_argument("--separation", type=float, default=3.0, help="synthetic: minimum distance between true locations (default 3)")
    data.add_argument("--pca-dim", type=int, default=2, help="digits: principal components kept (default 2)")
    data.add_argument("--label-column", type=int, default=None, help="file: column holding true labels (used for ARI)")
    data.add_argument("--test-fraction", type=float, default=0.2, help="file: fraction held out (default 0.2)")
    fit = parser.add_argument_group("fit")
    fit.add_argument("--method", type=_method, choices=METHODS, default="em",
                     help="em; svi-map: point masses on the globals; svi-bayesian: distributions over them (default em)")
    fit.add_argument("--num-components", "-k", type=int, default=3, help="K (default 3)")
    fit.add_argument("--covariance", choices=mixture.model.COVARIANCES, default="full", help="default full")
    fit.add_argument("--init", choices=mixture.em.INITS, default=None,
                     help="default random for em (a start EM visibly improves on), kmeans++ for SVI")
    fit.add_argument("--num-restarts", type=int, default=1, help="best of this many initializations (default 1)")
    fit.add_argument("--tol", type=float, default=1e-4, help="EM: stop when the average log-likelihood moves less (default 1e-4)")
    fit.add_argument("--max-iter", type=int, default=100, help="EM: iteration limit (default 100)")
    fit.add_argument("--reg-covar", type=float, default=1e-6, help="added to every variance, as scikit-learn (default 1e-6)")
    fit.add_argument("--num-steps", type=int, default=500, help="SVI: Adam steps (default 500)")
    fit.add_argument("--learning-rate", type=float, default=0.05, help="SVI: Adam learning rate (default 0.05)")
    fit.add_argument("--loss", choices=tuple(mixture.svi.LOSSES), default="tracegraph",
                     help="svi-bayesian: the Pyro ELBO for the sampled assignments, as pyro-vi fit's --loss (default tracegraph)")
    fit.add_argument("--estimator", dest="loss", choices=tuple(mixture.svi.LOSSES), default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # the old name of --loss
    parser.add_argument("--plot-iterations", default="1,2,5,20",
                        help="comma-separated iterations (EM) or steps (SVI) to draw (default 1,2,5,20)")
    _args.add_seed(parser)
    _args.add_device(parser)
    _args.add_output(parser, "runs/gmm", overwrite="replace the outputs of another command in OUT")


def _validate(args: argparse.Namespace) -> list[int]:
    positive = {"--num-data": args.num_data, "--dim": args.dim, "--num-components": args.num_components,
                "--num-restarts": args.num_restarts, "--max-iter": args.max_iter, "--num-steps": args.num_steps,
                "--pca-dim": args.pca_dim}
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    for name, value in {"--tol": args.tol, "--learning-rate": args.learning_rate, "--separation": args.separation}.items():
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")
        if not value < math.inf:
            raise ConfigError(f"{name} must be finite, got {value}")
    if not args.reg_covar >= 0:
        raise ConfigError(f"--reg-covar must be non-negative, got {args.reg_covar}")
    if not args.reg_covar < math.inf:
        raise ConfigError(f"--reg-covar must be finite, got {args.reg_covar}")
    if args.data == "synthetic":  # train, a quarter as many test points, and the (N, K) responsibilities, in float64
        preflight.check_allocation(1.25 * args.num_data * (args.dim + args.num_components * (args.dim + 3)),
                                   f"--num-data {args.num_data} with --dim {args.dim} and -k {args.num_components}",
                                   bytes_per_float=8)
    try:
        iterations = sorted({int(text) for text in args.plot_iterations.split(",") if text.strip()})
    except ValueError:
        raise ConfigError(f"--plot-iterations must be comma-separated integers, got {args.plot_iterations!r}") from None
    if any(i < 0 for i in iterations):
        raise ConfigError(f"--plot-iterations must be non-negative, got {args.plot_iterations!r}")
    return iterations


def _load(args: argparse.Namespace) -> mixture.data.MixtureData:
    if args.data == "synthetic":
        data = mixture.data.synthetic(args.num_components, args.dim, args.num_data, args.separation, args.seed, args.covariance)
        mixture.em.check_scale(data.train, f"synthetic data with --separation {args.separation:g}")
        return data
    if args.data == "digits":
        return mixture.data.digits_pca(args.pca_dim)
    return mixture.data.load_file(args.data, args.label_column, args.test_fraction, args.seed)


# The default start: EM from "random" (every component with the whole data's covariance) climbs for
# about 30 iterations on the default data (3 components 3 apart), so the panels after iterations
# 1, 2, 5 and 20 differ; from k-means++ EM is done in 2. SVI keeps the k-means++ start.
DEFAULT_INIT = {"em": "random", "svi-map": "kmeans++", "svi-bayesian": "kmeans++"}


def run(args: argparse.Namespace) -> int:
    """Check the options, load and check the data once, fit, write OUT; 0 on success."""
    if args.init is None:
        args.init = DEFAULT_INIT[args.method]
    plot_iterations = _validate(args)
    device = resolve_device(args.device)
    data = _load(args)
    train, test = data.train.to(device), data.test.to(device)
    mixture.em.validate_options(train, args.num_components, args.covariance, args.num_restarts)
    with io.run_output(args.out, "gmm", args.overwrite) as out:
        return _fit_and_report(args, data, train, test, device, plot_iterations, out)


def _fit_and_report(args, data, train, test, device, plot_iterations, out) -> int:
    em_options = dict(tol=args.tol, max_iter=args.max_iter, reg_covar=args.reg_covar)
    # Warm up Pyro's handlers and torch's kernels on a few points so "seconds" times the fit itself.
    mixture.em.warm_up(train, args.num_components, args.covariance)
    start = time.perf_counter()
    em_result = mixture.em.fit_em(train, args.num_components, args.covariance, args.init, args.num_restarts, args.seed,
                                  record_iterations=[0, *plot_iterations] if args.method == "em" else (), **em_options)
    em_seconds = time.perf_counter() - start
    prior = mixture.Prior.from_data(train, args.num_components) if args.method == "svi-bayesian" else None
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Encountered NaN")  # divergence is reported in one line
            svi_result = _svi(args, train, em_result, prior, plot_iterations)
    except (ValueError, torch.linalg.LinAlgError) as error:  # Pyro's validation of NaN parameters, or a singular covariance
        if isinstance(error, PyroVIError):
            raise
        raise TrainingDivergedError(
            f"SVI diverged: its parameters became NaN/inf or singular ({type(error).__name__}); "
            f"lower --learning-rate (now {args.learning_rate:g}) or raise --reg-covar"
        ) from None
    svi_seconds = time.perf_counter() - start
    sklearn_fit = mixture.eval.fit_sklearn(train, em_result.initial_params, **em_options)

    if args.method == "em":
        params, iterations, seconds, snapshots = em_result.params, em_result.iterations, em_seconds, em_result.snapshots
        train_probabilities = mixture.model.assignment_probabilities(train, params)
        unit = "EM iteration"
    else:
        params, iterations, seconds, snapshots = svi_result.params, svi_result.steps, svi_seconds, svi_result.snapshots
        train_probabilities = svi_result.assignment_probabilities
        unit = "SVI step"
    metrics = {
        "method": args.method,
        "data": data.name,
        "num_components": args.num_components,
        "dim": train.shape[-1],
        "num_data": train.shape[0],
        "num_test": test.shape[0],
        "covariance": args.covariance,
        "init": args.init,
        "num_restarts": args.num_restarts,
        "seed": args.seed,
        "train_log_likelihood": mixture.eval.average_log_likelihood(train, params),
        "test_log_likelihood": mixture.eval.average_log_likelihood(test, params) if len(test) else None,
        "bic": mixture.eval.bic(train, params),
        "ari": _ari(data.train_labels, train_probabilities),
        "test_ari": _ari(data.test_labels, mixture.model.assignment_probabilities(test, params)) if len(test) else None,
        "iterations": iterations,
        "seconds": seconds,
        "sklearn_train_log_likelihood": sklearn_fit.train_log_likelihood,
        "sklearn_test_log_likelihood": mixture.eval.average_log_likelihood(test, sklearn_fit.params) if len(test) else None,
        "sklearn_bic": mixture.eval.bic(train, sklearn_fit.params),
        "sklearn_ari": _ari(data.train_labels, mixture.model.assignment_probabilities(train, sklearn_fit.params)),
        "sklearn_iterations": sklearn_fit.iterations,
        "sklearn_seconds": sklearn_fit.seconds,
        "em": {
            "train_log_likelihood": em_result.log_likelihoods[-1],
            "iterations": em_result.iterations,
            "converged": em_result.converged,
            "seconds": em_seconds,
            "log_likelihood_history": em_result.log_likelihoods,
            # EM never lowers the likelihood (exactly so for reg_covar=0): the smallest step taken.
            "min_log_likelihood_increment": min((b - a for a, b in zip(em_result.log_likelihoods, em_result.log_likelihoods[1:])), default=None),
            "restart_log_likelihoods": em_result.restart_log_likelihoods,
        },
        "svi": {
            "guide": "map" if args.method == "em" else args.method.removeprefix("svi-"),
            "final_elbo_per_point": svi_result.elbos[-1],
            "steps": svi_result.steps,
            "seconds": svi_seconds,
            "restart_elbos": svi_result.restart_elbos,
        },
    }
    if data.true_params is not None:
        true_params = data.true_params.to(device=device, dtype=train.dtype)
        matched = mixture.eval.match_components(true_params, params)
        metrics["true_train_log_likelihood"] = mixture.eval.average_log_likelihood(train, true_params)
        metrics["matched_loc_errors"] = matched.loc_errors
        metrics["matched_weight_errors"] = matched.weight_errors

    from pyro_vi.plots import gmm as plots

    panels = [(f"{unit} {i}" if i else "initialization", snapshots[i]) for i in sorted(snapshots)]
    panels.append((f"final ({unit} {iterations})", params))
    plots.plot_assignments(train, panels, path=out / "assignments.png")
    curves = {"EM log-likelihood": em_result.log_likelihoods, f"SVI-{metrics['svi']['guide']} ELBO": svi_result.elbos}
    plots.plot_convergence(curves, sklearn_fit.train_log_likelihood, "scikit-learn final", path=out / "convergence.png")
    io.write_json(out / "metrics.json", metrics)
    print(f"{args.method}: train log-lik {metrics['train_log_likelihood']:.4f}/point (scikit-learn {sklearn_fit.train_log_likelihood:.4f}), "
          f"test {metrics['test_log_likelihood'] if metrics['test_log_likelihood'] is None else round(metrics['test_log_likelihood'], 4)}, "
          f"ARI {metrics['ari']}, {iterations} iterations in {seconds:.2f}s; wrote {out}")
    return 0


def _svi(args, train, em_result, prior, plot_iterations):
    if args.method == "em":  # the SVI curve of the convergence figure, from EM's own start
        return mixture.svi.run_svi(train, em_result.initial_params, "map", None, args.num_steps, args.learning_rate)
    return mixture.svi.fit_svi(
        train, args.num_components, args.covariance, args.method.removeprefix("svi-"), args.init, args.num_restarts,
        args.seed, prior, args.num_steps, args.learning_rate, args.loss, args.reg_covar, [0, *plot_iterations])


def _ari(labels, probabilities) -> float | None:
    if labels is None:
        return None
    return mixture.eval.adjusted_rand_index(labels, probabilities.argmax(-1))
