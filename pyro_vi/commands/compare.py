"""``pyro-vi compare FILE.py:MODEL GUIDE --data DATA --estimators reparam,score-baseline,rloo``.

Benchmark gradient estimators on the user's own model: one SVI run per estimator, each from the same
start (the file imported afresh, the param store cleared, the same seed, the first run's initial
params copied in) with the same optimizer, steps and particles. Along each run, at a few steps
(``--variance-points``, step 0 included), ``pyro_vi.gradient_variance`` measures the variance of the
gradient the estimator feeds the optimizer (its time is not counted as training time). At the end
the ELBO of every run is estimated with one common estimator (``Trace_ELBO``, ``--elbo-samples``
evaluations). An estimator that cannot run on the model (its ``check`` refuses) is skipped with one
line. Writes OUT/compare.json (one row per estimator) and OUT/compare.png (ELBO against steps and
against seconds, gradient variance against steps), and prints the table. With ``--runs R``, R
independent runs per estimator (``pyro_vi.fit_many``, batched where it can) and the mean ELBO over
runs with a band of +- 2 standard errors (:mod:`pyro_vi.commands._compare_runs`).

Preflight, once, before OUT is touched: the options, the data file (read once, its tensors shared by
every run), the model and guide (imported and called once; that import is the first run's, later
runs import the file afresh) and every estimator's ``check``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings

__all__ = ["HELP", "add_arguments", "default_replicates", "variance_steps", "run"]

HELP = "train your own model once per gradient estimator from the same start; ELBO, time and gradient variance side by side"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``fit``'s model, data and training options, and the estimators and variance measurements."""
    from pyro_vi.commands import fit

    fit.add_model_arguments(parser, "runs/compare")
    parser.add_argument("--estimators", default="reparam,score-baseline,rloo",
                        help="comma-separated pyro_vi estimators (default reparam,score-baseline,rloo)")
    parser.add_argument("--particles", type=int, default=2,
                        help="particles per step for every estimator (default 2: rloo needs two)")
    parser.add_argument("--replicates", type=int, default=None,
                        help="gradient draws per variance measurement (default: sized so that the measurements cost at most "
                             "about a quarter of the training: min(200, max(20, num_steps / (4 x variance points))) draws, "
                             "each at most one step's gradient; the run prints the share they took)")
    parser.add_argument("--runs", type=int, default=1,
                        help="independent runs per estimator, batched with pyro_vi.fit_many (default 1); with R > 1 the "
                             "figure shows the mean ELBO +- 2 standard errors over runs and compare.json every run's curve")
    parser.add_argument("--within", type=float, default=1.0,
                        help="with --runs: report the steps each run needs to come within this many nats of the best "
                             "estimator's mean final ELBO (default 1.0)")
    parser.add_argument("--variance-points", type=int, default=5,
                        help="steps at which the variance is measured, evenly spaced from 0 to --num-steps (default 5)")


def _validate(args: argparse.Namespace) -> list[str]:
    from pyro_vi.commands import _args, fit
    from pyro_vi.errors import ConfigError

    fit.validate_common(args)
    names = _args.estimator_names(args.estimators)
    if args.runs < 1:
        raise ConfigError(f"--runs must be at least 1, got {args.runs}")
    if not args.within > 0 or not math.isfinite(args.within):
        raise ConfigError(f"--within must be a positive number of nats, got {args.within}")
    if args.variance_points < 1:
        raise ConfigError(f"--variance-points must be at least 1, got {args.variance_points}")
    if args.replicates is None:
        args.replicates = default_replicates(args.num_steps, args.variance_points)
    if args.replicates < 2:
        raise ConfigError(f"--replicates must be at least 2 (a variance needs two draws), got {args.replicates}")
    return names


def default_replicates(num_steps: int, num_points: int) -> int:
    """Draws per variance measurement when ``--replicates`` is not given: ``num_points`` measurements
    of R draws cost at most R gradient evaluations each (the loop; fewer when vectorized), so
    R = num_steps / (4 num_points) keeps them under about a quarter of the training, within [20, 200]."""
    return min(200, max(20, num_steps // (4 * num_points)))


def variance_steps(num_steps: int, num_points: int) -> list[int]:
    """``num_points`` steps evenly spaced from 0 to ``num_steps`` (0 alone for one point; every
    step when there are more points than steps)."""
    if num_points == 1:
        return [0]
    if num_points > num_steps:
        return list(range(num_steps + 1))
    return sorted({round(i * num_steps / (num_points - 1)) for i in range(num_points)})


def run(args: argparse.Namespace) -> int:
    """Preflight (options, data, model and guide, estimators), then one run per estimator; 0 on success."""
    from pyro_vi import io
    from pyro_vi.commands import _compare_runs, user_model
    from pyro_vi.device import resolve_device
    from pyro_vi.errors import ConfigError

    names = _validate(args)
    io.check_output_path(args.out)
    device = resolve_device(args.device)
    data = user_model.load_data(args.data, device)
    pair = user_model.build(args.model, args.guide, data, seed=args.seed)  # the file and data work; the first run's pair
    initial = _unconstrained_params()
    _check_sizes(args, pair, initial, device)
    steps = variance_steps(args.num_steps, args.variance_points)

    runnable, skipped = [], []
    for name in names:  # refusals are known before OUT is touched
        refusal = _refusal(name, args.particles, pair)
        if refusal is None:
            runnable.append(name)
        else:
            print(f"compare: skipping {name}: {refusal}", file=sys.stderr)
            skipped.append({"estimator": name, "reason": refusal})
    if not runnable:
        raise ConfigError(f"no estimator can run on {args.model} with {args.guide}: "
                          + "; ".join(f"{s['estimator']}: {s['reason']}" for s in skipped))

    with io.run_output(args.out, "compare", args.overwrite) as out:  # locked; removed again if this run made it and fails
        if args.runs > 1:
            rows = []
            for i, name in enumerate(runnable):
                if i == 0:
                    _reset_store(initial)
                rows.append(_compare_runs.run_one(args, name, data, pair if i == 0 else None,
                                                  lambda: user_model.build(args.model, args.guide, data, seed=args.seed), steps))
            _compare_runs.add_reach(rows, args.within)
        else:
            rows = [_run_one(args, name, data, initial, steps, pair if i == 0 else None) for i, name in enumerate(runnable)]
        report = _report(args, data, device, steps, initial, pair, rows, skipped)
        figure = _compare_runs.figure(rows, args) if args.runs > 1 else _figure(rows, args)
        io.save_figure(figure, out / "compare.png", dpi=100)
        io.write_json(out / "compare.json", report)
    import matplotlib.pyplot as plt

    plt.close(figure)
    print(_compare_runs.table(rows, args.runs) if args.runs > 1 else _table(rows, steps))
    print(_variance_share(rows, args.replicates))
    for line in _interpret(rows):
        print(line)
    print(f"wrote {out}/compare.json and compare.png")
    return 0


def _check_sizes(args, pair, initial: dict, device) -> None:
    """The counts bounded against memory before any work: fit's (ELBO draws, particles) and the
    variance measurements' (every replicate holds a gradient of every param per particle)."""
    import math

    from pyro_vi import preflight
    from pyro_vi.commands import fit, user_model

    num_latent = sum(math.prod(shape) for shape in user_model.latent_sites(pair.model_trace).values())
    num_params = sum(value.numel() for value in initial.values())
    counts = fit.model_counts(args, num_latent)
    counts[f"--replicates {args.replicates} with --particles {args.particles}"] = (
        float(args.replicates) * (1.0 + float(args.particles)), max(1, num_params + num_latent))
    preflight.check_counts(counts, device)


def _refusal(name: str, num_particles: int, pair) -> str | None:
    """Why estimator ``name`` cannot run on the pair (its constructor or ``check`` refuses), or None."""
    from pyro_vi import estimators
    from pyro_vi.errors import ConfigError

    try:
        estimators.get_estimator(name, num_particles=num_particles).check(pair.model, pair.guide, *pair.args)
    except ConfigError as refusal:
        return " ".join(str(refusal).split())
    return None


def _report(args, data, device, steps, initial, pair, rows, skipped) -> dict:
    from pyro_vi.commands import user_model

    return {
        "model": args.model, "guide": args.guide, "data": args.data, "data_shapes": data.describe(),
        "num_steps": args.num_steps, "particles": args.particles, "optimizer": args.optimizer,
        "learning_rate": args.learning_rate, "seed": args.seed, "device": str(device), "replicates": args.replicates,
        "elbo_samples": args.elbo_samples, "elbo_estimator": "trace", "variance_steps": steps,
        "initial_params": sorted(initial), "latent_sites": sorted(user_model.latent_sites(pair.model_trace)),
        "runs": args.runs, "within": args.within if args.runs > 1 else None, "estimators": rows, "skipped": skipped,
    }


def _unconstrained_params() -> dict:
    import pyro

    store = pyro.get_param_store()
    return {name: store.get_param(name).unconstrained().detach().clone() for name in store.keys()}


def _reset_store(initial: dict) -> None:
    """The param store at the shared start: params an estimator's check made removed, ``initial`` copied in."""
    import pyro
    import torch

    store = pyro.get_param_store()
    for param in [param for param in store.keys() if param not in initial]:  # made by an estimator's check
        del store[param]
    with torch.no_grad():
        for param, value in initial.items():
            if param in store and store.get_param(param).unconstrained().shape == value.shape:
                store.get_param(param).unconstrained().copy_(value)


def _run_one(args, name: str, data, initial: dict, steps: list[int], pair=None) -> dict:
    """Train with estimator ``name`` from ``initial``; the row for compare.json.

    ``pair`` is the preflight's (its file imported once, its params at ``initial``): the first run
    trains it instead of importing the file again; later runs build their own, afresh.
    """
    from pyro.infer import Trace_ELBO

    from pyro_vi import engine, estimators
    from pyro_vi.commands import user_model
    from pyro_vi.estimators import variance
    from pyro_vi.commands import fit
    from pyro_vi.errors import PyroVIError

    if pair is None:
        pair = user_model.build(args.model, args.guide, data, seed=args.seed)  # afresh: modules at their initial values
    _reset_store(initial)
    estimator = estimators.get_estimator(name, num_particles=args.particles)  # it applies: _refusal said so

    measured, measure_seconds = [], [0.0]  # seconds spent measuring, taken off the training clock

    def measure(step: int) -> None:
        start = time.perf_counter()
        with warnings.catch_warnings():  # torch's "no batching rule" performance notes are not the user's business
            warnings.filterwarnings("ignore", message="There is a performance drop")
            result = variance.gradient_variance(pair.model, pair.guide, *pair.args, estimator=estimator,
                                                num_replicates=args.replicates, seed=(args.seed + step) % 2**32)
        measured.append({"step": step, "total_variance": result.total_variance,
                         "snr": result.snr if math.isfinite(result.snr) else None,
                         "seconds": result.seconds, "vectorized": result.vectorized})
        measure_seconds[0] += time.perf_counter() - start

    times = []
    due = set(steps)
    try:
        if 0 in due:
            measure(0)
        initial_measure_seconds = [measure_seconds[0]]
        measure_seconds[0] = 0.0  # only measurements made during training are taken off its clock
        start = time.perf_counter()

        def callback(step: int, _loss) -> None:
            times.append(time.perf_counter() - start - measure_seconds[0])
            if step in due:
                measure(step)

        result = engine.fit(pair.model, pair.guide, *pair.args, num_steps=args.num_steps, loss=estimator,
                            optim=fit.make_optimizer(args.optimizer, args.learning_rate), seed=args.seed,
                            callback=callback, progress=not args.no_progress)
        elbo, elbo_error = user_model.estimate_elbo(Trace_ELBO(), pair, args.elbo_samples)
    except (PyroVIError, KeyboardInterrupt):
        raise
    except user_model.USER_FAILURES as error:  # noqa: BLE001 - the user's model raised (or exited) during training
        raise user_model.ModelError(f"training with {name} failed: {user_model.describe_failure(error, pair.files)}") from None
    seconds = times[-1] if times else 0.0
    return {
        "estimator": name, "num_particles": args.particles,
        "final_elbo": elbo, "final_elbo_standard_error": elbo_error,
        "seconds": seconds, "steps_per_second": len(times) / seconds if seconds > 0 else None,
        "variance_seconds": sum(m["seconds"] for m in measured),
        "measure_seconds": measure_seconds[0] + initial_measure_seconds[0],  # wall clock of every measurement
        "variance": measured,
        "mean_total_variance": sum(m["total_variance"] for m in measured) / len(measured) if measured else None,
        "losses": result.losses, "times": times,
    }


def _variance_share(rows: list[dict], replicates: int) -> str:
    """One line: the time the variance measurements took, against the training time."""
    measuring = sum(row["measure_seconds"] for row in rows)
    training = sum(row["seconds"] for row in rows)
    share = f", {100 * measuring / training:.0f}% of the training time" if training > 0 else ""
    return f"variance measurements ({replicates} draws each): {measuring:.1f} s{share}"


def _interpret(rows: list[dict]) -> list[str]:
    """``pyro-vi variance``'s reading of a backwards-looking ranking, at the last measured step."""
    from pyro_vi.commands import variance

    last = [{"estimator": row["estimator"], "num_particles": row["num_particles"],
             "total_variance": row["variance"][-1]["total_variance"]} for row in rows
            if row["variance"] and row["variance"][-1]["total_variance"] is not None]
    return [line.replace(" at k=", f" at step {rows[0]['variance'][-1]['step']}, k=", 1) for line in variance.interpret(last)]


def _table(rows: list[dict], steps: list[int]) -> str:
    lines = [f"{'estimator':<18}{'final ELBO':>20}{'seconds':>10}{'steps/s':>10}   gradient variance at steps "
             + ", ".join(map(str, steps))]
    for row in rows:
        elbo = f"{row['final_elbo']:.4g} +- {row['final_elbo_standard_error']:.2g}"
        rate = f"{row['steps_per_second']:.0f}" if row["steps_per_second"] else "-"
        variances = ", ".join(f"{m['total_variance']:.3g}" for m in row["variance"])
        lines.append(f"{row['estimator']:<18}{elbo:>20}{row['seconds']:>10.2f}{rate:>10}   {variances}")
    return "\n".join(lines)


def _figure(rows: list[dict], args):
    """ELBO (-loss, running mean) against steps and against seconds; total gradient variance against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from pyro_vi.plots.variance import estimator_color

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for row in rows:
        elbo = -np.asarray(row["losses"], dtype=float)
        window = max(1, len(elbo) // 50)
        smooth = np.convolve(elbo, np.ones(window) / window, mode="valid")
        steps = np.arange(window, len(elbo) + 1)
        seconds = np.asarray(row["times"], dtype=float)[window - 1:]
        color = estimator_color(row["estimator"])
        axes[0].plot(steps, smooth, label=row["estimator"], color=color)
        axes[1].plot(seconds, smooth, label=row["estimator"], color=color)
        points = row["variance"]
        axes[2].plot([m["step"] for m in points], [m["total_variance"] for m in points], marker="o", label=row["estimator"],
                     color=color)
    axes[0].set(xlabel="step", ylabel="training objective (-loss, running mean)", title="ELBO against steps")
    axes[1].set(xlabel="seconds (training only)", ylabel="training objective (-loss, running mean)", title="ELBO against time")
    axes[2].set(xlabel="step", ylabel="total gradient variance", yscale="log",
                title=f"gradient variance ({args.replicates} draws, k={args.particles})\n"
                      "measured during training; step 0: initial params")
    axes[2].title.set_fontsize(10)
    for axis in axes:
        axis.legend()
    figure.tight_layout()
    return figure
