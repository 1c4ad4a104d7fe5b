"""``pyro-vi fit FILE.py:MODEL FILE.py:GUIDE --data DATA``: SVI on the user's own model and guide.

GUIDE may be an auto guide built on the model (``auto-normal``, ``auto-diagonal-normal``, ``auto-mvn``,
``auto-lowrank-mvn``, ``auto-delta``). Training is ``pyro_vi.fit`` (checkpoints, exact ``--resume``,
NaN check, Ctrl-C exits 130 after the checkpoint). Writes into OUT, which is locked while it runs:

    metrics.json    loss per step, final ELBO (and its Monte Carlo SE), steps per second, seconds, the
                    convergence note (does the smoothed ELBO still move over the last tenth?), ...
    metrics.jsonl   one line every --metrics-every steps WHILE the run goes (tail -f it): step, loss,
                    smoothed ELBO, steps per second; --tensorboard: the same in OUT/tensorboard
    params.pt       the fitted params, constrained ({name: tensor}; torch.load(weights_only=True))
    loss.png        the loss per step
    traces.png      the smoothed ELBO and every param (an auto guide: each site's loc and scale) per step
    posterior.csv   site,index,mean,sd,q5,q50,q95 of every latent site, drawn from the guide
                    (pyro_vi.engine.posterior.draws: any model's plates; a site that cannot be drawn is
                    listed in metrics.json, not fatal)
    checkpoint.pt   written by the engine (every --checkpoint-every steps, at the end, on Ctrl-C)

Everything but the checkpoint and metrics.jsonl is written after training, each file atomically.
"""

from __future__ import annotations

import argparse
import csv
import io as _io
import math
import os
import sys
from pathlib import Path

__all__ = [
    "HELP", "LOSSES", "OPTIMIZERS", "add_model_arguments", "add_arguments", "validate_common", "model_counts", "make_optimizer",
    "make_loss", "elbo_evaluator", "run",
]

HELP = "fit your own Pyro model and guide (FILE.py:NAME, or an auto guide) to a data file with SVI"

# --loss names -> pyro.infer ELBO classes.
LOSSES = {
    "trace": "Trace_ELBO",
    "tracegraph": "TraceGraph_ELBO",
    "traceenum": "TraceEnum_ELBO",
    "tracemeanfield": "TraceMeanField_ELBO",
    "renyi": "RenyiELBO",
    "jit-trace": "JitTrace_ELBO",
    "jit-tracegraph": "JitTraceGraph_ELBO",
    "jit-traceenum": "JitTraceEnum_ELBO",
    "jit-tracemeanfield": "JitTraceMeanField_ELBO",
}
# Losses whose value is -ELBO (the others' final ELBO is estimated with Trace_ELBO).
_ELBO_VALUED = {"trace", "tracegraph", "traceenum", "tracemeanfield", "jit-trace", "jit-tracegraph", "jit-traceenum",
                "jit-tracemeanfield"}
# --optimizer names -> pyro.optim classes ("adam" is pyro_vi.engine.optim.Adam: Pyro's update, one fused step).
OPTIMIZERS = {
    "adam": "Adam",
    "clipped-adam": "ClippedAdam",
    "adamw": "AdamW",
    "sgd": "SGD",
    "adagrad": "Adagrad",
    "rmsprop": "RMSprop",
}


def add_model_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    """The model, guide, data and training options ``fit`` and ``compare`` share."""
    from pyro_vi.commands import _args
    from pyro_vi.commands.user_model import AUTO_GUIDES

    parser.add_argument("model", metavar="FILE.py:MODEL", help="the model function, e.g. my_model.py:model")
    parser.add_argument("guide", metavar="GUIDE",
                        help=f"the guide function FILE.py:NAME, or an auto guide: {', '.join(AUTO_GUIDES)}")
    parser.add_argument("--data", default=None,
                        help=".npz or .json/.json.zip (posteriordb's format) by name, passed as keyword arguments; or .npy/.csv/.pt "
                             "(one tensor, passed positionally)")
    parser.add_argument("--num-steps", type=int, default=1000, help="SVI steps (default 1000)")
    parser.add_argument("--learning-rate", type=float, default=0.01, help="default 0.01")
    parser.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="adam", help="default adam")
    _args.add_seed(parser)
    _args.add_device(parser)
    parser.add_argument("--elbo-samples", type=int, default=100,
                        help="evaluations averaged for the final ELBO and its standard error (at least 2; default 100)")
    _args.add_no_progress(parser)
    _args.add_output(parser, default_out, overwrite="replace the outputs (and checkpoint) already in OUT")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The shared model options, the objective (``--loss`` or ``--estimator``), checkpoints and the summary."""
    from pyro_vi.commands._args import add_compile
    from pyro_vi.estimators import ESTIMATORS

    add_model_arguments(parser, "runs/fit")
    objective = parser.add_mutually_exclusive_group()
    objective.add_argument("--loss", choices=tuple(LOSSES), default=None, help="a Pyro ELBO (default trace)")
    objective.add_argument("--estimator", choices=ESTIMATORS, default=None, help="a pyro_vi gradient estimator instead")
    parser.add_argument("--particles", type=int, default=1, help="particles per step (default 1)")
    parser.add_argument("--vectorize-particles", action="store_true",
                        help="Pyro losses: draw the particles in one vectorized pass (the model must broadcast)")
    parser.add_argument("--max-plate-nesting", type=int, default=None, help="traceenum: plates nested in the model (default: found)")
    parser.add_argument("--renyi-alpha", type=float, default=0.0, help="renyi: the alpha of the bound (default 0, not 1)")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every this many steps (default 0: at the end)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt, exactly")
    parser.add_argument("--posterior-samples", type=int, default=1000, help="draws for posterior.csv (default 1000)")
    parser.add_argument("--metrics-every", type=int, default=None,
                        help="append a line to OUT/metrics.jsonl every this many steps while training (default: a "
                        "hundredth of --num-steps, at least 1)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write the metrics as TensorBoard scalars to OUT/tensorboard (needs the tensorboard package)")
    add_compile(parser)


def validate_common(args: argparse.Namespace) -> None:
    """Check the options of :func:`add_model_arguments` that argparse cannot (ranges).

    Raises:
        ConfigError: ``--num-steps`` or ``--particles`` below 1, ``--elbo-samples`` below 2, or a
            learning rate that is not a positive finite number.
    """
    from pyro_vi.errors import ConfigError

    for option, value, least in (("--num-steps", args.num_steps, 1), ("--elbo-samples", args.elbo_samples, 2),
                                 ("--particles", getattr(args, "particles", 1), 1)):
        if value < least:
            raise ConfigError(f"{option} must be at least {least}, got {value}"
                              + (" (a standard error needs two draws)" if least == 2 else ""))
    if not 0 < args.learning_rate < float("inf"):
        raise ConfigError(f"--learning-rate must be a positive number, got {args.learning_rate}")


def model_counts(args: argparse.Namespace, num_latent: int) -> dict:
    """``preflight.check_counts``'s counts of ``fit`` and ``compare``: the ELBO draws (a float64
    each) and the particles (a draw of every latent element each, per step)."""
    return {f"--elbo-samples {args.elbo_samples}": (args.elbo_samples, 2),
            f"--particles {args.particles}": (args.particles, 2 * max(1, num_latent))}


def make_optimizer(name: str, learning_rate: float):
    """The ``pyro.optim`` optimizer named by ``--optimizer`` (``adam``: pyro_vi's fused Adam) at ``learning_rate``."""
    import pyro.optim

    from pyro_vi.engine import optim

    if name == "adam":
        return optim.Adam({"lr": learning_rate})
    return getattr(pyro.optim, OPTIMIZERS[name])({"lr": learning_rate})


def make_loss(args: argparse.Namespace):
    """(loss object, name): the Pyro ELBO of ``--loss`` or the pyro_vi estimator of ``--estimator``."""
    import math

    import pyro.infer

    from pyro_vi import estimators
    from pyro_vi.errors import ConfigError

    if args.estimator is not None:
        if args.vectorize_particles:
            raise ConfigError("--vectorize-particles applies to Pyro losses (--loss); pyro_vi estimators draw particles their own way")
        return estimators.get_estimator(args.estimator, num_particles=args.particles), args.estimator
    name = args.loss or "trace"
    options = {"num_particles": args.particles, "vectorize_particles": args.vectorize_particles}
    if args.max_plate_nesting is not None:
        if args.max_plate_nesting < 0:
            raise ConfigError(f"--max-plate-nesting must be >= 0, got {args.max_plate_nesting}")
        options["max_plate_nesting"] = args.max_plate_nesting
    if name == "renyi":
        if not math.isfinite(args.renyi_alpha):
            raise ConfigError(f"--renyi-alpha must be a finite number (0 <= alpha < 1 bounds log p(x) from below), got {args.renyi_alpha}")
        if args.renyi_alpha == 1:
            raise ConfigError("--renyi-alpha 1 is the ELBO itself; use --loss trace, or another alpha")
        options["alpha"] = args.renyi_alpha
    if name.startswith("jit-"):
        options["ignore_jit_warnings"] = True
    return getattr(pyro.infer, LOSSES[name])(**options), name


def elbo_evaluator(loss, name: str):
    """The loss whose value is -ELBO: the training loss where it is one, else ``Trace_ELBO``."""
    import pyro.infer

    from pyro_vi.estimators import GradientEstimator

    if isinstance(loss, GradientEstimator):
        return loss if loss.name not in ("iwae", "dreg", "gumbel") else pyro.infer.Trace_ELBO()
    return loss if name in _ELBO_VALUED else pyro.infer.Trace_ELBO()


def run(args: argparse.Namespace) -> int:
    """Preflight (options, OUT and its checkpoint, data, model and guide, each once), train, write OUT; 0 on success."""
    import torch

    from pyro_vi import io, preflight
    from pyro_vi.commands import user_model
    from pyro_vi.commands._args import check_compile, compile_mode
    from pyro_vi.commands._monitor import check_tensorboard, default_every
    from pyro_vi.engine import posterior
    from pyro_vi.plots import fit as fit_plots
    from pyro_vi.device import resolve_device
    from pyro_vi.engine import checkpoint as checkpoints
    from pyro_vi.engine.checkpoint_format import DATA_FINGERPRINT
    from pyro_vi.errors import CheckpointError, ConfigError, OutputError

    # 1. Check everything before OUT is touched: options, data, model and guide (called once).
    validate_common(args)
    if args.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every must be >= 0 (0: only at the end), got {args.checkpoint_every}")
    if args.posterior_samples < 2:
        raise ConfigError(f"--posterior-samples must be at least 2 (an sd needs two draws), got {args.posterior_samples}")
    if args.metrics_every is not None and args.metrics_every < 1:
        raise ConfigError(f"--metrics-every must be at least 1, got {args.metrics_every}")
    if args.tensorboard:
        check_tensorboard()
    checkpoint = io.check_output_path(args.out) / "checkpoint.pt"
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues OUT's run and --overwrite starts it over; pass one of them")
    if args.resume and not checkpoint.is_file():
        raise CheckpointError(f"no checkpoint to resume at {str(checkpoint)!r}; run once without --resume first")
    if not args.resume and not args.overwrite and checkpoint.exists():
        raise OutputError(f"{str(checkpoint)!r} holds an earlier run; pass --resume to continue it, --overwrite to "
                          "start over, or choose another --out")
    device = resolve_device(args.device)
    data = user_model.load_data(args.data, device)
    loss, loss_name = make_loss(args)
    check_compile(compile_mode(args), loss)
    optim = make_optimizer(args.optimizer, args.learning_rate)
    pair = user_model.build(args.model, args.guide, data, seed=args.seed)
    guide_trace, model_trace = pair.guide_trace, pair.model_trace
    sites = user_model.latent_sites(model_trace)
    if hasattr(loss, "check"):  # a pyro_vi estimator refuses guides it cannot differentiate
        loss.check(pair.model, pair.guide, *pair.args)
    num_latent = sum(math.prod(shape) for shape in sites.values())
    preflight.check_allocation(2.0 * args.posterior_samples * num_latent, f"--posterior-samples {args.posterior_samples}")
    preflight.check_counts(model_counts(args, num_latent), device)
    config = {
        "model": {"model": _spec_name(args.model), "guide": _spec_name(args.guide), "data": data.describe(),
                  DATA_FINGERPRINT: data.fingerprint()},
        "train": {"loss": loss_name, "particles": args.particles, "vectorize_particles": args.vectorize_particles, "optimizer": args.optimizer,
                  "learning_rate": args.learning_rate, "seed": args.seed},
    }
    saved = None
    if args.resume:  # the checkpoint read and checked once, every entry, before OUT is touched
        saved = checkpoints.load(checkpoint)
        checkpoints.check_config(saved, config, checkpoint, data=repr(args.data) if args.data else "no data")

    with io.run_output(args.out, "fit", args.overwrite, resume=args.resume) as out:  # locked; removed again if this run made it and fails early
        monitor = _Monitor(out, pair.guide, args.num_steps, args.metrics_every or default_every(args.num_steps), {},
                           args.resume, args.tensorboard)
        try:
            result = _train(args, pair, loss, optim, checkpoint, config, monitor, saved)
        except BaseException:
            monitor.close() if checkpoint.is_file() else monitor.discard()  # no checkpoint: nothing to resume
            raise
        monitor.close()

        # 2. What the fit found, computed before anything is written.
        elbo, elbo_error = _final_elbo(loss, loss_name, pair, args.elbo_samples)
        # Draws from the guide, one guide call per draw (any model's plates); a site that cannot be
        # drawn is listed, and an error drawing the rest is one line: the fit is written either way.
        try:
            summary, undrawn, summary_error = *_posterior(pair, args.posterior_samples), None
        except user_model.ModelError as error:
            summary, undrawn, summary_error = [], {}, str(error)
        converged = posterior.convergence(result.losses)
        guide_sites = [name for name, site in guide_trace.nodes.items() if site["type"] == "sample"]
        metrics = {
            "model": args.model, "guide": args.guide, "data": args.data, "data_shapes": data.describe(),
            "loss": loss_name, "optimizer": args.optimizer, "learning_rate": args.learning_rate,
            "particles": args.particles, "num_steps": args.num_steps, "steps": result.steps,
            "steps_this_call": result.steps_this_call, "resumed": args.resume,
            "final_elbo": elbo, "final_elbo_standard_error": elbo_error, "elbo_samples": args.elbo_samples,
            "final_loss": result.losses[-1] if result.losses else None,
            "seconds": result.seconds, "steps_per_second": result.steps_per_second,
            "skipped_steps": result.skipped_steps, "compiled_steps": result.compiled_steps, "seed": args.seed,
            "compile": {**result.compile._asdict(), "fallbacks": list(result.compile.fallbacks)},
            "device": str(device),
            "latent_sites": {name: list(shape) for name, shape in sites.items()},
            "sites_not_in_guide": [name for name in sites if name not in guide_sites],
            "posterior_samples": args.posterior_samples,
            "posterior_summary_error": summary_error,
            "posterior_sites_not_drawn": undrawn,
            "convergence": converged,
            "metrics_every": monitor.every,
            "params": {name: list(value.shape) for name, value in result.params.items()},
            "losses": result.losses,
        }
        params = {name: value.detach().to("cpu").clone() for name, value in result.params.items()}
        buffer = _io.BytesIO()
        torch.save(params, buffer)
        figure = _loss_figure(result.losses, loss_name)
        trace_figure = fit_plots.traces(monitor.trace, result.losses, converged)

        # 3. Write: every file atomically, metrics.json last.
        io.atomic_write(out / "params.pt", lambda file: file.write(buffer.getbuffer()))
        if summary_error is None:
            io.atomic_write(out / "posterior.csv", lambda file: file.write(_csv(summary)), mode="w")
        io.save_figure(figure, out / "loss.png", dpi=100)
        io.save_figure(trace_figure, out / "traces.png", dpi=100)
        import matplotlib.pyplot as plt

        plt.close(figure)
        plt.close(trace_figure)
        io.write_json(out / "metrics.json", metrics)
    print(f"{args.model} with {args.guide}: {result.steps} steps ({result.steps_this_call} now, "
          f"{result.steps_per_second:.0f} steps/s, {result.seconds:.1f} s); final ELBO {elbo:.4g} +- {elbo_error:.2g}")
    if result.compile.mode is not False:
        print(f"  steps: {result.compile}")
    for row in summary[:12]:
        index = f"[{row.index}]" if row.index else ""
        print(f"  {row.site}{index}: mean {row.mean:.4g}, sd {row.sd:.3g}, 90% interval [{row.q5:.4g}, {row.q95:.4g}]")
    if len(summary) > 12:
        print(f"  ... {len(summary) - 12} more rows in posterior.csv")
    for name, why in undrawn.items():
        print(f"pyro-vi fit: note: {name} is not in posterior.csv: {why}", file=sys.stderr)
    if summary_error is not None:
        print(f"pyro-vi fit: note: no posterior.csv: {summary_error}", file=sys.stderr)
    print(converged["note"])
    print(f"wrote {out}/metrics.json, metrics.jsonl, params.pt, loss.png, traces.png"
          f"{'' if summary_error else ', posterior.csv'}, checkpoint.pt")
    return 0


def _spec_name(spec: str) -> str:
    """``FILE.py:NAME`` without the directory (a moved file still resumes)."""
    path, separator, name = spec.rpartition(":")
    return f"{Path(path).name}:{name}" if separator else spec


def _Monitor(*options):
    from pyro_vi.commands._monitor import Monitor
    from pyro_vi.engine.step import reads_only

    return reads_only(Monitor(*options))  # it reads params and losses: fit's default compile still applies


def _train(args, pair, loss, optim, checkpoint: Path, config: dict, monitor, saved: dict | None):
    """``pyro_vi.fit`` with the checkpoint in OUT (``saved``: already read, on --resume) and
    ``monitor`` as the callback; a model raising mid-run is one line naming the step."""
    from pyro_vi import engine
    from pyro_vi.commands import user_model
    from pyro_vi.commands._args import compile_mode
    from pyro_vi.errors import PyroVIError, TrainingInterrupted

    try:
        return engine.fit(
            pair.model, pair.guide, *pair.args, num_steps=args.num_steps, loss=loss, optim=optim, seed=args.seed,
            callback=monitor, checkpoint=checkpoint, checkpoint_every=args.checkpoint_every, checkpoint_config=config,
            resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress, compile=compile_mode(args),
            state=monitor.state, loaded_checkpoint=saved,
        )
    except TrainingInterrupted as interrupted:
        raise TrainingInterrupted(f"interrupted at step {interrupted.step} of {args.num_steps}; checkpoint saved to "
                                  f"{str(checkpoint)!r}; rerun with --resume to continue") from None
    except (PyroVIError, KeyboardInterrupt):
        raise
    except user_model.USER_FAILURES as error:  # noqa: BLE001 - the user's model raised mid-run
        if os.environ.get("PYRO_VI_TRACEBACK"):
            raise
        saved = ""
        if checkpoint.is_file():
            saved = f"; {str(checkpoint)!r} holds the last checkpoint: fix the model and rerun with --resume"
        raise user_model.ModelError(f"training failed at step {monitor.completed + 1}: {pair.model_spec} or {pair.guide_spec} "
                                    f"raised {user_model.describe_failure(error, pair.files)}{saved}") from None


def _final_elbo(loss, loss_name: str, pair, num_samples: int) -> tuple[float, float]:
    from pyro_vi.commands import user_model

    evaluator = elbo_evaluator(loss, loss_name)
    try:
        return user_model.estimate_elbo(evaluator, pair, num_samples)
    except user_model.USER_FAILURES as error:  # noqa: BLE001
        raise user_model.ModelError(f"estimating the final ELBO failed: {user_model.describe_failure(error, pair.files)}") from None


def _posterior(pair, num_samples: int):
    """(posterior.csv's rows, the latent sites not drawn -> why), from ``num_samples`` guide draws."""
    from pyro_vi.commands import user_model
    from pyro_vi.engine import posterior

    try:
        draws = posterior.draws(pair.model, pair.guide, *pair.args, num_samples=num_samples)
    except user_model.USER_FAILURES as error:  # noqa: BLE001 - the guide itself raised
        raise user_model.ModelError(f"drawing from the guide failed: {user_model.describe_failure(error, pair.files)}") from None
    return user_model.summary_rows(posterior.summary(draws)), draws.undrawn


def _csv(rows) -> str:
    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["site", "index", "mean", "sd", "q5", "q50", "q95"])
    for row in rows:
        writer.writerow([row.site, row.index, *(repr(value) for value in (row.mean, row.sd, row.q5, row.q50, row.q95))])
    return buffer.getvalue()


def _loss_figure(losses: list[float], loss_name: str):
    """The loss of every step, with a running mean over a fiftieth of the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axis = plt.subplots(figsize=(6, 4))
    values = np.asarray(losses, dtype=float)
    steps = np.arange(1, len(values) + 1)
    axis.plot(steps, values, lw=0.5, alpha=0.4, label="loss per step")
    window = max(1, len(values) // 50)
    if window > 1:
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        axis.plot(steps[window - 1:], smooth, lw=1.5, label=f"running mean ({window} steps)")
    axis.set_xlabel("step")
    axis.set_ylabel(f"loss ({loss_name})")
    positive = values[np.isfinite(values)]
    if positive.size and positive.min() > 0 and positive.max() / positive.min() > 100:
        axis.set_yscale("log")
    axis.legend()
    figure.tight_layout()
    return figure
