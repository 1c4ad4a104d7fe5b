"""``pyro-vi check [FILE.py:MODEL] GUIDE``: did VI work? PSIS k-hat, the bounds, and q against reference draws.

The guide's params come from a fit, or from fitting first with ``pyro-vi fit``'s training options::

    pyro-vi check model.py:model auto-mvn --data d.json --checkpoint runs/fit/checkpoint.pt
    pyro-vi check model.py:model auto-mvn --data d.json --num-steps 5000 --reference draws.json.zip
    pyro-vi check --posteriordb DIR --posterior eight_schools-eight_schools_noncentered auto-mvn

The last runs a bundled Pyro port (``pyro_vi.posteriordb.PORTS``) on DIR's data against DIR's
reference draws (DIR: a clone of stan-dev/posteriordb, or ``$PYRO_VI_POSTERIORDB``). Writes into OUT:

    check.json      khat, verdict, elbo, iw_elbo (and their standard errors), ESS, and parameters: one object
                    per element (name, q_mean, q_sd, psis_mean/psis_sd where k-hat < 0.7, and with a
                    reference ref_mean, ref_sd, mean_error_sd, sd_ratio)
    marginals.png   each element's marginal: q, q reweighted by PSIS, the reference
    draws.nc        the guide's draws and their log weights as ArviZ InferenceData (``arviz.from_netcdf``)
    checkpoint.pt   the fit's checkpoint, when the command fitted first (reusable with --checkpoint)
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

__all__ = ["HELP", "add_arguments", "run"]

HELP = "did VI work? PSIS k-hat, ELBO and IW bound, q's marginals against reference draws (posteriordb's)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and guide (or a posteriordb port), where the params come from, the reference, OUT."""
    from pyro_vi.commands import _args
    from pyro_vi.commands.fit import OPTIMIZERS
    from pyro_vi.commands.user_model import AUTO_GUIDES
    from pyro_vi.estimators import ESTIMATORS
    from pyro_vi.posteriordb.files import ENVIRONMENT_VARIABLE

    parser.add_argument("specs", nargs="+", metavar="[FILE.py:MODEL] GUIDE",
                        help=f"the model and the guide (FILE.py:NAME or {', '.join(AUTO_GUIDES)}); with --posterior only the guide")
    parser.add_argument("--data", default=None, help="data file, as for pyro-vi fit (.json/.json.zip: posteriordb's format)")
    parser.add_argument("--reference", default=None, help="reference draws in posteriordb's format (.json or .json.zip)")
    parser.add_argument("--posteriordb", default=None, help=f"a posteriordb folder (default ${ENVIRONMENT_VARIABLE})")
    parser.add_argument("--posterior", default=None, help="a posteriordb posterior with a bundled port, e.g. eight_schools-eight_schools_noncentered")
    parser.add_argument("--checkpoint", default=None, help="the checkpoint.pt of a pyro-vi fit of this model and guide (no fitting)")
    parser.add_argument("--num-samples", type=int, default=4000, help="draws from the guide (default 4000)")
    parser.add_argument("--num-steps", type=int, default=1000, help="without --checkpoint: SVI steps first (default 1000)")
    parser.add_argument("--learning-rate", type=float, default=0.01, help="default 0.01")
    parser.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="adam", help="default adam")
    parser.add_argument("--estimator", choices=ESTIMATORS, default=None, help="a pyro_vi gradient estimator (default: Trace_ELBO)")
    parser.add_argument("--particles", type=int, default=1, help="particles per step (default 1)")
    _args.add_seed(parser)
    _args.add_device(parser)
    _args.add_no_progress(parser)
    _args.add_compile(parser)
    _args.add_output(parser, "runs/check", overwrite="replace the outputs already in OUT")


def run(args: argparse.Namespace) -> int:
    """Check the options and inputs, get the params (checkpoint or fit), run the check, write OUT; 0 on success."""
    import math

    from pyro_vi import io, preflight
    from pyro_vi.commands import fit as fit_command
    from pyro_vi.commands import user_model
    from pyro_vi.device import resolve_device
    from pyro_vi.diagnostics import check
    from pyro_vi.errors import ConfigError, OutputError
    from pyro_vi.plots.check import marginals
    from pyro_vi.posteriordb import files

    # 1. Everything checked before OUT is touched.
    if args.num_samples < 10:
        raise ConfigError(f"--num-samples must be at least 10 (a Pareto tail fit), got {args.num_samples}")
    args.elbo_samples, args.loss, args.vectorize_particles, args.max_plate_nesting = 2, None, False, None
    if args.checkpoint is None:
        fit_command.validate_common(args)
    device = resolve_device(args.device)
    reference = files.read_reference(args.reference) if args.reference else None
    if args.posterior is not None:
        pair, reference = _port(args, device, reference)
    else:
        if len(args.specs) != 2:
            raise ConfigError(f"give FILE.py:MODEL and GUIDE (got {len(args.specs)} names), or --posterior NAME and GUIDE")
        data = user_model.load_data(args.data, device)
        pair = user_model.build(*args.specs, data, seed=args.seed)
    _check_reference_names(reference, pair.model_trace)
    sites = user_model.latent_sites(pair.model_trace)
    num_latent = sum(math.prod(shape) for shape in sites.values())
    preflight.check_allocation(4.0 * args.num_samples * max(1, num_latent), f"--num-samples {args.num_samples}")
    out_path = io.check_output_path(args.out)
    if args.checkpoint is not None:
        user_model.restore_params(args.checkpoint, pair.guide_trace)
    elif (out_path / "checkpoint.pt").exists() and not args.overwrite:
        raise OutputError(f"{str(out_path / 'checkpoint.pt')!r} holds an earlier fit; pass --checkpoint to check it, "
                          "--overwrite to fit again, or choose another --out")

    with io.run_output(args.out, "check", args.overwrite) as out:
        fitted = None
        if args.checkpoint is None:
            loss, loss_name = fit_command.make_loss(args)
            optim = fit_command.make_optimizer(args.optimizer, args.learning_rate)
            fitted = _fit(args, pair, loss, loss_name, optim, out / "checkpoint.pt")
        try:
            result = check(pair.model, pair.guide, *pair.args, num_samples=args.num_samples, reference=reference, seed=args.seed)
        except user_model.USER_FAILURES as error:  # ConfigError (a reference name, a support mismatch) included
            if isinstance(error, ConfigError):
                raise
            raise user_model.ModelError(f"the check failed: {user_model.describe_failure(error, pair.files)}") from None
        report = {"model": pair.model_spec, "guide": pair.guide_spec, "data": args.data, "posterior": args.posterior,
                  "reference": args.reference, "checkpoint": args.checkpoint, "seed": args.seed,
                  "steps": fitted.steps if fitted is not None else None, **result.to_dict()}
        _write_inference_data(result, out / "draws.nc")
        figure = marginals(result)
        io.save_figure(figure, out / "marginals.png", dpi=100)
        import matplotlib.pyplot as plt

        plt.close(figure)
        io.write_json(out / "check.json", report)
    print(f"{pair.model_spec} with {pair.guide_spec}: {result.summary()}")
    if result.khat >= 0.7:
        print("pyro-vi check: k-hat >= 0.7: q's summaries and PSIS corrections are unreliable", file=sys.stderr)
    print(f"wrote {out}/check.json, marginals.png, draws.nc" + ("" if args.checkpoint else ", checkpoint.pt"))
    return 0


def _port(args: argparse.Namespace, device, reference):
    """(Pair of the bundled port and GUIDE on DIR's data, DIR's reference unless --reference gave one)."""
    import pyro

    from pyro_vi import posteriordb
    from pyro_vi.commands import user_model
    from pyro_vi.errors import ConfigError

    if len(args.specs) != 1:
        raise ConfigError(f"with --posterior give only the GUIDE (got {len(args.specs)} names: {' '.join(args.specs)})")
    if args.data is not None:
        raise ConfigError("--posterior reads its data from the posteriordb folder; drop --data")
    problem = posteriordb.load(args.posterior, args.posteriordb, device)
    if args.seed is not None:
        pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    if args.specs[0] in user_model.AUTO_GUIDES:
        # Started as Stan starts, uniform(-2, 2) unconstrained: with the ports' wide priors the
        # AutoGuides' default start (the prior's median) is far from the posterior.
        from pyro.infer import autoguide

        guide_class = getattr(autoguide, user_model.AUTO_GUIDES[args.specs[0]])
        guide, guide_path = guide_class(problem.model, init_loc_fn=autoguide.init_to_uniform(radius=2.0)), None
    else:
        guide, guide_path = user_model.make_guide(args.specs[0], problem.model)
    model, guide = functools.partial(problem.model, **problem.data), functools.partial(guide, **problem.data)
    pair = user_model.Pair(model, guide, (), f"posteriordb:{args.posterior}", args.specs[0],
                           tuple(path for path in (guide_path,) if path is not None))
    guide_trace, model_trace = user_model.probe(pair)
    if reference is None and problem.reference is None:
        print(f"pyro-vi check: note: {args.posterior} has no reference draws in {os.fspath(args.posteriordb or '$PYRO_VI_POSTERIORDB')}",
              file=sys.stderr)
    return pair._replace(guide_trace=guide_trace, model_trace=model_trace), reference if reference is not None else problem.reference


def _check_reference_names(reference, model_trace) -> None:
    """Before any work: every reference name is an element the model produces (``theta[1]``, ``mu``).

    Raises:
        ConfigError: naming the first that is not, and some that are.
    """
    from pyro_vi.diagnostics import element_names
    from pyro_vi.diagnostics.draws import site_shapes
    from pyro_vi.errors import ConfigError

    if not reference:
        return
    produced = [name for site, shape in site_shapes(model_trace).items() for name in element_names(site, shape)]
    missing = [name for name in reference if name not in produced]
    if missing:
        listed = ", ".join(produced[:12]) + (", ..." if len(produced) > 12 else "")
        raise ConfigError(f"reference parameter {missing[0]!r} is not produced by the model (its latent and deterministic "
                          f"sites give {listed}); rename it in the reference or leave it out")


def _fit(args: argparse.Namespace, pair, loss, loss_name: str, optim, checkpoint):
    """``pyro_vi.fit`` with the checkpoint in OUT; the model raising mid-run is one line."""
    from pyro_vi import engine
    from pyro_vi.commands import user_model
    from pyro_vi.commands._args import compile_mode
    from pyro_vi.errors import PyroVIError

    config = {"model": {"model": pair.model_spec, "guide": pair.guide_spec}, "train": {"loss": loss_name, "seed": args.seed}}
    try:
        return engine.fit(pair.model, pair.guide, *pair.args, num_steps=args.num_steps, loss=loss, optim=optim, seed=args.seed,
                          checkpoint=checkpoint, checkpoint_config=config, overwrite=True, progress=not args.no_progress,
                          compile=compile_mode(args))
    except (PyroVIError, KeyboardInterrupt):
        raise
    except user_model.USER_FAILURES as error:
        if os.environ.get("PYRO_VI_TRACEBACK"):
            raise
        raise user_model.ModelError(f"training failed: {pair.model_spec} or {pair.guide_spec} raised "
                                    f"{user_model.describe_failure(error, pair.files)}") from None


def _write_inference_data(result, path) -> None:
    """``result.to_inference_data()`` to ``path`` (netCDF), written beside it and renamed into place."""
    import warnings

    partial = path.with_name(f".{path.name}.partial")
    try:
        with warnings.catch_warnings():  # xarray's notes on encodings are not the user's concern
            warnings.simplefilter("ignore")
            result.to_inference_data().to_netcdf(str(partial))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
