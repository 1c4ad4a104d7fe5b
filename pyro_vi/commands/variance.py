"""``pyro-vi variance``: gradient variance, SNR and bias of estimators on a built-in model
(``--model NAME``) or on the user's own (``pyro-vi variance FILE.py:MODEL GUIDE --data DATA``), at the
initial params or at a checkpoint (``--checkpoint``: of ``pyro-vi vae`` for the VAE, of
``pyro-vi fit`` for a user's model)."""

from __future__ import annotations

import argparse
import csv
import io as _io
import math
import warnings

__all__ = ["HELP", "add_arguments", "measured_at", "interpret", "run"]

HELP = "measure gradient variance / SNR / bias of estimators on a built-in model or your own (FILE.py:MODEL GUIDE)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model (built-in ``--model`` or FILE.py:MODEL GUIDE with ``--data``), estimators, particles and output."""
    from pyro_vi.commands import _args
    from pyro_vi.commands.user_model import AUTO_GUIDES
    from pyro_vi.estimators.problems import MODELS
    from pyro_vi.vae.data import DATASETS

    parser.add_argument("user_model", nargs="?", metavar="FILE.py:MODEL", help="your model function (instead of --model)")
    parser.add_argument("user_guide", nargs="?", metavar="GUIDE",
                        help=f"your guide, FILE.py:NAME or one of {', '.join(AUTO_GUIDES)}")
    parser.add_argument("--data", default=None, help="your model: .npz (keyword arguments) or .npy/.csv/.pt (one tensor)")
    _args.add_device(parser, what="your model: where the data go")
    parser.add_argument("--model", default=None, choices=MODELS, help="a built-in model (default gaussian)")
    parser.add_argument("--estimators", default="reparam,score", help="comma-separated names, e.g. reparam,score,rloo,stl")
    parser.add_argument("--replicates", type=int, default=1000, help="independent gradient estimates per estimator")
    parser.add_argument("--particles", type=_args.parse_int_list, default=[1], help="comma-separated, e.g. 1,4,16")
    parser.add_argument("--dim", type=int, default=None, help="D of the gaussian toy (default 10)")
    parser.add_argument("--at-posterior", action="store_true", help="put the guide at the exact posterior (gaussian, normal-normal)")
    parser.add_argument("--checkpoint", default=None,
                        help="vae: a checkpoint of pyro-vi vae (default: a small VAE at init); your model: OUT/checkpoint.pt "
                             "of pyro-vi fit (default: the initial params)")
    parser.add_argument("--dataset", default=None, choices=DATASETS, help="vae: images to measure on (default: the checkpoint's, else digits)")
    parser.add_argument("--data-dir", default=None, help="vae: folder with the MNIST-style IDX files")
    _args.add_seed(parser)
    _args.add_output(parser, "runs/variance", overwrite="replace the outputs of another command (or your files) in OUT")


def _validate(args) -> list[str]:
    from pyro_vi.commands import _args
    from pyro_vi.errors import ConfigError

    names = _args.estimator_names(args.estimators)
    if args.replicates < 2:
        raise ConfigError(f"--replicates must be at least 2 (a variance needs two draws), got {args.replicates}")
    if not args.particles or min(args.particles) < 1:
        raise ConfigError(f"--particles must be positive integers, got {args.particles}")
    for name in names:  # an estimator that can run at none of the counts is refused; at some, the rest are skipped
        reasons = _particle_refusals(name, args.particles)
        if len(reasons) == len(args.particles):
            raise ConfigError(f"{name} cannot run at --particles {','.join(map(str, args.particles))}: {reasons[args.particles[0]]}")
    return names


def _check_sizes(args) -> None:
    """``--replicates`` and ``--particles`` bounded against memory before any work: each replicate
    holds a gradient of every param, and its particles' draws, at once (the vectorized pass)."""
    import pyro

    from pyro_vi import preflight

    num_params = sum(value.numel() for value in pyro.get_param_store().values())
    particles = max(args.particles)
    preflight.check_counts({f"--replicates {args.replicates} with --particles {particles}":
                            (float(args.replicates) * (1.0 + float(particles)), max(1, num_params))})


def _particle_refusals(name: str, particles: list[int]) -> dict[int, str]:
    """``{k: why}`` for the particle counts at which estimator ``name`` cannot be built (rloo at 1)."""
    from pyro_vi.errors import ConfigError
    from pyro_vi.estimators import get_estimator

    reasons = {}
    for k in particles:
        try:
            get_estimator(name, num_particles=k)
        except ConfigError as error:
            reasons[k] = str(error)
    return reasons


def _check_form(args) -> None:
    """Either a built-in ``--model`` with its options, or FILE.py:MODEL GUIDE with ``--data``."""
    from pyro_vi.errors import ConfigError

    if args.user_model is None:
        if args.data is not None:
            raise ConfigError("--data is for your own model: pyro-vi variance FILE.py:MODEL GUIDE --data DATA")
        return
    if args.user_guide is None:
        raise ConfigError(f"give the guide after the model: pyro-vi variance {args.user_model} GUIDE (FILE.py:NAME or auto-normal, ...)")
    built_in = {"--model": args.model, "--dim": args.dim, "--at-posterior": args.at_posterior or None,
                "--dataset": args.dataset, "--data-dir": args.data_dir}
    given = [option for option, value in built_in.items() if value is not None]
    if given:
        verb = 'applies' if len(given) == 1 else 'apply'
        raise ConfigError(f"{', '.join(given)} {verb} to the built-in models, not to {args.user_model}; drop them")


def run(args: argparse.Namespace) -> int:
    """Preflight (options, the model and its data or checkpoint, every estimator's check), then measure
    and write OUT/variance.json, variance.csv and the figures; 0 on success."""
    import torch

    from pyro_vi import estimators
    from pyro_vi.estimators import problems as variance_models

    torch.set_num_threads(min(2, torch.get_num_threads()))
    _check_form(args)
    names = _validate(args)
    if args.user_model is not None:
        from pyro_vi.commands import user_model
        from pyro_vi.device import resolve_device

        data = user_model.load_data(args.data, resolve_device(args.device))
        pair = user_model.build(args.user_model, args.user_guide, data, seed=args.seed)
        if args.checkpoint is not None:
            user_model.restore_params(args.checkpoint, pair.guide_trace)
        label, model, guide, model_args, reference = args.user_model, pair.model, pair.guide, pair.args, None
    else:
        args.model = args.model or "gaussian"
        problem = variance_models.make_problem(
            args.model, dim=10 if args.dim is None else args.dim, at_posterior=args.at_posterior, seed=args.seed,
            checkpoint=args.checkpoint, dataset=args.dataset, data_dir=args.data_dir,
        )
        label, model, guide, model_args = args.model, problem.model, problem.guide, problem.args
        reference = problem.reference() if problem.reference is not None else None
    _check_sizes(args)
    for name in names:  # every estimator must apply before anything is written
        estimators.get_estimator(name, num_particles=max(args.particles)).check(model, guide, *model_args)
    from pyro_vi import io

    with io.run_output(args.out, "variance", args.overwrite) as out:  # locked, claimed: another's files are refused
        return _measure(args, names, label, model, guide, model_args, reference, out)


def _measure(args, names, label, model, guide, model_args, reference, out) -> int:
    from pyro_vi import io
    from pyro_vi.plots import variance as plots_variance
    from pyro_vi.estimators import variance

    rows, summary, skipped = [], [], []
    for name in names:
        refusals = _particle_refusals(name, args.particles)
        for num_particles in args.particles:
            if num_particles in refusals:
                skipped.append({"estimator": name, "num_particles": num_particles, "reason": refusals[num_particles]})
                print(f"{label} {name} k={num_particles}: skipped ({refusals[num_particles]})")
                continue
            with warnings.catch_warnings():  # torch's "no batching rule" performance notes
                warnings.filterwarnings("ignore", message="There is a performance drop")
                result = variance.gradient_variance(
                    model, guide, *model_args, estimator=name, num_replicates=args.replicates,
                    num_particles=num_particles, seed=args.seed, reference=reference,
                )
            summary.append(
                {
                    "model": label, "estimator": name, "num_particles": num_particles,
                    "total_variance": result.total_variance,
                    "total_variance_standard_error": _finite(result.total_variance_standard_error),
                    "snr": _finite(result.snr),
                    "seconds": result.seconds, "vectorized": result.vectorized,
                }
            )
            for param in result.mean:
                bias = None if result.bias is None else result.bias[param]
                rows.append(
                    {
                        "model": label, "estimator": name, "num_particles": num_particles, "param": param,
                        "mean": result.mean[param].reshape(-1).tolist(),
                        "variance": result.variance[param].reshape(-1).tolist(),
                        "snr": _finite(result.snr_per_param[param]),
                        "bias": None if bias is None else bias.reshape(-1).tolist(),
                        "bias_standard_error": None if bias is None else result.bias_standard_error[param].reshape(-1).tolist(),
                        "seconds": result.seconds,
                    }
                )
            print(f"{label} {name} k={num_particles}: total variance {result.total_variance:.4g}, SNR {result.snr:.3g} ({result.seconds:.2f} s)")
    where = measured_at(args)
    io.write_json(
        out / "variance.json",
        {"model": label, "guide": args.user_guide, "data": args.data, "checkpoint": args.checkpoint, "measured_at": where,
         "replicates": args.replicates, "seed": args.seed, "summary": summary, "skipped": skipped, "params": rows},
    )
    io.atomic_write(out / "variance.csv", lambda f: f.write(_csv(rows)), mode="w")
    plots_variance.total_variance_by_estimator(summary, out / "total_variance.png", where=where)
    plots_variance.variance_vs_particles(summary, out / "variance_vs_particles.png", where=where)
    plots_variance.variance_vs_particles(summary, out / "snr.png", key="snr", ylabel="SNR (mean |mean| / sd)", where=where)
    for line in interpret(summary):
        print(line)
    print(f"wrote {out}/variance.json, variance.csv and figures (measured at {where})")
    return 0


def measured_at(args) -> str:
    """Where the gradients were measured, for titles and the JSON: "initial params", "the exact
    posterior" (``--at-posterior``) or "checkpoint PATH at step k"."""
    if args.checkpoint is not None:
        from pyro_vi.engine import checkpoint

        step = checkpoint.load(args.checkpoint, broadcast=False).get("run", {}).get("step")
        return f"checkpoint {args.checkpoint}" + ("" if step is None else f" at step {step}")
    if getattr(args, "at_posterior", False):
        return "the exact posterior"
    return "initial params"


# Score-function estimators whose baseline (a running average, a network, the other particles)
# removes the learning signal's mean: their variance vanishes where that signal is constant in z.
_BASELINED = ("score-baseline", "score-nn-baseline", "rloo")


def interpret(summary: list[dict]) -> list[str]:
    """At most one line reading a ranking that looks like a bug but is not: a baselined score
    estimator with less variance than a pathwise one at the same particle count (the largest such
    ratio). Near the optimum the learning signal log p(x, z) - log q(z) is nearly constant in z
    (exactly log p(x) at q = posterior), so a baselined score estimator's variance goes to zero
    while reparam's does not (stl's does). Empty when nothing reads backwards."""
    from pyro_vi.estimators import get_estimator

    def pathwise(row: dict) -> bool:  # every summary row's estimator was built at its particle count
        return bool(get_estimator(row["estimator"], num_particles=row["num_particles"]).pathwise)

    cases = []
    for low in summary:
        for high in summary:
            if (low["estimator"] in _BASELINED and high["estimator"] != "stl" and pathwise(high)
                    and low["num_particles"] == high["num_particles"] and 0 <= low["total_variance"] < high["total_variance"]):
                ratio = high["total_variance"] / low["total_variance"] if low["total_variance"] > 0 else float("inf")
                cases.append((ratio, low, high))
    if not cases:
        return []
    ratio, low, high = max(cases, key=lambda case: case[0])
    times = "far" if ratio == float("inf") else f"{ratio:.3g}x"
    return [
        f"note: {high['estimator']} has {times} the variance of {low['estimator']} at k={low['num_particles']}: not a bug; "
        f"at q ~ posterior a baselined score estimator's variance goes to zero (log p(x, z) - log q(z) is nearly "
        f"constant in z, and the baseline removes that constant), {high['estimator']}'s does not"
    ]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _csv(rows: list[dict]) -> str:
    """One row per (estimator, particles, param); tensors summarized: mean and bias by their
    elementwise mean and max |.|, variance by its sum."""
    buffer = _io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["model", "estimator", "num_particles", "param", "mean", "variance", "snr", "bias", "seconds"])
    for row in rows:
        bias = "" if row["bias"] is None else max(abs(b) for b in row["bias"])
        writer.writerow(
            [
                row["model"], row["estimator"], row["num_particles"], row["param"],
                sum(row["mean"]) / len(row["mean"]), sum(row["variance"]), "" if row["snr"] is None else row["snr"],
                bias, row["seconds"],
            ]
        )
    return buffer.getvalue()
