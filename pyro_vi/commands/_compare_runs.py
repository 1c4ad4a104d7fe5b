"""``pyro-vi compare --runs R``: per estimator, R independent runs with :func:`pyro_vi.fit_many`.

Run ``r`` of every estimator starts from the same params (``fit_many`` seeds run r's start from
``(--seed, r)``) and draws its own noise; the R runs of one estimator are one batched step where the
estimator and optimizer allow (a stateful baseline, an optimizer other than Adam, a model ``vmap``
cannot follow: one after another, said in one line). Each run's final ELBO is estimated at its own
params with ``Trace_ELBO`` (``--elbo-samples`` evaluations); the gradient variance is measured at
step 0 (the preflight's start) and at the other ``--variance-points`` at every run's params (mean and
standard error over runs): the batch pauses there (checkpoint, measure, resume bit-exact).

What compare.json gains per estimator: ``runs`` (every run's losses, final ELBO, divergence), the
final ELBO's mean and standard error over runs, and ``steps_to_within``: the first step at which each
run's running-mean ELBO comes within ``--within`` nats of the best estimator's mean final ELBO (its
median, mean and standard error over the runs that reach it, and how many do).
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

__all__ = ["run_one", "add_reach", "figure", "table"]


def _smooth(elbo, window: int):
    import numpy as np

    return np.convolve(elbo, np.ones(window) / window, mode="valid")


def _mean_se(values: list[float]) -> tuple[float | None, float | None]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)
    return mean, math.sqrt(variance / len(finite))


def run_one(args, name: str, data, pair, build, steps: list[int]) -> dict:
    """Train ``args.runs`` runs of estimator ``name``; the row for compare.json.

    Args:
        steps: where to measure the gradient variance (``compare.variance_steps``); training pauses
            there (a checkpoint in a scratch directory, resumed bit-exact).
        pair: the model and guide to train (the preflight's for the first estimator).
        build: makes a fresh pair (the file imported afresh) when ``pair`` is None.
    """
    from pyro.infer import Trace_ELBO

    from pyro_vi import estimators
    from pyro_vi.commands import fit, user_model
    from pyro_vi.engine import posterior
    from pyro_vi.engine.many import BatchingFallback, fit_many
    from pyro_vi.errors import PyroVIError
    from pyro_vi.estimators import variance

    if pair is None:
        pair = build()
    estimator = estimators.get_estimator(name, num_particles=args.particles)

    def measure(step: int) -> dict:
        with warnings.catch_warnings():  # torch's "no batching rule" performance notes are not the user's business
            warnings.filterwarnings("ignore", message="There is a performance drop")
            result = variance.gradient_variance(pair.model, pair.guide, *pair.args, estimator=estimator,
                                                num_replicates=args.replicates, seed=(args.seed + step) % 2**32)
        return {"total_variance": result.total_variance, "seconds": result.seconds}

    def measure_runs(result, step: int) -> dict:
        """The variance at every run's params that has not diverged: mean and standard error over runs."""
        found = []
        for r in range(args.runs):
            if not bool(result.diverged[r]):
                with posterior.params_set_to({key: value[r] for key, value in result.params.items()}):
                    found.append(measure(step)["total_variance"])
        mean, se = _mean_se(found)
        return {"step": step, "total_variance": mean, "standard_error": se, "runs": len(found)}

    optim_name, stops = args.optimizer, [step for step in steps if step > 0] or [args.num_steps]
    try:
        measure_start = time.perf_counter()
        points = [{"step": 0, "total_variance": measure(0)["total_variance"], "runs": 1}] if 0 in steps else []
        measure_seconds = time.perf_counter() - measure_start
        times, batched, said = [], None, set()
        with tempfile.TemporaryDirectory() as scratch:  # training pauses at each variance step: checkpoint, resume
            checkpoint = Path(scratch) / "batch.pt"
            for i, stop in enumerate(stops):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", BatchingFallback)
                    result = fit_many(pair.model, pair.guide, *pair.args, runs=args.runs, num_steps=stop, loss=estimator,
                                      optim=fit.make_optimizer(optim_name, args.learning_rate), seed=args.seed,
                                      progress=not args.no_progress, checkpoint=checkpoint, resume=i > 0,
                                      batched=batched)
                batched = result.batched if batched is None else batched
                for warning in caught:
                    if issubclass(warning.category, BatchingFallback):
                        if str(warning.message) not in said:
                            print(f"compare: {name}: {warning.message}", file=sys.stderr)
                            said.add(str(warning.message))
                    else:
                        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
                offset = times[-1] if times else 0.0
                times += [t + offset for t in result.times.tolist()[len(times):]]
                measure_start = time.perf_counter()
                points.append(measure_runs(result, stop))
                measure_seconds += time.perf_counter() - measure_start
        runs = []
        measure_start = time.perf_counter()
        for r in range(args.runs):
            diverged = bool(result.diverged[r])
            elbo = error = None
            if not diverged:
                with posterior.params_set_to({key: value[r] for key, value in result.params.items()}):
                    elbo, error = user_model.estimate_elbo(Trace_ELBO(), pair, args.elbo_samples)
            runs.append({"run": r, "seeds": list(result.seeds[r]), "diverged": diverged, "final_elbo": elbo,
                         "final_elbo_standard_error": error, "losses": [None if math.isnan(v) else v for v in result.losses[r].tolist()]})
        measure_seconds += time.perf_counter() - measure_start
    except (PyroVIError, KeyboardInterrupt):
        raise
    except user_model.USER_FAILURES as error:  # the user's model raised (or exited) during training
        raise user_model.ModelError(f"training with {name} failed: {user_model.describe_failure(error, pair.files)}") from None
    mean, se = _mean_se([run["final_elbo"] for run in runs])
    seconds = times[-1] if times else 0.0
    return {
        "estimator": name, "num_particles": args.particles, "runs": runs, "batched": result.batched,
        "fallback_reason": result.fallback_reason, "diverged_runs": int(result.diverged.sum()),
        "final_elbo_mean": mean, "final_elbo_standard_error": se,
        "seconds": seconds, "times": times,
        "run_steps_per_second": args.runs * args.num_steps / seconds if seconds > 0 else None,
        "measure_seconds": measure_seconds, "variance": points,
    }


def add_reach(rows: list[dict], within: float) -> None:
    """Each row's ``steps_to_within``: per run, the first step where the running-mean ELBO (the
    figure's) is within ``within`` nats of the best mean final ELBO of all rows."""
    import numpy as np

    finals = [row["final_elbo_mean"] for row in rows if row["final_elbo_mean"] is not None]
    if not finals:
        return
    target = max(finals) - within
    for row in rows:
        per_run = []
        for run in row["runs"]:
            elbo = -np.asarray([math.nan if v is None else v for v in run["losses"]], dtype=float)
            window = max(1, len(elbo) // 50)
            smooth = _smooth(elbo, window)
            hits = np.nonzero(smooth >= target)[0]
            per_run.append(int(hits[0]) + window if len(hits) else None)
        reached = [step for step in per_run if step is not None]
        mean, se = _mean_se([float(step) for step in reached])
        row["steps_to_within"] = {"within": within, "target_elbo": target, "per_run": per_run, "reached": len(reached),
                                  "median": float(np.median(reached)) if reached else None, "mean": mean, "standard_error": se}


def table(rows: list[dict], runs: int) -> str:
    """The printed table: final ELBO mean +- SE over runs, time of the R runs, steps to within."""
    lines = [f"{'estimator':<18}{f'final ELBO ({runs} runs)':>24}{'seconds':>10}{'batched':>9}{'steps to within':>22}"]
    for row in rows:
        mean, se = row["final_elbo_mean"], row["final_elbo_standard_error"]
        elbo = "-" if mean is None else f"{mean:.4g} +- {se:.2g}" if se is not None else f"{mean:.4g}"
        reach = row.get("steps_to_within") or {}
        reached = (f"{reach['median']:.0f} ({reach['reached']}/{runs} runs)" if reach.get("median") is not None
                   else f"- (0/{runs} runs)")
        lines.append(f"{row['estimator']:<18}{elbo:>24}{row['seconds']:>10.2f}{'yes' if row['batched'] else 'no':>9}{reached:>22}")
    if rows and "steps_to_within" in rows[0]:
        reach = rows[0]["steps_to_within"]
        lines.append(f"steps to within: the median first step at which a run's running-mean ELBO is within {reach['within']:g} "
                     f"nats of the best mean final ELBO ({reach['target_elbo'] + reach['within']:.4g})")
    return "\n".join(lines)


def figure(rows: list[dict], args):
    """Mean ELBO over runs (each run's running mean) +- 2 standard errors against steps and against
    seconds; the gradient variance at step 0 and at the runs' final params."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from pyro_vi.plots.variance import estimator_color

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for row in rows:
        curves = []
        for run in row["runs"]:
            elbo = -np.asarray([math.nan if v is None else v for v in run["losses"]], dtype=float)
            window = max(1, len(elbo) // 50)
            curves.append(_smooth(elbo, window))
        curves = np.asarray(curves)
        count = np.isfinite(curves).sum(0)
        with warnings.catch_warnings():  # a step where every run (or all but one) diverged: NaN, not a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(curves, 0)
            spread = np.nanstd(curves, 0, ddof=1) / np.sqrt(np.maximum(count, 1)) if len(curves) > 1 else np.zeros_like(mean)
        steps = np.arange(window, window + curves.shape[1])
        seconds = np.asarray(row["times"], dtype=float)[window - 1:]
        color = estimator_color(row["estimator"])
        label = f"{row['estimator']} ({len(curves)} runs)"
        for axis, x in ((axes[0], steps), (axes[1], seconds)):
            axis.plot(x, mean, label=label, color=color)
            axis.fill_between(x, mean - 2 * spread, mean + 2 * spread, color=color, alpha=0.25, linewidth=0)
        points = row["variance"]
        axes[2].plot([m["step"] for m in points], [m["total_variance"] for m in points], marker="o", label=row["estimator"],
                     color=color)
    axes[0].set(xlabel="step", ylabel="training objective (-loss, running mean)", title="mean ELBO +- 2 SE over runs")
    axes[1].set(xlabel="seconds (all runs of the estimator)", ylabel="training objective (-loss, running mean)",
                title="mean ELBO +- 2 SE against time")
    axes[2].set(xlabel="step", ylabel="total gradient variance", yscale="log",
                title=f"gradient variance ({args.replicates} draws, k={args.particles})\n"
                      "step 0: the shared start; last: mean over the runs' final params")
    axes[2].title.set_fontsize(10)
    for axis in axes:
        axis.legend()
    fig.tight_layout()
    return fig
